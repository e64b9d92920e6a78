"""How a RemoteRunner reads one stream's body: the events of a network read as one chunk, lines
split across reads, a last line with no newline, and a line with no end (an httpx mock transport
hands the body over in the reads given; no server, no clock)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from trio_supervise import Batch, Chunk, FinishReason, Request, SamplingParams, ServerError
from trio_supervise.runners import _remote_stream
from trio_supervise.runners._remote_stream import stream_completion


def event(text: str, ids: list[int], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "text": text, "token_ids": ids, "finish_reason": finish}
    return b"data: " + json.dumps({"choices": [choice], **extra}).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


async def streamed(reads: list[bytes]) -> tuple[list[Chunk], Chunk | None]:
    """The chunks sent and the last chunk returned for a body that arrives in ``reads``."""

    async def body() -> AsyncIterator[bytes]:
        for data in reads:
            yield data

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    send, receive = trio.open_memory_channel[Chunk](100)
    batch = Batch([Request("r", "hi", SamplingParams(max_tokens=8))])
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(answer), base_url="http://backend"
    ) as client:  # fmt: skip
        last = await stream_completion(
            client, "http://backend", "/v1/completions", {}, "r", batch, send,
            answered=lambda: None, scrub=str, model="m",
        )  # fmt: skip
    send.close()
    return [chunk async for chunk in receive], last


async def test_the_events_of_one_read_are_one_chunk() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    reads = [
        event("a", [1]) + event("b", [2]) + event("c", [3]),
        event("d", [4], "length", usage=usage) + DONE,
    ]
    chunks, last = await streamed(reads)
    assert [(c.text, c.token_ids) for c in chunks] == [("abc", (1, 2, 3)), ("d", (4,))]
    assert last is not None and last.finish_reason is FinishReason.LENGTH
    assert last.usage is not None and last.usage.completion_tokens == 4


async def test_lines_split_across_reads_are_put_together() -> None:
    whole = event("héllo", [1, 2]) + event(" wörld", [3], "stop") + DONE
    reads = [whole[i : i + 7] for i in range(0, len(whole), 7)]  # mid-line, mid-character
    chunks, last = await streamed(reads)
    assert "".join(c.text for c in chunks) == "héllo wörld"
    assert [t for c in chunks for t in c.token_ids] == [1, 2, 3]
    assert last is not None and last.finish_reason is FinishReason.STOP


async def test_a_last_line_without_its_newline_counts() -> None:
    reads = [event("a", [1]), event("b", [2], "stop").rstrip(b"\n")]  # no [DONE] either
    chunks, last = await streamed(reads)
    assert [(c.text, c.token_ids) for c in chunks] == [("a", (1,)), ("b", (2,))]
    assert last is not None and last.finish_reason is FinishReason.STOP


async def test_a_line_that_never_ends_is_a_server_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_remote_stream, "MAX_LINE", 64)
    with pytest.raises(ServerError, match="sent a line of more than 64 bytes"):
        await streamed([event("a", [1]), b"data: " + b"x" * 40, b"x" * 40])


async def test_what_the_consumer_raises_comes_out_of_execute_plainly() -> None:
    """The streams' nursery lives in ``execute``'s context manager: an error of the code that
    reads the chunks (the tier's routing) comes out as itself, not in an exception group."""
    from tests.support.remote_backend import open_backend, request
    from trio_supervise.devices import CpuDevice
    from trio_supervise.runners.remote import RemoteRunner

    with trio.fail_after(30):
        async with open_backend() as running:
            runner = RemoteRunner(running.url, model="mock")
            await runner.load(CpuDevice())
            try:
                with pytest.raises(KeyError, match="routing"):
                    async with runner.execute(Batch([request("a", 50)])) as chunks:
                        async for _ in chunks:
                            raise KeyError("routing")
                async with runner.execute(Batch([request("b", 3)])) as chunks:  # goes on
                    assert [c async for c in chunks][-1].finish_reason is FinishReason.LENGTH
            finally:
                await runner.aclose()
