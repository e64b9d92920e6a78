"""The official ``openai`` client against ``serve``, sync and async: whole and streamed
completions with ``stream_options.include_usage`` (also when the stream was continued on a
restarted tier), ``models.retrieve``, and a 400 that names a field the server cannot honour, after
which the server still serves.

Both run in a thread, the async one under ``asyncio.run``: ``AsyncOpenAI`` works under Trio, but
its stream leaves its SSE generators unexhausted after ``[DONE]``, which Trio reports (a
``ResourceWarning`` that pytest makes an error)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio

import trio_supervise as ts
from trio_supervise.serve import ServeConfig
from trio_supervise.testing import Fault, FaultPlan

from ..support.helpers import serve_config, start_server

openai = pytest.importorskip("openai")

ASK = {"model": "mock", "prompt": "hello world", "max_tokens": 5, "seed": 3}


def token_ids(chunk: Any) -> list[int]:
    """The token ids a streamed chunk carries (a trio-supervise extension, an extra field)."""
    extra = chunk.choices[0].model_extra or {}
    ids: list[int] = extra.get("token_ids", [])
    return ids


def check_usage_stream(chunks: list[Any], whole: Any) -> None:
    """A stream with include_usage: the choices' events carry no usage, the last event carries
    the usage alone, counting each token the client was sent once."""
    *choices, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None and len(c.choices) == 1 for c in choices)
    assert "".join(c.choices[0].text for c in choices) == whole.choices[0].text
    assert choices[-1].choices[0].finish_reason == "length"
    sent = sum(len(token_ids(c)) for c in choices)
    assert last.usage.completion_tokens == sent == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.total_tokens == whole.usage.total_tokens


async def in_asyncio(session: Callable[[Any], Awaitable[dict[str, Any]]], url: str) -> Any:
    """``session(client)`` run with an ``AsyncOpenAI`` client on ``url``, under asyncio in a
    thread: what it returns."""

    async def run() -> dict[str, Any]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        async with client:
            return await session(client)

    return await trio.to_thread.run_sync(lambda: asyncio.run(run()))


async def test_the_sync_client_completes_streams_with_usage_finds_models_and_is_refused() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, serve_config())
            client = openai.OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0)

            def run() -> dict[str, Any]:
                got: dict[str, Any] = {"whole": client.completions.create(**ASK)}
                got["chunks"] = list(
                    client.completions.create(
                        **ASK, stream=True, stream_options={"include_usage": True}
                    )
                )
                got["plain"] = list(client.completions.create(**ASK, stream=True))
                got["model"] = client.models.retrieve("mock")
                with pytest.raises(openai.NotFoundError) as missing:
                    client.models.retrieve("gpt-4")
                got["missing"] = missing.value
                with pytest.raises(openai.BadRequestError) as refused:
                    client.completions.create(**ASK, presence_penalty=0.5)
                got["refused"] = refused.value
                got["after"] = client.completions.create(**ASK)
                return got

            got = await trio.to_thread.run_sync(run)
            client.close()
            handle.drain()
    whole = got["whole"]
    assert whole.usage.completion_tokens == 5
    check_usage_stream(got["chunks"], whole)
    # without include_usage, nothing changed: the last choice's event carries the usage
    assert got["plain"][-1].choices[0].finish_reason == "length"
    assert got["plain"][-1].usage.completion_tokens == 5
    assert (got["model"].id, got["model"].object) == ("mock", "model")
    assert got["missing"].status_code == 404
    assert "model 'gpt-4' is not served here; models: ['mock']" in str(got["missing"])
    assert got["refused"].status_code == 400
    assert "presence_penalty is not supported by the runner of worker 'mock#0'" in str(
        got["refused"]
    )
    assert got["after"].choices[0].text == whole.choices[0].text


async def test_the_async_client_streams_with_usage_finds_models_and_is_refused() -> None:
    async def session(client: Any) -> dict[str, Any]:
        got: dict[str, Any] = {"whole": await client.completions.create(**ASK)}
        stream = await client.completions.create(
            **ASK, stream=True, stream_options={"include_usage": True}
        )
        got["chunks"] = [chunk async for chunk in stream]
        got["model"] = await client.models.retrieve("mock")
        with pytest.raises(openai.NotFoundError, match=r"models: \['mock'\]"):
            await client.models.retrieve("nope")
        with pytest.raises(openai.BadRequestError, match="top_k is not supported"):
            await client.completions.create(**ASK, extra_body={"top_k": 40})
        with pytest.raises(openai.BadRequestError, match="only allowed when stream is true"):
            await client.completions.create(**ASK, stream_options={"include_usage": True})
        got["after"] = await client.completions.create(**ASK)
        return got

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, serve_config())
            got = await in_asyncio(session, handle.url)
            async with httpx.AsyncClient(base_url=handle.url) as http:
                version = (await http.get("/version")).json()
                listed = (await http.get("/v1/models")).json()
                wrong_method = await http.post("/v1/models/mock")
            handle.drain()
    check_usage_stream(got["chunks"], got["whole"])
    model = got["model"]
    assert model.id == "mock" and listed["data"] == [model.model_dump(exclude_unset=True)]
    assert got["after"].choices[0].text == got["whole"].choices[0].text
    assert version == {"version": ts.__version__}
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "MethodNotAllowed"


async def test_a_continued_stream_counts_the_usage_of_what_the_client_was_sent_once() -> None:
    plan = FaultPlan.at(fault=Fault.POISON, batch=0, token=3)
    config = ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 5},
            "batching": {"max_wait": 0.001},
            "workers": [
                {
                    "name": "mock",
                    "runner": "trio_supervise.testing:FaultyRunner",
                    "device": "cpu",
                    "runner_args": {
                        "inner": "trio_supervise.runners.mock:MockRunner",
                        "inner_args": {"delay": 0.005},
                        "plan": plan.to_dict(),
                    },
                }
            ],
        }
    )
    ask = {**ASK, "max_tokens": 7}

    async def session(client: Any) -> dict[str, Any]:
        stream = await client.completions.create(
            **ask, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]  # batch 0: poisoned at its 3rd token
        return {"chunks": chunks, "whole": await client.completions.create(**ask)}  # batch 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, config)
            got = await in_asyncio(session, handle.url)
            async with httpx.AsyncClient(base_url=handle.url) as http:
                workers = (await http.get("/v1/workers")).json()["workers"]
            handle.drain()
    assert workers[0]["generation"] == 2  # the tier did restart under the stream
    check_usage_stream(got["chunks"], got["whole"])
    assert got["chunks"][-1].usage.completion_tokens == 7
