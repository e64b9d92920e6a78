"""The worker's commands under autojump_clock: rebuild, restart, stop, and where it stands."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_supervise as ts
from tests.support.helpers import FaultRunner, Recorder
from tests.worker.common import expected_text, outcome, req, worker_args
from trio_supervise import WorkerState
from trio_supervise.runners.mock import MockRecord, MockRunner
from trio_supervise.worker._options import check_options

Clock = trio.testing.MockClock


async def test_rebuild_never_overlaps_itself_or_a_new_batch(autojump_clock: Clock) -> None:
    record = MockRecord()
    args = worker_args(record, rebuild_time=3.0)
    async with ts.open_worker(FaultRunner, **args) as worker:
        streaming = worker.generate(req("streaming", 4))
        await trio.sleep(0.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.rebuild, ts.RebuildCause.MANUAL)
            nursery.start_soon(worker.rebuild, ts.RebuildCause.CONFIG_CHANGE)
            await trio.testing.wait_all_tasks_blocked()
            assert worker.state.value is WorkerState.REBUILDING
            during = worker.generate(req("during", 2))  # dispatched, must wait for the rebuilds
        assert trio.current_time() == 6.5
        assert {cause for _, cause in record.rebuilds} == {
            ts.RebuildCause.MANUAL,
            ts.RebuildCause.CONFIG_CHANGE,
        }
        assert (await outcome(streaming))[0] == "ok"  # went on streaming meanwhile
        assert (await outcome(during))[0] == "ok"
        assert worker.state.value is WorkerState.READY and worker.generation == 1


async def test_a_failed_rebuild_is_decided_by_the_policy(autojump_clock: Clock) -> None:
    record = MockRecord()
    args = worker_args(
        record,
        rebuild_faults={0: ts.OutOfMemory("no room to rebuild"), 1: ts.ContextPoisoned("gone")},
    )
    async with ts.open_worker(FaultRunner, **args) as worker:
        with pytest.raises(ts.OutOfMemory):
            await worker.rebuild()
        assert worker.generation == 1  # RESUME: the same runner goes on
        with pytest.raises(ts.ContextPoisoned):
            await worker.rebuild()
        await worker.state.wait_value(WorkerState.READY)
        assert worker.generation == 2  # RESTART: a new runner


async def test_restart_is_graceful_and_not_counted(autojump_clock: Clock) -> None:
    record = MockRecord()
    async with ts.open_worker(FaultRunner, **worker_args(record)) as worker:
        stream = worker.generate(req("a", 3))
        for _ in range(5):  # more than the 3 restarts a minute the policy allows
            await worker.restart()
        assert worker.generation == 6
        assert await outcome(stream) == ("ok", expected_text(req("a", 3)))
        stats = worker.statistics()
    # Resumed, not counted: by the class of their cause, the latest one named.
    assert stats.resume_causes == {"RestartRequested": 5} and stats.restart_causes == {}
    assert stats.last_restart_cause == "RestartRequested"


def test_worker_refuses_bad_arguments() -> None:
    with pytest.raises(ts.ConfigError, match=r"^runner factory must be a callable or an import"):
        ts.Worker("nocolon")
    with pytest.raises(ts.ConfigError, match=r"^cannot import runner module 'no_such_mod'"):
        ts.Worker("no_such_mod:f")
    with pytest.raises(ts.ConfigError, match=r"has no attribute 'Nope'$"):
        ts.Worker("trio_supervise.runners.mock:Nope")
    with pytest.raises(ts.ConfigError, match=r"^max_pending must be an int >= 1, got 0$"):
        ts.Worker(MockRunner, max_pending=0)
    with pytest.raises(
        ts.ConfigError, match=r"^device must be 'auto', 'cpu' or 'cuda:N', got 'gpu'"
    ):
        ts.Worker(MockRunner, device="gpu")
    with pytest.raises(
        ts.ConfigError, match=r"^hang_timeout must be a number > 0 or None, got -1$"
    ):
        ts.Worker(MockRunner, hang_timeout=-1)
    with pytest.raises(ts.ConfigError, match=r"^drain_timeout must be a number > 0, got True$"):
        ts.Worker(MockRunner, drain_timeout=True)
    with pytest.raises(ts.ConfigError, match=r"^hang_timeout must be finite, got inf$"):
        ts.Worker(MockRunner, hang_timeout=float("inf"))
    with pytest.raises(
        TypeError,
        match=r"^Worker\(\) got an unexpected keyword argument 'max_pendng'; it takes .*"
        r"max_pending, .*on_event, ",
    ):
        ts.Worker(MockRunner, max_pendng=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^WorkerOptions.check\(\) got an unexpected keyword"):
        ts.WorkerOptions.check(MockRunner, on_event=print)  # type: ignore[call-arg]
    worker = ts.Worker("trio_supervise.runners.mock:MockRunner", device="cpu")
    assert worker.name == "MockRunner"
    with pytest.raises(ts.BadRequest, match=r"^submit takes a Batch, got 3$"):
        worker.submit(3)  # type: ignore[arg-type]


async def test_states_after_a_normal_exit_and_after_cancellation(autojump_clock: Clock) -> None:
    async with ts.open_worker(MockRunner, device="cpu") as worker:
        pass
    with pytest.raises(ts.WorkerStopped, match=r"^worker 'MockRunner' is stopped$"):
        worker.generate(req("late"))
    cancelled = ts.Worker(MockRunner, device="cpu")
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(cancelled.run)
            await trio.sleep_forever()
    assert cancelled.state.value is WorkerState.STOPPED
    with pytest.raises(ts.WorkerStopped, match=r"^worker 'MockRunner' is cancelled$"):
        cancelled.generate(req("late"))


async def test_the_worker_moves_only_along_its_transition_table(
    autojump_clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[WorkerState, WorkerState]] = []
    move = ts.Worker._move

    def recording(worker: ts.Worker, new: WorkerState) -> None:
        old = worker.state.value
        move(worker, new)  # raises on a change the table does not allow
        seen.append((old, new))

    monkeypatch.setattr(ts.Worker, "_move", recording)
    faults = {"batch_faults": {0: (0, ts.ContextPoisoned("boom"))}, "delay": 1.0}
    async with ts.open_worker(FaultRunner, runner_args=faults, device="cpu") as worker:
        with pytest.raises(ts.ContextPoisoned):  # batch 0 poisons the tier: it restarts
            await worker.generate(req("a", idempotent=False)).collect()
        await worker.state.wait_value(WorkerState.READY)
        await worker.rebuild()
        await worker.restart()
    S = WorkerState
    assert seen == [
        (S.STARTING, S.STARTING), (S.STARTING, S.READY),  # the first tier
        (S.READY, S.STARTING), (S.STARTING, S.READY),  # the poisoned tier restarts
        (S.READY, S.REBUILDING), (S.REBUILDING, S.READY),  # rebuild()
        (S.READY, S.STARTING), (S.STARTING, S.READY),  # restart()
        (S.READY, S.STOPPED),  # the end of the block
    ]  # fmt: skip
    assert set(seen) <= {(old, new) for old, new, _ in ts.WORKER_TRANSITIONS}
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="no transition STOPPED -> READY"):
        worker._move(WorkerState.READY)


async def test_a_job_the_tier_got_as_its_gate_closed_is_still_queued(autojump_clock: Clock) -> None:
    record = MockRecord()
    async with ts.open_worker(MockRunner, **worker_args(record)) as worker:
        await trio.sleep(1)  # the tier waits for a job
        tier = worker._tier
        assert tier is not None
        stream = worker.generate(req("late", idempotent=False))  # handed to the waiting tier
        tier.dispatch_gate.close()  # as a restart begins, before the tier ran
        await trio.sleep(1)
        stats = worker.statistics()
        assert (stats.pending, stats.in_flight, record.executes) == (1, 0, [])
        tier.fail(ts.ContextPoisoned("illegal address"))
        # It never ran, so it is no casualty of the restart: not idempotent, it still runs.
        assert await outcome(stream) == ("ok", expected_text(req("late")))
        assert worker.generation == 2 and record.executes == [(1, 0, ("late",))]
        assert worker.statistics().requeued == 0


async def test_stop_ends_every_request_and_then_run(autojump_clock: Clock) -> None:
    worker = ts.Worker(MockRunner, runner_args={"delay": 1.0}, device="cpu")
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        streaming = worker.generate(req("a", 10))
        queued = worker.generate(req("b"))
        await trio.sleep(1.5)
        worker.stop("stopped by its operator")
        assert worker.state.value is WorkerState.STOPPED
    # run() returned by itself: the nursery was never cancelled.
    assert trio.current_time() == 1.5
    for rid, stream in (("a", streaming), ("b", queued)):
        _kind, error = await outcome(stream)
        assert isinstance(error, ts.WorkerStopped)
        assert str(error) == (
            f"worker 'MockRunner' stopped by its operator before request {rid!r} finished"
        )
    with pytest.raises(ts.WorkerStopped, match=r"^worker 'MockRunner' is stopped by its operator$"):
        worker.generate(req("late"))
    worker.stop()  # again: nothing changes
    assert worker.state.value is WorkerState.STOPPED
    with pytest.raises(ts.BadRequest, match=r"^reason must be a str, got 3$"):
        worker.stop(3)  # type: ignore[arg-type]


async def test_a_worker_stopped_before_it_ran_does_not_run(autojump_clock: Clock) -> None:
    worker = ts.Worker(MockRunner, device="cpu")
    worker.stop()
    with pytest.raises(ts.WorkerStopped, match=r"^worker 'MockRunner' is stopped$"):
        await worker.run()
    assert worker.generation == 0


async def test_a_worker_stopped_while_it_starts_says_so_to_who_waits(autojump_clock: Clock) -> None:
    worker = ts.Worker(MockRunner, runner_args={"load_delay": 10.0}, device="cpu")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)  # nobody waits: run simply returns once stopped
        await trio.sleep(1)
        worker.stop("stopped by its owner")
    assert worker.state.value is WorkerState.STOPPED

    worker = ts.Worker(MockRunner, runner_args={"load_delay": 10.0}, device="cpu")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_after, worker, 1.0)
        with pytest.raises(
            ts.WorkerStopped,
            match=r"^worker 'MockRunner' stopped by its owner before it was ready$",
        ):
            await nursery.start(worker.run)
    assert worker.state.value is WorkerState.STOPPED and worker.deterministic is None


async def _stop_after(worker: ts.Worker, seconds: float) -> None:
    await trio.sleep(seconds)
    worker.stop("stopped by its owner")


async def test_placement_says_where_the_runner_runs(autojump_clock: Clock) -> None:
    worker = ts.Worker(MockRunner, device="cpu")
    assert worker.placement() == {}  # no tier yet
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        assert worker.placement() == {}  # in this process
        assert worker.breaker_state is None  # a MockRunner has no circuit breaker
        nursery.cancel_scope.cancel()


async def test_a_worker_from_checked_options(autojump_clock: Clock) -> None:
    options = check_options(
        MockRunner, runner_args={"delay": 1.0}, device="cpu", policy=None, max_pending=8,
        max_attempts=3, hang_timeout=None, readiness_timeout=None, drain_timeout=5.0,
        name="from-options", isolation="inline", heartbeat_timeout=10.0, standby=False,
        standby_load=False, ray_options=None, ray_address=None,
    )  # fmt: skip
    recorder = Recorder()
    worker = ts.Worker.from_options(options, on_event=recorder)
    assert worker.options is options
    assert (worker.name, worker.isolation, worker.max_attempts) == ("from-options", "inline", 3)
    assert (worker.hang_timeout, worker.readiness_timeout, worker.drain_timeout) == (None, None, 5)
    with pytest.raises(AttributeError):
        worker.name = "renamed"  # type: ignore[misc]
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        assert await outcome(worker.generate(req("a"))) == ("ok", expected_text(req("a")))
        nursery.cancel_scope.cancel()
    assert recorder.kinds() == ["STARTED", "READY"]
    assert {event.supervisor for event in recorder.events} == {"from-options"}
    # The keyword arguments go through the same check, to the same options.
    same = ts.Worker(MockRunner, runner_args={"delay": 1.0}, device="cpu", max_pending=8,
                     max_attempts=3, drain_timeout=5.0, name="from-options")  # fmt: skip
    assert same.options == options
    # And so does WorkerOptions.check, the public way to one value, with the same defaults.
    assert ts.WorkerOptions.check(MockRunner, runner_args={"delay": 1.0}, device="cpu",
                                  max_pending=8, max_attempts=3, drain_timeout=5.0,
                                  name="from-options") == options  # fmt: skip
    with pytest.raises(ts.ConfigError, match=r"^max_pending must be an int >= 1, got 0$"):
        ts.WorkerOptions.check(MockRunner, max_pending=0)
    with pytest.raises(ts.ConfigError, match=r"^options must be a WorkerOptions, got 'inline'$"):
        ts.Worker.from_options("inline")  # type: ignore[arg-type]
