"""A tier incarnation alone, driven through its port: no Worker, only what crosses the boundary.

Jobs go down a memory channel; chunks come up into each request's own state; the port's
callbacks and counters are all the tier reports. Under autojump_clock.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_supervise as ts
from tests.support.helpers import FaultRunner
from trio_supervise import DEVICE_POLICY, BreakerState, Directive, Request, SamplingParams
from trio_supervise.devices import CpuDevice
from trio_supervise.runners.mock import MockRecord, MockRunner
from trio_supervise.tier._home import LoadedRunner
from trio_supervise.tier._port import Job, TierCounts, TierPort
from trio_supervise.tier._requests import RequestState, RequestStream
from trio_supervise.tier._tier import Tier

Clock = trio.testing.MockClock


class Reports:
    """What a tier told its parent through the port."""

    def __init__(self) -> None:
        self.ready = 0
        self.is_ready = trio.Event()
        self.breaker: list[tuple[BreakerState, BreakerState]] = []
        self.ended: list[str] = []


@attrs.define
class Alone:
    """A tier, and the other ends of its port: where its jobs go in, what it reported."""

    send: trio.MemorySendChannel[Job]
    reports: Reports
    counts: TierCounts
    record: MockRecord
    tier: Tier

    def job(self, *rids: str) -> Job:
        """A job of fresh requests (3 tokens each), sent to the tier."""
        job = job_of(self.reports, *rids)
        self.send.send_nowait(job)
        return job


def alone(**changes: Any) -> Alone:
    """A tier over a MockRunner(delay=1.0) on the CPU; ``changes`` replace port fields."""
    send, receive = trio.open_memory_channel[Job](4)
    reports, counts, record = Reports(), TierCounts(), MockRecord()

    def ready(deterministic: bool) -> None:
        assert deterministic  # a MockRunner says so
        reports.ready += 1
        reports.is_ready.set()

    def breaker_changed(old: BreakerState, new: BreakerState) -> None:
        reports.breaker.append((old, new))

    port = TierPort(
        name="alone",
        generation=1,
        jobs=receive,
        factory=MockRunner,
        runner_args={"delay": 1.0, "record": record},
        open_device=CpuDevice,
        readiness_timeout=None,
        hang_timeout=None,
        decide=DEVICE_POLICY.decide,
        counts=counts,
        ready=ready,
        breaker_changed=breaker_changed,
    )
    home = changes.pop("home", None)
    return Alone(send, reports, counts, record, Tier(attrs.evolve(port, **changes), home))


def job_of(reports: Reports, *rids: str, max_tokens: int = 3) -> Job:
    def ended(state: RequestState) -> None:
        reports.ended.append(f"{state.id}:{state.outcome}")

    params = SamplingParams(max_tokens=max_tokens, seed=1)
    return Job([RequestState(Request(rid, f"prompt {rid}", params), ended) for rid in rids])


async def test_a_tier_runs_jobs_from_its_channel_and_reports_only_through_its_port(
    autojump_clock: Clock,
) -> None:
    t = alone()
    first, second = t.job("a", "b"), t.job("c")
    with pytest.raises(ExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t.tier.run)
            texts = [(await RequestStream(s).collect())[1] for s in (*first.states, *second.states)]
            assert t.reports.ready == 1
            assert [len(text.split()) for text in texts] == [3, 3, 3]
            assert (first.seq, second.seq, first.generation) == (0, 1, 1)
            assert (t.counts.batches, t.counts.tokens, t.counts.resumed) == (2, 9, 0)
            assert t.tier.in_flight == set()  # settled here: nothing for the parent to settle
            assert t.record.executes == [(0, 0, ("a", "b")), (0, 1, ("c",))]
            t.tier.fail(ts.ContextPoisoned("the parent ends it"))
    # It raised its fatal error after closing the runner and the device.
    assert raised.group_contains(ts.ContextPoisoned, match="^the parent ends it$")
    assert t.record.closes == 1
    assert t.reports.ended == ["a:finished", "b:finished", "c:finished"]


async def test_a_job_whose_requests_all_ended_while_queued_is_skipped(
    autojump_clock: Clock,
) -> None:
    t = alone()
    left = job_of(t.reports, "gone")
    left.states[0].cancel()
    t.send.send_nowait(left)
    kept = t.job("kept")
    with pytest.raises(ExceptionGroup):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t.tier.run)
            await RequestStream(kept.states[0]).collect()
            t.tier.fail(ts.ContextPoisoned("done"))
    assert t.record.executes == [(0, 0, ("kept",))]  # the skipped job got no seq
    assert left.seq is None and t.counts.batches == 1


async def test_a_job_handed_over_as_the_gate_closes_is_held_not_started(
    autojump_clock: Clock,
) -> None:
    t = alone()
    tier = t.tier
    with pytest.raises(ExceptionGroup):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tier.run)
            await t.reports.is_ready.wait()
            await trio.sleep(1)  # the tier now waits in receive()
            job = t.job("late")  # handed straight to the waiting tier ...
            tier.dispatch_gate.close()  # ... which has not run yet when a rebuild begins
            await trio.sleep(5)
            assert tier.held is job and tier.in_flight == set()
            assert t.record.executes == [] and job.seq is None and job.states[0].attempts == 0
            tier.dispatch_gate.open()
            await RequestStream(job.states[0]).collect()
            assert tier.held is None and t.record.executes == [(0, 0, ("late",))]
            # Closed again and ended while holding one: the job stays held, for the parent
            # to put back at the head of its queue.
            again = t.job("again")
            tier.dispatch_gate.close()
            await trio.sleep(1)
            tier.fail(ts.ContextPoisoned("restart"))
    assert tier.held is again and again.states[0].open


async def test_a_resumed_batch_fails_alone_and_is_counted(autojump_clock: Clock) -> None:
    oom = ts.OutOfMemory("batch 0 is too big")
    t = alone(factory=FaultRunner, runner_args={"batch_faults": {0: (1, oom)}, "delay": 1.0})
    assert t.tier.port.decide(oom) is Directive.RESUME
    failing, fine = t.job("x"), t.job("y")
    with pytest.raises(ExceptionGroup):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t.tier.run)
            with pytest.raises(ts.OutOfMemory):
                await RequestStream(failing.states[0]).collect()
            await RequestStream(fine.states[0]).collect()
            t.tier.fail(ts.ContextPoisoned("done"))
    assert t.counts.resumed == 1 and t.tier.in_flight == set()
    assert t.reports.ended == ["x:failed", "y:finished"]


class ElsewhereHome:
    """A home of its own: the runner built here, its teardown replacing the fatal error."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.runner: Any = None

    def placement(self) -> dict[str, Any]:
        return {"pid": 4242}

    async def load(self, port: TierPort, nursery: trio.Nursery, fail: Any) -> LoadedRunner:
        self.calls.append(f"load {port.generation}")
        self.runner = FaultRunner(batch_faults={0: (1, ts.ContextPoisoned("700"))}, delay=1.0)
        await self.runner.load(CpuDevice())
        return LoadedRunner(self.runner, 1, True)

    async def teardown(self, fatal: BaseException | None) -> BaseException | None:
        self.calls.append(f"teardown {fatal!r}")
        return ts.Unrecoverable("the home says so")


async def test_a_tier_runs_its_runner_where_its_home_says(autojump_clock: Clock) -> None:
    home = ElsewhereHome()
    t = alone(home=home)
    assert t.tier.home is home and t.tier.placement() == {"pid": 4242}
    failing = t.job("x")
    with pytest.raises(ExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t.tier.run)
    # The error that ends the tier, and its failed batch's, is the one the teardown handed back.
    assert raised.group_contains(ts.Unrecoverable, match="^the home says so$")
    assert failing.error is t.tier.fatal and isinstance(failing.error, ts.Unrecoverable)
    assert home.calls == ["load 1", "teardown ContextPoisoned('700')"]
    assert t.reports.ready == 1 and t.tier.runner is home.runner
