"""MockRunner: the same request gives the same output whatever its batch; continuous batching
in both shipped runners (MockRunner and CharLM)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy
import pytest
import trio
import trio.testing

import trio_supervise as ts
from trio_supervise import Batch, FinishReason, Request, SamplingParams
from trio_supervise.devices import CpuDevice
from trio_supervise.runners import charlm
from trio_supervise.runners.charlm import CharLM
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


# Continuous batching, the same for both runners (the shared part is runners/_stepping.py): the
# batches executing at once decode together, one forward pass per step for all their requests.

KINDS = ["mock", "charlm"]
LONG = {"mock": 10_000, "charlm": 4_000}  # CharLM's max_model_len is 4096
T = TypeVar("T")


class Probe:
    """Watches one runner's forward passes (CharLM: its device's ``_host_logits`` calls; the
    mock: its steps, one sleep each). ``rows`` has the requests of each pass that completed;
    ``fail_next`` makes the next pass raise it; ``hold`` parks the next pass until it is set,
    with ``held`` set and ``holder`` the task that runs it."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.fail_next: Exception | None = None
        self.hold: trio.Event | None = None
        self.held = trio.Event()
        self.holder: trio.lowlevel.Task | None = None

    async def around(self, rows: int, forward: Callable[[], Awaitable[T]]) -> T:
        if self.hold is not None:
            hold, self.hold = self.hold, None
            self.holder = trio.lowlevel.current_task()
            self.held.set()
            await hold.wait()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        result = await forward()
        self.rows.append(rows)
        return result


class ProbedDevice:
    """A CpuDevice whose forward passes go through a probe."""

    name = "cpu"
    xp = numpy

    def __init__(self, probe: Probe) -> None:
        self.inner = CpuDevice()
        self.probe = probe

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        if fn is charlm._host_logits:
            return await self.probe.around(len(args[1]), lambda: self.inner.run_sync(fn, *args))
        return await self.inner.run_sync(fn, *args)


async def probed(kind: str, **kwargs: Any) -> tuple[Any, Probe]:
    """A loaded runner of ``kind`` and the probe on its forward passes."""
    probe = Probe()
    if kind == "charlm":
        runner: Any = CharLM(**kwargs)
        await runner.load(ProbedDevice(probe))
        return runner, probe
    runner = MockRunner(delay=0.01, **kwargs)
    await runner.load(CpuDevice())
    step = runner._stepper.step
    runner._stepper.step = lambda states: probe.around(len(states), lambda: step(states))
    return runner, probe


def request(rid: str, max_tokens: int, seed: int = 7) -> Request:
    return Request(rid, "The ", SamplingParams(max_tokens, temperature=0.9, seed=seed))


def idle(runner: Any) -> bool:
    return repr(runner._stepper) == "<Stepper 0 batches, 0 requests active>"


class Consumer:
    """Drives one ``execute`` in its own task: keeps its chunks, or the error it raised."""

    def __init__(self, runner: Any, batch: Batch, *, leave_after: int | None = None) -> None:
        self.runner, self.batch, self.leave_after = runner, batch, leave_after
        self.chunks: list[ts.Chunk] = []
        self.error: Exception | None = None
        self.scope = trio.CancelScope()
        self.task: trio.lowlevel.Task | None = None
        self._signals: dict[int, trio.Event] = {}

    def after(self, n: int) -> trio.Event:
        """Set once ``n`` chunks came."""
        return self._signals.setdefault(n, trio.Event())

    def tokens(self, rid: str) -> list[int]:
        return [t for c in self.chunks if c.request_id == rid for t in c.token_ids]

    async def run(self) -> None:
        self.task = trio.lowlevel.current_task()
        with self.scope:
            try:
                async with contextlib.aclosing(self.runner.execute(self.batch)) as chunks:
                    async for chunk in chunks:
                        self.chunks.append(chunk)
                        if len(self.chunks) in self._signals:
                            self._signals[len(self.chunks)].set()
                        if len(self.chunks) == self.leave_after:
                            break  # the consumer closes the generator
            except Exception as exc:
                self.error = exc


async def alone(kind: str, batch: Batch) -> Consumer:
    runner, _ = await probed(kind)
    consumer = Consumer(runner, batch)
    await consumer.run()
    return consumer


@pytest.mark.parametrize("kind", KINDS)
async def test_a_short_request_overtakes_a_long_one(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    runner, probe = await probed(kind, max_concurrency=2)
    long = Consumer(runner, Batch([request("long", LONG[kind])], 0))
    short = Consumer(runner, Batch([request("short", 4)], 1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(long.run)
        await long.after(3).wait()
        at_join, passes_at_join = len(long.chunks), len(probe.rows)
        await short.run()
        at_end, passes_at_end = len(long.chunks), len(probe.rows)
        nursery.cancel_scope.cancel()
    assert [c.finish_reason for c in short.chunks] == [None] * 3 + [FinishReason.LENGTH]
    assert at_end - at_join < 10 and passes_at_end - passes_at_join <= 5
    assert long.chunks[-1].finish_reason is None and long.error is None
    assert idle(runner)


@pytest.mark.parametrize("kind", KINDS)
async def test_each_step_is_one_forward_pass_for_every_batch(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    runner, probe = await probed(kind, max_concurrency=2)
    a = Consumer(runner, Batch([request("a", 20)], 0))
    b = Consumer(runner, Batch([request("b1", 8, seed=1), request("b2", 8, seed=2)], 1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await a.after(5).wait()
        nursery.start_soon(b.run)
    assert (len(a.chunks), len(b.chunks)) == (20, 16)
    # Separate decoding loops would make 20 + 8 passes; shared steps make 20, 8 of them with
    # the three requests.
    assert len(probe.rows) == 20 and probe.rows.count(3) == 8 and sum(probe.rows) == 36
    if kind == "mock":
        assert runner.record.steps == 20
        assert [ids for _, _, ids in runner.record.executes] == [("a",), ("b1", "b2")]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_same_output_alone_or_joined_mid_decode(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    first = Batch([request("a", 40, seed=7)], 0)
    second = Batch([request("b", 30, seed=8), request("c", 5, seed=9)], 1)
    runner, _ = await probed(kind, max_concurrency=2)
    a, b = Consumer(runner, first), Consumer(runner, second)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await a.after(7).wait()
        nursery.start_soon(b.run)
    assert a.chunks == (await alone(kind, first)).chunks
    assert b.chunks == (await alone(kind, second)).chunks
    assert len(a.chunks) == 40 and len(b.chunks) == 35


@pytest.mark.parametrize("how", ["cancelled", "closed", "cancelled mid-step", "one request"])
@pytest.mark.parametrize("kind", KINDS)
async def test_leaving_one_batch_leaves_the_others_output_unchanged(
    kind: str, how: str, autojump_clock: trio.testing.MockClock
) -> None:
    first = Batch([request("a", 30, seed=7)], 0)
    cancelled: set[str] = set()
    second = Batch([request("b", 30, seed=8), request("c", 20, seed=9)], 1, cancelled=cancelled)
    runner, probe = await probed(kind, max_concurrency=2)
    a = Consumer(runner, first)
    b = Consumer(runner, second, leave_after=6 if how == "closed" else None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await a.after(5).wait()
        nursery.start_soon(b.run)
        await b.after(4).wait()
        if how == "cancelled":
            b.scope.cancel()
        elif how == "one request":
            cancelled.add("b")
        elif how == "cancelled mid-step":
            # Whichever execute runs the next step is cancelled while it awaits the device;
            # the other one runs that step again.
            probe.hold = trio.Event()
            await probe.held.wait()
            victim, survivor = (a, b) if probe.holder is a.task else (b, a)
            victim.scope.cancel()
    if how == "cancelled mid-step":
        assert survivor.chunks == (await alone(kind, survivor.batch)).chunks
        assert len(victim.chunks) < 30
        return
    assert a.chunks == (await alone(kind, first)).chunks
    by_itself = await alone(kind, Batch(second.requests, 1))
    if how == "one request":  # the other request of the batch goes on to its end
        assert b.tokens("c") == by_itself.tokens("c")
        assert 2 <= len(b.tokens("b")) < 30
        assert b.tokens("b") == by_itself.tokens("b")[: len(b.tokens("b"))]
    else:
        assert 4 <= len(b.chunks) < 50 and b.chunks == by_itself.chunks[: len(b.chunks)]
    assert idle(runner) and a.error is None and b.error is None


@pytest.mark.parametrize("kind", KINDS)
async def test_a_step_that_raises_fails_every_batch_in_it(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    runner, probe = await probed(kind, max_concurrency=2)
    a = Consumer(runner, Batch([request("a", 30)], 0))
    b = Consumer(runner, Batch([request("b", 30, seed=8)], 1))
    oom = ts.OutOfMemory("the step needs 3 GiB, 1 GiB free")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await a.after(5).wait()
        nursery.start_soon(b.run)
        await b.after(3).wait()
        probe.fail_next = oom
    assert a.error is not None and b.error is not None
    assert [c.error is oom for c in (a, b)].count(True) == 1  # the execute that ran the step
    [copied] = [c.error for c in (a, b) if c.error is not oom]
    assert isinstance(copied, ts.OutOfMemory) and copied.__cause__ is oom
    assert str(copied) == str(oom) and copied.retryable
    for consumer in (a, b):  # what came before the error is what the batch alone gives
        by_itself = await alone(kind, consumer.batch)
        assert consumer.chunks == by_itself.chunks[: len(consumer.chunks)]
        assert all(not c.final for c in consumer.chunks)
    assert idle(runner)
    after = Consumer(runner, Batch([request("d", 5)], 2))  # the runner goes on
    await after.run()
    assert after.error is None and after.chunks[-1].finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize(
    ("factory", "runner_args", "long_tokens"),
    [
        ("trio_supervise.runners.mock:MockRunner", {"max_concurrency": 2, "delay": 0.01}, 10_000),
        ("trio_supervise.runners.charlm:CharLM", {}, 4_000),  # max_concurrency 8 by default
    ],
    ids=["mock", "charlm"],
)
async def test_through_a_worker_a_short_request_overtakes_a_long_one(
    factory: str,
    runner_args: dict[str, Any],
    long_tokens: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with ts.open_worker(factory, runner_args=runner_args, device="cpu") as worker:
        delivered: list[int] = []
        going = trio.Event()

        async def read_long() -> None:
            async with worker.generate(request("long", long_tokens)) as stream:
                async for chunk in stream:
                    delivered.extend(chunk.token_ids)
                    if len(delivered) >= 3:
                        going.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_long)
            await going.wait()
            at_join = len(delivered)
            _, _, reason, usage = await worker.generate(request("short", 4)).collect()
            at_end = len(delivered)
            nursery.cancel_scope.cancel()
    assert (reason, usage) == (
        FinishReason.LENGTH,
        ts.Usage(1, 4) if "mock" in factory else ts.Usage(4, 4),
    )
    assert at_end - at_join < 10
