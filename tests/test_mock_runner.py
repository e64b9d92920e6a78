"""MockRunner: the same request gives the same output whatever its batch."""

import trio
import trio.testing

import trio_supervise as ts
from trio_supervise import Batch, FinishReason, Request, SamplingParams
from trio_supervise.devices import CpuDevice
from trio_supervise.runners.mock import MockRecord, MockRunner


async def run_batch(runner: MockRunner, batch: Batch) -> dict[str, list[ts.Chunk]]:
    out: dict[str, list[ts.Chunk]] = {r.id: [] for r in batch.requests}
    async for chunk in runner.execute(batch):
        out[chunk.request_id].append(chunk)
    return out


async def test_output_depends_on_the_request_not_the_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    record = MockRecord()
    runner = MockRunner(record=record)
    await runner.load(CpuDevice())
    a = Request("a", "hello world", SamplingParams(6, seed=3))
    b = Request("b", "other", SamplingParams(3, seed=3))
    alone = await run_batch(runner, Batch([a], 0))
    together = await run_batch(runner, Batch([b, a], 1))
    assert [c.token_ids for c in alone["a"]] == [c.token_ids for c in together["a"]]
    assert together["a"][-1].finish_reason is FinishReason.LENGTH
    assert together["a"][-1].usage == ts.Usage(2, 6)
    reseeded = await run_batch(
        runner, Batch([Request("a", "hello world", SamplingParams(6, seed=4))], 2)
    )
    assert [c.token_ids for c in reseeded["a"]] != [c.token_ids for c in alone["a"]]
    assert record.executes == [(0, 0, ("a",)), (0, 1, ("b", "a")), (0, 2, ("a",))]
    assert (record.loads, record.devices) == (1, ["cpu"])


async def test_stop_sequences_and_cancellation(autojump_clock: trio.testing.MockClock) -> None:
    runner = MockRunner(delay=1.0)
    first = await run_batch(runner, Batch([Request("a", "p", SamplingParams(8))], 0))
    word = first["a"][1].text
    stopped = await run_batch(
        runner, Batch([Request("a", "p", SamplingParams(8, stop=(word,)))], 1)
    )
    assert stopped["a"][-1].finish_reason is FinishReason.STOP
    assert len(stopped["a"]) <= 2
    cancelled: set[str] = set()
    batch = Batch(
        [Request("a", "p", SamplingParams(50)), Request("b", "q", SamplingParams(3))],
        2,
        cancelled=cancelled,
    )
    seen: list[str] = []
    with trio.fail_after(10):
        async for chunk in runner.execute(batch):
            seen.append(chunk.request_id)
            cancelled.add("a")
    assert seen.count("a") == 1 and seen.count("b") == 3
