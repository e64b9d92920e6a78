"""supervised(): one child under a policy, driven on Trio (virtual time: autojump_clock)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_supervise as ts
from tests.support.helpers import Boom, Recorder, all_tasks, always
from trio_supervise import Backoff, Directive, EventKind, Policy, RestartIntensity, on, rules

POISON_POLICY = Policy(
    rules(
        on(ts.ContextPoisoned, Directive.RESTART),
        on(ts.OutOfMemory, Directive.RESUME),
        on(ts.Unrecoverable, Directive.STOP),
    ),
    RestartIntensity(3, 100.0),
    Backoff(1.0, 10.0),
)


def failing_every(seconds: float, exc: type[Exception] = ts.ContextPoisoned) -> Any:
    async def child(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(seconds)
        raise exc("boom")

    return child


async def test_restarts_happen_at_exact_virtual_times_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    run = ts.supervised(failing_every(2.0), POISON_POLICY, name="c", on_event=recorder)
    with trio.fail_after(1000), pytest.raises(ts.RestartIntensityExceeded) as info:
        await run()
    # Fails 2 s after each start; waits 1, 2, 4 s; the 4th restart within 100 s gives up.
    assert recorder.times(EventKind.STARTED) == [0.0, 3.0, 7.0, 13.0]
    assert recorder.times(EventKind.FAILED) == [2.0, 5.0, 9.0, 15.0]
    assert [e.delay for e in recorder.events if e.kind is EventKind.RESTARTING] == [1.0, 2.0, 4.0]
    assert recorder.times(EventKind.GAVE_UP) == [15.0]
    assert trio.current_time() == 15.0
    assert isinstance(info.value.__cause__, ts.ContextPoisoned)
    assert str(info.value).startswith("'c' gave up: ContextPoisoned('boom'): 4 restarts within")


async def test_await_run_raises_the_plain_escalated_exception(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = ts.supervised(failing_every(1.0, KeyError), POISON_POLICY, name="c")
    with pytest.raises(KeyError):
        await run()


async def test_stop_ends_cleanly_and_resume_is_not_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    attempts = 0

    async def child(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal attempts
        attempts += 1
        task_status.started()
        await trio.sleep(1)
        if attempts <= 10:
            raise ts.OutOfMemory("full", retry_after=0.5)
        raise ts.Unrecoverable("no device")

    run = ts.supervised(child, POISON_POLICY, name="c", on_event=recorder)
    await run()  # returns: STOP ends the child cleanly
    assert attempts == 11
    assert recorder.kinds().count("RESUMED") == 10
    assert recorder.kinds()[-2:] == ["FAILED", "STOPPED"]
    assert trio.current_time() == 11 * 1.0 + 10 * 0.5


async def test_start_passes_the_first_readiness_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    generations: list[int] = []
    second_ready = trio.Event()

    async def child(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        generations.append(len(generations) + 1)
        task_status.started(f"gen {len(generations)}")
        if len(generations) == 2:
            second_ready.set()
        await trio.sleep(5)
        raise ts.ContextPoisoned("x")

    async with trio.open_nursery() as nursery:
        value = await nursery.start(ts.supervised(child, POISON_POLICY, name="c"))
        assert value == "gen 1"
        assert trio.current_time() == 0.0
        await second_ready.wait()  # a second incarnation is ready; nothing is passed again
        assert generations == [1, 2]
        nursery.cancel_scope.cancel()


async def test_a_failure_before_ready_is_never_resumed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()

    async def child(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(1)
        raise ts.OutOfMemory("before ready")  # RESUME by the decider, but not ready

    run = ts.supervised(child, POISON_POLICY, name="c", on_event=recorder)
    with pytest.raises(ts.RestartIntensityExceeded):
        await run()
    assert "RESUMED" not in recorder.kinds()
    assert recorder.kinds().count("RESTARTING") == 3


async def test_readiness_timeout_fails_the_incarnation_and_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()

    async def slow(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(10)
        task_status.started()

    policy = Policy(rules(on(ts.ReadinessTimeout, Directive.RESTART)), RestartIntensity(1, 60))
    run = ts.supervised(slow, policy, name="slow", readiness_timeout=2.0, on_event=recorder)
    async with trio.open_nursery() as nursery:
        with pytest.raises(ts.RestartIntensityExceeded) as info:
            await nursery.start(run)
    assert isinstance(info.value.__cause__, ts.ReadinessTimeout)
    assert recorder.times(EventKind.FAILED) == [2.0, 4.0]
    assert trio.current_time() == 4.0


async def test_readiness_deadline_is_lifted_once_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def child(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(1)
        task_status.started()
        await trio.sleep(100)  # far past the readiness timeout: fine once ready

    run = ts.supervised(
        child,
        always(Directive.STOP),
        name="c",
        restart=ts.RestartType.TRANSIENT,
        readiness_timeout=2.0,
    )
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
    assert trio.current_time() == 101.0


@pytest.mark.parametrize("restart", [ts.RestartType.TRANSIENT, ts.RestartType.TEMPORARY])
async def test_stop_before_ready_raises_child_stopped_from_start(
    restart: ts.RestartType, autojump_clock: trio.testing.MockClock
) -> None:
    async def child(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(1)
        raise ts.Unrecoverable("no driver")

    run = ts.supervised(child, POISON_POLICY, name="gpu", restart=restart)
    async with trio.open_nursery() as nursery:
        with pytest.raises(ts.ChildStopped, match=r"^'gpu' stopped before it was ready: ") as info:
            await nursery.start(run)
    assert isinstance(info.value.__cause__, ts.Unrecoverable)
    # Awaited directly, the same child just stops.
    await run()


async def test_restart_types(autojump_clock: trio.testing.MockClock) -> None:
    calls = {"n": 0}

    async def returns(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        calls["n"] += 1
        task_status.started()
        await trio.sleep(1)

    # PERMANENT: a normal return is a counted restart, so it gives up.
    with pytest.raises(ts.RestartIntensityExceeded) as info:
        await ts.supervised(returns, always(Directive.RESTART, 2, 10), name="p")()
    assert info.value.__cause__ is None
    assert calls["n"] == 3
    # TRANSIENT: a normal return ends it; a failure restarts it.
    calls["n"] = 0
    await ts.supervised(returns, POISON_POLICY, name="t", restart=ts.RestartType.TRANSIENT)()
    assert calls["n"] == 1
    # TEMPORARY: never restarted; a failure is reported, escalated only if the decider says so.
    recorder = Recorder()
    temp = ts.supervised(
        failing_every(1), POISON_POLICY, name="x", restart=ts.RestartType.TEMPORARY
    )
    await temp()
    temp = ts.supervised(
        failing_every(1, KeyError),
        POISON_POLICY,
        name="x",
        restart=ts.RestartType.TEMPORARY,
        on_event=recorder,
    )
    with pytest.raises(KeyError):
        await temp()
    assert recorder.kinds() == ["STARTED", "READY", "FAILED", "ESCALATED"]


async def test_nested_supervised_inner_give_up_is_an_outer_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    inner = ts.supervised(failing_every(1), POISON_POLICY, name="inner", on_event=recorder)
    outer_policy = Policy(
        rules(on(ts.RestartIntensityExceeded, Directive.RESTART)), RestartIntensity(1, 1000)
    )
    outer = ts.supervised(inner, outer_policy, name="outer", on_event=recorder)
    with trio.fail_after(1000), pytest.raises(ts.RestartIntensityExceeded) as info:
        await outer()
    assert str(info.value).startswith("'outer' gave up: RestartIntensityExceeded(")
    assert isinstance(info.value.__cause__, ts.RestartIntensityExceeded)
    assert recorder.kinds("outer") == [
        "STARTED",
        "READY",
        "FAILED",
        "RESTARTING",
        "STARTED",
        "READY",
        "FAILED",
        "GAVE_UP",
    ]
    # The inner one ran its full intensity twice: 4 incarnations per outer incarnation.
    assert recorder.kinds("inner").count("STARTED") == 8


async def test_cancellation_propagates_is_not_counted_and_leaves_no_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    before = len(all_tasks())

    async def forever(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            task_status.started()
            await trio.sleep_forever()

    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(ts.supervised(forever, POISON_POLICY, name="c", on_event=recorder))
            assert len(all_tasks()) == before + 2
    assert recorder.kinds() == ["STARTED", "READY"]
    assert len(all_tasks()) == before


async def test_keyboard_interrupt_propagates_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def child(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await ts.supervised(child, always(Directive.RESTART), name="c")()


async def test_each_run_starts_from_a_fresh_state(autojump_clock: trio.testing.MockClock) -> None:
    run = ts.supervised(failing_every(1), POISON_POLICY, name="c")
    for _ in range(2):
        start = trio.current_time()
        with pytest.raises(ts.RestartIntensityExceeded):
            await run()
        assert trio.current_time() - start == 4 * 1.0 + 1 + 2 + 4


def test_supervised_refuses_bad_arguments() -> None:
    child = failing_every(1)
    with pytest.raises(TypeError, match=r"^child must be an async function taking task_status"):
        ts.supervised(3, POISON_POLICY, name="c")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^policy must be a Policy, got 'x'$"):
        ts.supervised(child, "x", name="c")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^name must be a non-empty str, got ''$"):
        ts.supervised(child, POISON_POLICY, name="")
    with pytest.raises(TypeError, match=r"^restart must be a RestartType, got 'permanent'$"):
        ts.supervised(child, POISON_POLICY, name="c", restart="permanent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^readiness_timeout must be a finite number > 0 or None"):
        ts.supervised(child, POISON_POLICY, name="c", readiness_timeout=0)
    with pytest.raises(TypeError, match=r"^on_event must be a callable or a sequence of callables"):
        ts.supervised(child, POISON_POLICY, name="c", on_event=[3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"^seed must be an int, got 'a'$"):
        ts.supervised(child, POISON_POLICY, name="c", seed="a")  # type: ignore[arg-type]


# --- conformance with the pure core ----------------------------------------------------------

FAILURES: dict[str, type[Exception] | None] = {
    "poison": ts.ContextPoisoned,
    "oom": ts.OutOfMemory,
    "stop": ts.Unrecoverable,
    "other": Boom,
    "return": None,
}
CONFORMANCE_POLICY = Policy(
    rules(
        on(ts.ContextPoisoned, Directive.RESTART),
        on(ts.OutOfMemory, Directive.RESUME),
        on(ts.Unrecoverable, Directive.STOP),
        on(Boom, Directive.ESCALATE),
    ),
    RestartIntensity(3, 10.0),
    Backoff(0.25, 4.0, multiplier=3.0, jitter=0.5, reset_after=6.0),
)

incarnations = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5, 6.0, 10.0]),  # runs this long, then exits
        st.sampled_from(sorted(FAILURES)),  # how it exits
        st.booleans(),  # whether it reported ready first
    ),
    min_size=1,
    max_size=12,
)


def predict(
    schedule: list[tuple[float, str, bool]], restart: ts.RestartType, seed: int
) -> tuple[list[tuple[float, str]], str]:
    """What the pure policy says the driver must do for this schedule."""
    policy = CONFORMANCE_POLICY
    state = policy.initial_state(seed)
    now, observed = 0.0, []
    for duration, how, ready in schedule:
        state = policy.on_started(state, now)
        observed.append((now, "STARTED"))
        now = now + duration
        cls = FAILURES[how]
        error = None if cls is None else cls("x")
        decision, state = policy.on_exit(state, error, now, restart=restart, ready=ready)
        directive = decision.directive
        if decision.gave_up:
            return observed, "gave up"
        if directive is Directive.ESCALATE:
            return observed, "escalated"
        if directive is Directive.STOP:
            return observed, "stopped"
        now = now + decision.delay
    return observed, "running"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    schedule=incarnations,
    restart=st.sampled_from(list(ts.RestartType)),
    seed=st.integers(0, 2**32),
)
def test_the_driver_does_what_the_pure_policy_predicts(
    schedule: list[tuple[float, str, bool]], restart: ts.RestartType, seed: int
) -> None:
    expected, expected_outcome = predict(schedule, restart, seed)
    recorder = Recorder()
    schedule_done = trio.CancelScope()

    async def child(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        generation = len(recorder.times(EventKind.STARTED))
        if generation > len(schedule):
            schedule_done.cancel()  # the schedule ran out: it stays up, and the run ends here
            await trio.sleep_forever()
        duration, how, ready = schedule[generation - 1]
        if ready:
            task_status.started()
        await trio.sleep(duration)
        cls = FAILURES[how]
        if cls is not None:
            raise cls("x")

    async def main() -> str:
        run = ts.supervised(
            child, CONFORMANCE_POLICY, name="c", restart=restart, seed=seed, on_event=recorder
        )
        with trio.fail_after(1e6), schedule_done:
            try:
                await run()
            except ts.RestartIntensityExceeded:
                return "gave up"
            except Boom:
                return "escalated"
            return "stopped"
        return "running"

    outcome = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    observed = [(e.time, e.kind.name) for e in recorder.events if e.kind is EventKind.STARTED]
    assert observed[: len(expected)] == expected
    if expected_outcome == "running":
        assert len(observed) == len(expected) + 1  # the one that outlives the schedule
    else:
        assert len(observed) == len(expected)
    assert outcome == expected_outcome
