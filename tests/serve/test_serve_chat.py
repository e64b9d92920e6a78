"""The OpenAI surface with the official ``openai`` client, sync and async, against ``serve`` of
CharLM (a real model with a tokenizer and log probabilities) and of the mock runner: chat whole
and streamed (its usage, also when the stream was continued on a restarted tier), stop strings
cut, ``n=2`` reproducible, log probabilities, ``echo``, prompt lists and token ids, the 400s of a
field a runner cannot honour and of ``max_tokens`` past the model's length, ``models.retrieve``,
``/tokenize`` and ``/detokenize``; chat through a front of RemoteRunners; and bad chat bodies,
each a clear 400 with the server healthy after it.

The clients run in a thread (the async one under ``asyncio.run``, as in
``test_serve_openai_client.py``)."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
import trio

from trio_supervise.serve import ServeConfig
from trio_supervise.testing import Fault, FaultPlan

from ..support.helpers import serve_config, start_server
from .test_serve_openai_client import in_asyncio

openai = pytest.importorskip("openai")

CHARLM = "trio_supervise.runners.charlm:CharLM"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The module "}]


def charlm_config(name: str = "charlm") -> ServeConfig:
    return ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 5},
            "batching": {"max_wait": 0.001},
            "workers": [{"name": name, "runner": CHARLM, "device": "cpu"}],
        }
    )


def content(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_chat_stop_n_logprobs_echo_and_tokenize_with_the_sync_client() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, charlm_config())
            client = openai.OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0)
            ask: dict[str, Any] = {
                "model": "charlm",
                "messages": HELLO,
                "max_tokens": 40,
                "seed": 7,
                "temperature": 0.8,
            }

            def run() -> dict[str, Any]:
                got: dict[str, Any] = {"whole": client.chat.completions.create(**ask)}
                got["chunks"] = list(
                    client.chat.completions.create(
                        **ask, stream=True, stream_options={"include_usage": True}
                    )
                )
                text = got["whole"].choices[0].message.content
                got["stop"] = stop = text[10:13]
                got["cut"] = client.chat.completions.create(**ask, stop=[stop])
                got["kept"] = client.chat.completions.create(
                    **ask, stop=stop, extra_body={"include_stop_str_in_output": True}
                )
                got["cut_stream"] = list(
                    client.chat.completions.create(**ask, stop=stop, stream=True)
                )
                got["n2"] = [client.chat.completions.create(**ask, n=2) for _ in range(2)]
                got["logprobs"] = client.completions.create(
                    model="charlm", prompt="The ", max_tokens=6, seed=1, logprobs=3
                )
                got["chat_logprobs"] = client.chat.completions.create(
                    **ask, logprobs=True, top_logprobs=2
                )
                got["echo"] = client.completions.create(
                    model="charlm", prompt=["The ", "A "], max_tokens=4, seed=1, echo=True
                )
                with pytest.raises(openai.BadRequestError) as long:
                    client.chat.completions.create(**{**ask, "max_tokens": 5000})
                got["long"] = long.value
                with pytest.raises(openai.BadRequestError) as best:
                    client.completions.create(model="charlm", prompt="a", best_of=3)
                got["best"] = best.value
                got["model"] = client.models.retrieve("charlm")
                got["after"] = client.chat.completions.create(**ask)
                return got

            got = await trio.to_thread.run_sync(run)
            client.close()
            async with httpx.AsyncClient(base_url=handle.url) as http:
                tokens = (await http.post("/tokenize", json={"prompt": "hello there"})).json()
                back = await http.post("/detokenize", json={"tokens": tokens["tokens"]})
                ids = await http.post(
                    "/v1/completions", json={"prompt": tokens["tokens"], "max_tokens": 3, "seed": 2}
                )
                same = await http.post(
                    "/v1/completions", json={"prompt": "hello there", "max_tokens": 3, "seed": 2}
                )
                chat_tokens = await http.post("/tokenize", json={"messages": HELLO})
            handle.drain()
    whole = got["whole"]
    (choice,) = whole.choices
    text = choice.message.content
    assert choice.message.role == "assistant" and len(text) == 40
    assert (choice.finish_reason, whole.object) == ("length", "chat.completion")
    # streamed: the role first, then the same text; the usage alone at the end
    chunks = got["chunks"]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object.endswith("chunk")
    assert content(chunks) == text
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert whole.usage.completion_tokens == 40
    # the stop string is cut (whole and streamed), or kept when asked
    stop = got["stop"]
    at = text.index(stop)
    assert got["cut"].choices[0].message.content == text[:at]
    assert got["cut"].choices[0].finish_reason == "stop"
    assert got["kept"].choices[0].message.content == text[: at + len(stop)]
    assert content(got["cut_stream"]) == text[:at]
    # n=2: two choices, the same both times; the first is the request's own seed's
    first, again = ([c.message.content for c in r.choices] for r in got["n2"])
    assert first == again and len(first) == 2 and first[0] == text and first[1] != text
    assert [c.index for c in got["n2"][0].choices] == [0, 1]
    assert got["n2"][0].usage.completion_tokens == 80
    # log probabilities: one per token, 3 alternatives, the chosen one among them or below
    logprobs = got["logprobs"].choices[0].logprobs
    assert "".join(logprobs.tokens) == got["logprobs"].choices[0].text
    assert all(len(top) == 3 for top in logprobs.top_logprobs)
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    for lp, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert lp <= max(top.values()) + 1e-9 and sum(math.exp(v) for v in top.values()) <= 1
    assert logprobs.text_offset == list(range(6))
    entries = got["chat_logprobs"].choices[0].logprobs.content
    assert "".join(e.token for e in entries) == text
    assert all(len(e.top_logprobs) == 2 for e in entries)
    # echo and a list of prompts: each prompt its choice, the prompt first
    echoed = got["echo"].choices
    assert [c.index for c in echoed] == [0, 1]
    assert echoed[0].text.startswith("The ") and echoed[1].text.startswith("A ")
    assert got["echo"].usage.prompt_tokens == 6 and got["echo"].usage.completion_tokens == 8
    # the 400s, after which the server still serves
    assert "max_tokens must be at most" in str(got["long"]) and "4096" in str(got["long"])
    assert "best_of is not supported" in str(got["best"])
    assert got["model"].id == "charlm"
    assert got["after"].choices[0].message.content == text
    # tokenize round trip; token ids as a prompt answer as the text does
    assert tokens["count"] == 11 and tokens["max_model_len"] == 4096
    assert back.json() == {"prompt": "hello there"}
    assert ids.json()["choices"][0]["text"] == same.json()["choices"][0]["text"]
    assert chat_tokens.json()["count"] == len("system: Be brief.\nuser: The module \nassistant: ")


async def test_a_continued_chat_stream_counts_its_usage_once_with_the_async_client() -> None:
    plan = FaultPlan.at(fault=Fault.POISON, batch=0, token=3)
    faulty = {
        "name": "mock",
        "runner": "trio_supervise.testing:FaultyRunner",
        "device": "cpu",
        "runner_args": {
            "inner": "trio_supervise.runners.mock:MockRunner",
            "inner_args": {"delay": 0.005},
            "plan": plan.to_dict(),
        },
    }
    config = ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 5},
            "batching": {"max_wait": 0.001},
            "workers": [faulty],
        }
    )
    ask = {"model": "mock", "messages": HELLO, "max_tokens": 7, "seed": 3}

    async def session(client: Any) -> dict[str, Any]:
        stream = await client.chat.completions.create(
            **ask, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]  # batch 0: poisoned at its 3rd token
        whole = await client.chat.completions.create(**ask)  # batch 1
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(**ask, extra_body={"top_k": 5})
        return {"chunks": chunks, "whole": whole, "refused": refused.value}

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, config)
            got = await in_asyncio(session, handle.url)
            workers = handle.pool.statuses()
            handle.drain()
    assert workers[0]["generation"] == 2  # the tier did restart under the stream
    chunks, whole = got["chunks"], got["whole"]
    assert content(chunks) == whole.choices[0].message.content
    assert chunks[-1].usage == whole.usage and whole.usage.completion_tokens == 7
    message = str(got["refused"])
    assert "top_k is not supported by the runner of worker 'mock#0'" in message


async def test_chat_through_a_front_of_remote_runners_streams_with_usage_once() -> None:
    from tests.support.remote_backend import front_config

    def session(model: str) -> Any:
        ask = {"model": model, "messages": HELLO, "max_tokens": 12, "seed": 5, "stop": "zzz"}

        async def run(client: Any) -> dict[str, Any]:
            stream = await client.chat.completions.create(
                **ask, stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in stream]
            whole = await client.chat.completions.create(**ask, n=2, extra_body={"top_k": 3})
            # no max_tokens: what is left of the model's length, counted where the prompt is
            # (by the backend: the front has no tokenizer, and leaves it to the backend)
            free = {k: v for k, v in ask.items() if k != "max_tokens"}
            rest = await client.chat.completions.create(**free)
            return {"chunks": chunks, "whole": whole, "rest": rest}

        return run

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            back = await start_server(nursery, charlm_config())
            front = await start_server(
                nursery, front_config(back.url, runner_args={"model": "charlm"})
            )
            through = await in_asyncio(session("front"), front.url)
            direct = await in_asyncio(session("charlm"), back.url)
            front.drain()
            back.drain()
    for got in (through, direct):
        assert got["chunks"][0].choices[0].delta.role == "assistant"
        assert got["chunks"][-1].usage.completion_tokens == 12
    assert content(through["chunks"]) == content(direct["chunks"])
    assert through["chunks"][-1].usage == direct["chunks"][-1].usage
    texts = [[c.message.content for c in got["whole"].choices] for got in (through, direct)]
    assert texts[0] == texts[1] and texts[0][0] != texts[0][1]
    rests = [got["rest"] for got in (through, direct)]
    assert rests[0].choices[0].message.content == rests[1].choices[0].message.content
    assert rests[0].usage == rests[1].usage
    assert rests[1].usage.total_tokens == 4096 or rests[1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        ([{"role": "tool", "content": "x"}], "messages[0].role"),
        ({"role": "user", "content": "x"}, "messages must be a non-empty list"),
        ([], "messages must be a non-empty list"),
        ([{"role": "user", "content": "x"}] * 10_000, "at most 1024 messages"),
        ([{"role": "user", "content": "x" * 5_000_000}], "the body is over"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[0].content[0] must be a text part",
        ),
        ([{"role": "assistant", "content": None}], "messages[0].content"),
    ],
)
async def test_a_bad_chat_body_is_a_clear_400_and_the_server_serves_after(
    messages: Any, named: str
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, serve_config())
            async with httpx.AsyncClient(base_url=handle.url, timeout=30) as http:
                bad = await http.post("/v1/chat/completions", json={"messages": messages})
            async with httpx.AsyncClient(base_url=handle.url, timeout=30) as http:
                good = await http.post(
                    "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}
                )
                health = await http.get("/readyz")
            handle.drain()
    assert bad.status_code == 400, bad.text
    assert named in bad.json()["error"]["message"]
    assert good.status_code == 200 and health.status_code == 200


async def test_a_prompt_that_fills_the_model_leaves_no_room_and_says_so() -> None:
    """The prompt's length is counted by the model's tokenizer: a chat whose rendering fills
    ``max_model_len`` is a 400 that gives both numbers, and so is ``max_tokens`` past what is
    left after a prompt."""
    config = ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 5},
            "workers": [{"name": "c", "runner": CHARLM, "device": "cpu", "max_model_len": 20}],
        }
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, config)
            async with httpx.AsyncClient(base_url=handle.url) as http:
                full = await http.post(
                    "/v1/chat/completions", json={"messages": [{"role": "user", "content": "ab"}]}
                )
                over = await http.post("/v1/completions", json={"prompt": "abc", "max_tokens": 18})
                fits = await http.post("/v1/completions", json={"prompt": "abc", "max_tokens": 17})
            handle.drain()
    assert full.status_code == 400 and full.json()["error"]["message"] == (
        "the prompt has 20 tokens, and the max_model_len of model 'c' is 20: no room for a "
        "completion"
    )  # "user: ab\nassistant: ", one token per character
    assert over.status_code == 400 and "at most 17" in over.json()["error"]["message"]
    assert "the prompt has 3 tokens" in over.json()["error"]["message"]
    assert fits.status_code == 200 and fits.json()["usage"]["completion_tokens"] == 17
