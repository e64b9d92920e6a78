"""Request streams from a worker under autojump_clock: one reader at a time, chunks from a
generator or a safe channel, and one wake-up per chunk (or one at the end of ``collect``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import pytest
import trio
import trio.testing

import trio_supervise as ts
from tests.worker.common import expected_text, req, worker_args
from trio_supervise import FinishReason
from trio_supervise.runners.mock import MockRecord, MockRunner

Clock = trio.testing.MockClock


async def test_one_stream_is_read_by_one_task_at_a_time(autojump_clock: Clock) -> None:
    record = MockRecord()
    async with ts.open_worker(MockRunner, **worker_args(record)) as worker:
        stream = worker.generate(req("shared", max_tokens=3))
        await stream.__anext__()  # the first token; the next one comes a second later
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.__anext__)
            await trio.testing.wait_all_tasks_blocked()  # the first reader waits for a chunk
            with pytest.raises(trio.BusyResourceError, match="'shared'"):
                await stream.__anext__()
        # The first reader got its chunk; the stream goes on for whoever reads it next.
        rest = [chunk async for chunk in stream]
        assert rest[-1].finish_reason is FinishReason.LENGTH


async def test_open_chunks_takes_a_generator_or_a_safe_channel(autojump_clock: Clock) -> None:
    closed: list[str] = []

    async def generator() -> AsyncGenerator[ts.Chunk, None]:
        try:
            for i in range(3):
                yield ts.Chunk("r", (i,))
        finally:
            closed.append("generator")

    @trio.as_safe_channel
    async def concurrent() -> AsyncGenerator[ts.Chunk, None]:
        send, receive = trio.open_memory_channel[ts.Chunk](10)
        async with trio.open_nursery() as nursery:  # a nursery, never open across a yield
            for i in range(3):
                nursery.start_soon(send.send, ts.Chunk("r", (i,)))
        send.close()
        try:
            async with receive:
                async for chunk in receive:
                    yield chunk
        finally:
            closed.append("channel")

    for produced in (generator(), concurrent()):
        async with ts.open_chunks(produced) as chunks:
            async for chunk in chunks:
                assert chunk.token_ids[0] in (0, 1, 2)
                break  # leave early: each is closed in this task, on the way out
    assert closed == ["generator", "channel"]
    # And a worker runs a runner whose execute is a safe channel.
    async with ts.open_worker(SafeChannelRunner, device="cpu") as worker:
        tokens, *_ = await worker.generate(req("s", max_tokens=3)).collect()
        assert len(tokens) == 3


class SafeChannelRunner(MockRunner):
    """MockRunner's chunks, through ``trio.as_safe_channel``."""

    def execute(self, batch: ts.Batch) -> Any:  # type: ignore[override]
        return _safe(super().execute(batch))


@trio.as_safe_channel
async def _safe(chunks: AsyncGenerator[ts.Chunk, None]) -> AsyncGenerator[ts.Chunk, None]:
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            yield chunk


async def test_collect_wakes_its_reader_once_at_the_end(
    autojump_clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_supervise.tier._requests import RequestState

    wakes: list[str] = []
    wake = RequestState._wake

    def counted(state: RequestState) -> None:
        wakes.append(state.id)
        wake(state)

    monkeypatch.setattr(RequestState, "_wake", counted)
    async with ts.open_worker(MockRunner, runner_args={"delay": 1.0}, device="cpu") as worker:
        streamed = [chunk async for chunk in worker.generate(req("chunks", 4))]
        assert len(streamed) == 4 and wakes.count("chunks") == 4  # one wake per chunk
        tokens, text, reason, _ = await worker.generate(req("whole", 4)).collect()
        assert (len(tokens), text, reason) == (4, expected_text(req("whole")), FinishReason.LENGTH)
        assert wakes.count("whole") == 1  # woken once, at the end
