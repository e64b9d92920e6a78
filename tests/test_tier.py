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
from helpers import FaultRunner

import trio_supervise as ts
from trio_supervise import BreakerState, Directive, Request, SamplingParams
from trio_supervise._policy import DEVICE_POLICY
from trio_supervise._port import Job, TierCounts, TierPort
from trio_supervise._requests import RequestState, RequestStream
from trio_supervise._tier import Tier
from trio_supervise.devices import CpuDevice
from trio_supervise.runners.mock import MockRecord, MockRunner

Clock = trio.testing.MockClock


class Reports:
    """What a tier told its parent through the port."""

    def __init__(self) -> None:
        self.ready = 0
        self.is_ready = trio.Event()
        self.breaker: list[tuple[BreakerState, BreakerState]] = []
        self.ended: list[str] = []


def port_for(
    jobs: trio.MemoryReceiveChannel[Job], reports: Reports, counts: TierCounts, **runner: Any
) -> TierPort:
    def ready() -> None:
        reports.ready += 1
        reports.is_ready.set()

    def breaker_changed(old: BreakerState, new: BreakerState) -> None:
        reports.breaker.append((old, new))

    return TierPort(
        name="alone",
        generation=1,
        jobs=jobs,
        factory=MockRunner,
        runner_args={"delay": 1.0, **runner},
        open_device=CpuDevice,
        readiness_timeout=None,
        hang_timeout=None,
        decide=DEVICE_POLICY.decide,
        counts=counts,
        ready=ready,
        breaker_changed=breaker_changed,
    )


def job_of(reports: Reports, *rids: str, max_tokens: int = 3) -> Job:
    def ended(state: RequestState) -> None:
        reports.ended.append(f"{state.id}:{state.outcome}")

    params = SamplingParams(max_tokens=max_tokens, seed=1)
    return Job([RequestState(Request(rid, f"prompt {rid}", params), ended) for rid in rids])


async def test_a_tier_runs_jobs_from_its_channel_and_reports_only_through_its_port(
    autojump_clock: Clock,
) -> None:
    send, receive = trio.open_memory_channel[Job](4)
    reports, counts, record = Reports(), TierCounts(), MockRecord()
    tier = Tier(port_for(receive, reports, counts, record=record))
    first, second = job_of(reports, "a", "b"), job_of(reports, "c")
    send.send_nowait(first)
    send.send_nowait(second)
    with pytest.raises(ExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tier.run)
            texts = [(await RequestStream(s).collect())[1] for s in (*first.states, *second.states)]
            assert reports.ready == 1
            assert [len(text.split()) for text in texts] == [3, 3, 3]
            assert (first.seq, second.seq, first.generation) == (0, 1, 1)
            assert (counts.batches, counts.tokens, counts.resumed) == (2, 9, 0)
            assert tier.in_flight == set()  # settled here: nothing for the parent to settle
            assert record.executes == [(0, 0, ("a", "b")), (0, 1, ("c",))]
            tier.fail(ts.ContextPoisoned("the parent ends it"))
    # It raised its fatal error after closing the runner and the device.
    assert raised.group_contains(ts.ContextPoisoned, match="^the parent ends it$")
    assert record.closes == 1
    assert reports.ended == ["a:finished", "b:finished", "c:finished"]


async def test_a_job_whose_requests_all_ended_while_queued_is_skipped(
    autojump_clock: Clock,
) -> None:
    send, receive = trio.open_memory_channel[Job](4)
    reports, counts, record = Reports(), TierCounts(), MockRecord()
    tier = Tier(port_for(receive, reports, counts, record=record))
    left, kept = job_of(reports, "gone"), job_of(reports, "kept")
    left.states[0].cancel()
    send.send_nowait(left)
    send.send_nowait(kept)
    with pytest.raises(ExceptionGroup):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tier.run)
            await RequestStream(kept.states[0]).collect()
            tier.fail(ts.ContextPoisoned("done"))
    assert record.executes == [(0, 0, ("kept",))]  # the skipped job got no seq
    assert left.seq is None and counts.batches == 1


async def test_a_job_handed_over_as_the_gate_closes_is_held_not_started(
    autojump_clock: Clock,
) -> None:
    send, receive = trio.open_memory_channel[Job](4)
    reports, counts, record = Reports(), TierCounts(), MockRecord()
    tier = Tier(port_for(receive, reports, counts, record=record))
    with pytest.raises(ExceptionGroup):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tier.run)
            await reports.is_ready.wait()
            await trio.sleep(1)  # the tier now waits in receive()
            job = job_of(reports, "late")
            send.send_nowait(job)  # handed straight to the waiting tier ...
            tier.dispatch_gate.close()  # ... which has not run yet when a rebuild begins
            await trio.sleep(5)
            assert tier.held is job and tier.in_flight == set()
            assert record.executes == [] and job.seq is None and job.states[0].attempts == 0
            tier.dispatch_gate.open()
            await RequestStream(job.states[0]).collect()
            assert tier.held is None and record.executes == [(0, 0, ("late",))]
            # Closed again and ended while holding one: the job stays held, for the parent
            # to put back at the head of its queue.
            again = job_of(reports, "again")
            send.send_nowait(again)
            tier.dispatch_gate.close()
            await trio.sleep(1)
            tier.fail(ts.ContextPoisoned("restart"))
    assert tier.held is again and again.states[0].open


async def test_a_resumed_batch_fails_alone_and_is_counted(autojump_clock: Clock) -> None:
    send, receive = trio.open_memory_channel[Job](4)
    reports, counts = Reports(), TierCounts()
    oom = ts.OutOfMemory("batch 0 is too big")
    faults = {"batch_faults": {0: (1, oom)}, "delay": 1.0}
    port = attrs.evolve(port_for(receive, reports, counts), factory=FaultRunner, runner_args=faults)
    assert port.decide(oom) is Directive.RESUME
    tier = Tier(port)
    failing, fine = job_of(reports, "x"), job_of(reports, "y")
    send.send_nowait(failing)
    send.send_nowait(fine)
    with pytest.raises(ExceptionGroup):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tier.run)
            with pytest.raises(ts.OutOfMemory):
                await RequestStream(failing.states[0]).collect()
            await RequestStream(fine.states[0]).collect()
            tier.fail(ts.ContextPoisoned("done"))
    assert counts.resumed == 1 and tier.in_flight == set()
    assert reports.ended == ["x:failed", "y:finished"]
