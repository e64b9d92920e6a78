"""Supervisor: strategies, restart types, ordered shutdown, dynamic children, events."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_supervise as ts
from tests.support.helpers import Boom, Recorder, all_tasks
from trio_supervise import (
    Backoff,
    ChildSpec,
    ChildStatus,
    Directive,
    EventKind,
    Policy,
    RestartIntensity,
    RestartType,
    Strategy,
    Supervisor,
    on,
    rules,
)

Clock = trio.testing.MockClock

POLICY = Policy(
    rules(
        on(ts.ContextPoisoned, Directive.RESTART),
        on(ts.OutOfMemory, Directive.RESUME),
        on(ts.Unrecoverable, Directive.STOP),
    ),
    RestartIntensity(10, 100.0),
    Backoff.none(),
)


class Script:
    """Children that log what happens to them, with scripted failures."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str, str]] = []

    def note(self, name: str, what: str) -> None:
        self.log.append((trio.current_time(), name, what))

    def child(
        self,
        name: str,
        *,
        ready_after: float = 0.0,
        fail_after: dict[int, tuple[float, type[Exception] | None]] | None = None,
        cleanup: float = 0.0,
    ) -> Any:
        """A child ready after ``ready_after``; in incarnation n it fails as ``fail_after[n]``
        says (seconds, exception class or None to return); it takes ``cleanup`` seconds to stop.
        """
        incarnation = 0

        async def run(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal incarnation
            incarnation += 1
            self.note(name, "start")
            try:
                await trio.sleep(ready_after)
                task_status.started(f"{name}{incarnation}")
                self.note(name, "ready")
                seconds, exc = (fail_after or {}).get(incarnation, (None, None))
                if seconds is None:
                    await trio.sleep_forever()
                await trio.sleep(seconds)
                if exc is not None:
                    self.note(name, "fail")
                    raise exc(f"{name} failed")
                self.note(name, "return")
            except trio.Cancelled:
                with trio.CancelScope(shield=True):
                    await trio.sleep(cleanup)
                self.note(name, "stopped")
                raise

        return run

    def of(self, what: str) -> list[tuple[float, str]]:
        return [(t, name) for t, name, w in self.log if w == what]


def spec(script: Script, name: str, policy: Policy = POLICY, **kwargs: Any) -> ChildSpec:
    restart = kwargs.pop("restart", RestartType.PERMANENT)
    shutdown = kwargs.pop("shutdown", 5.0)
    return ChildSpec(name, script.child(name, **kwargs), policy, restart, shutdown)


async def until(events: ts.EventSubscription, *wanted: tuple[str, EventKind, int]) -> None:
    """Read ``events`` until every ``(child, kind, generation)`` in ``wanted`` has happened."""
    missing = set(wanted)
    async for event in events:
        missing.discard((event.child, event.kind, event.generation))
        if not missing:
            return


async def test_children_start_in_order_each_ready_before_the_next(autojump_clock: Clock) -> None:
    script = Script()
    supervisor = Supervisor(
        "app",
        children=[
            spec(script, "a", ready_after=2),
            spec(script, "b", ready_after=1),
            spec(script, "c", ready_after=3),
        ],
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(supervisor.run)
        assert trio.current_time() == 6.0
        assert script.of("start") == [(0.0, "a"), (2.0, "b"), (3.0, "c")]
        assert [(c.name, c.status, c.value) for c in handle.which_children()] == [
            ("a", ChildStatus.RUNNING, "a1"),
            ("b", ChildStatus.RUNNING, "b1"),
            ("c", ChildStatus.RUNNING, "c1"),
        ]
        nursery.cancel_scope.cancel()


async def test_one_for_one_restarts_only_the_failed_child_with_backoff(
    autojump_clock: Clock,
) -> None:
    script = Script()
    recorder = Recorder()
    policy = attrs_evolve(POLICY, backoff=Backoff(1.0, 8.0))
    supervisor = Supervisor(
        "app",
        Strategy.ONE_FOR_ONE,
        RestartIntensity(10, 100),
        [
            spec(script, "a"),
            spec(
                script,
                "b",
                policy,
                fail_after={1: (2, ts.ContextPoisoned)} | {2: (2, ts.ContextPoisoned)},
            ),
            spec(script, "c"),
        ],
        on_event=recorder,
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(supervisor.run)
        await until(handle.subscribe(), ("b", EventKind.READY, 3))
        # b fails at 2, waits 1 s; fails again at 5, waits 2 s; then stays up.
        assert script.of("start") == [(0.0, "a"), (0.0, "b"), (0.0, "c"), (3.0, "b"), (7.0, "b")]
        assert script.of("stopped") == []
        assert handle.statistics().restarts == 2
        assert [c.generation for c in handle.which_children()] == [1, 3, 1]
        assert [e.delay for e in recorder.events if e.kind is EventKind.RESTARTING] == [1.0, 2.0]
        nursery.cancel_scope.cancel()


def attrs_evolve(policy: Policy, **changes: Any) -> Policy:
    import attrs

    return attrs.evolve(policy, **changes)


@pytest.mark.parametrize(
    ("strategy", "stopped", "restarted"),
    [
        (Strategy.ONE_FOR_ALL, ["d", "c", "a"], ["a", "b", "c", "d"]),
        (Strategy.REST_FOR_ONE, ["d", "c"], ["b", "c", "d"]),
    ],
)
async def test_group_strategies_stop_in_reverse_then_restart_in_order(
    strategy: Strategy, stopped: list[str], restarted: list[str], autojump_clock: Clock
) -> None:
    script = Script()
    recorder = Recorder()
    supervisor = Supervisor(
        "app",
        strategy,
        RestartIntensity(5, 100),
        [
            spec(script, "a", cleanup=1),
            spec(script, "b", fail_after={1: (10, ts.ContextPoisoned)}, ready_after=1),
            spec(script, "c", cleanup=1),
            spec(script, "d", cleanup=1, ready_after=1),
        ],
        on_event=recorder,
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(supervisor.run)
        assert trio.current_time() == 2.0
        await until(handle.subscribe(), ("d", EventKind.READY, 2))
        # b fails at 11; siblings stop one at a time, 1 s each, in reverse order.
        assert script.of("stopped") == [(12.0 + i, name) for i, name in enumerate(stopped)]
        again = [(t, n) for t, n in script.of("start") if t >= 11]
        assert [n for _, n in again] == restarted
        # Each waits for the previous one to be ready (b and d take 1 s).
        assert again[0][0] == 11.0 + len(stopped)
        assert handle.statistics().restarts == 1  # one per triggering failure
        assert [e.child for e in recorder.events if e.kind is EventKind.STOPPED] == stopped
        nursery.cancel_scope.cancel()


async def test_temporary_siblings_are_not_restarted_by_a_group_restart(
    autojump_clock: Clock,
) -> None:
    script = Script()
    supervisor = Supervisor(
        "app",
        Strategy.ONE_FOR_ALL,
        RestartIntensity(5, 100),
        [
            spec(script, "temp", restart=RestartType.TEMPORARY),
            spec(script, "trans", restart=RestartType.TRANSIENT),
            spec(script, "bad", fail_after={1: (1, ts.ContextPoisoned)}),
        ],
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(supervisor.run)
        await until(handle.subscribe(), ("bad", EventKind.READY, 2))
        assert [c.name for c in handle.which_children()] == ["trans", "bad"]
        assert [n for t, n in script.of("start") if t > 0] == ["trans", "bad"]
        nursery.cancel_scope.cancel()


async def test_restart_types_under_a_supervisor(autojump_clock: Clock) -> None:
    script = Script()
    supervisor = Supervisor(
        "app",
        intensity=RestartIntensity(5, 100),
        children=[
            spec(script, "perm", fail_after={1: (1, None)}),
            spec(script, "trans", fail_after={1: (1, None)}, restart=RestartType.TRANSIENT),
            spec(
                script,
                "trans2",
                fail_after={1: (1, ts.ContextPoisoned)},
                restart=RestartType.TRANSIENT,
            ),
            spec(
                script,
                "temp",
                fail_after={1: (1, ts.ContextPoisoned)},
                restart=RestartType.TEMPORARY,
            ),
        ],
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(supervisor.run)
        await until(
            handle.subscribe(),
            ("perm", EventKind.READY, 2),
            ("trans", EventKind.STOPPED, 1),
            ("trans2", EventKind.READY, 2),
            ("temp", EventKind.STOPPED, 1),
        )
        children = {c.name: (c.status, c.generation) for c in handle.which_children()}
        assert children == {
            "perm": (ChildStatus.RUNNING, 2),  # a normal return restarts a permanent child
            "trans": (ChildStatus.STOPPED, 1),  # ...and ends a transient one
            "trans2": (ChildStatus.RUNNING, 2),  # a transient child's failure restarts it
        }  # the temporary child failed and is gone
        assert handle.statistics().restarts == 2
        nursery.cancel_scope.cancel()


async def test_supervisor_intensity_counts_all_children(autojump_clock: Clock) -> None:
    script = Script()
    recorder = Recorder()
    supervisor = Supervisor(
        "app",
        Strategy.ONE_FOR_ONE,
        RestartIntensity(2, 10.0),
        [
            spec(
                script,
                "a",
                fail_after={1: (1, ts.ContextPoisoned), 2: (1, ts.ContextPoisoned)},
                cleanup=1,
            ),
            spec(script, "b", fail_after={1: (2.5, ts.ContextPoisoned)}),
        ],
        on_event=recorder,
    )
    with trio.fail_after(100), pytest.raises(ts.RestartIntensityExceeded) as info:
        await supervisor.run()
    # a fails at 1 and 2, b at 2.5: the third restart within 10 s gives up; a is stopped (1 s).
    assert trio.current_time() == 3.5
    assert str(info.value) == (
        "supervisor 'app' gave up: 3 restarts of its children within 10s exceed max_restarts=2"
    )
    assert isinstance(info.value.__cause__, ts.ContextPoisoned)
    assert str(info.value.__cause__) == "b failed"
    assert recorder.kinds()[-3:] == ["FAILED", "GAVE_UP", "STOPPED"]


async def test_a_childs_own_intensity_also_gives_up_the_supervisor(autojump_clock: Clock) -> None:
    script = Script()
    strict = attrs_evolve(POLICY, intensity=RestartIntensity(0, 10))
    supervisor = Supervisor(
        "app",
        intensity=RestartIntensity(100, 10),
        children=[spec(script, "a", strict, fail_after={1: (1, ts.ContextPoisoned)})],
    )
    with trio.fail_after(100), pytest.raises(ts.RestartIntensityExceeded) as info:
        await supervisor.run()
    assert "1 restarts within 10s exceed max_restarts=0" in str(info.value)


async def test_escalate_stops_the_children_and_raises_the_plain_error(
    autojump_clock: Clock,
) -> None:
    script = Script()
    recorder = Recorder()
    supervisor = Supervisor(
        "app",
        children=[spec(script, "a", cleanup=1), spec(script, "b", fail_after={1: (3, Boom)})],
        on_event=recorder,
    )
    with trio.fail_after(100), pytest.raises(Boom, match=r"^b failed$"):
        await supervisor.run()
    assert script.of("stopped") == [(4.0, "a")]
    assert recorder.kinds()[-3:] == ["FAILED", "ESCALATED", "STOPPED"]


async def test_start_failures_are_counted_and_retried_before_the_next_child(
    autojump_clock: Clock,
) -> None:
    attempts = 0
    script = Script()

    async def flaky_start(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal attempts
        attempts += 1
        await trio.sleep(1)
        if attempts < 3:
            raise ts.OutOfMemory("not yet")  # RESUME, but before ready: a counted RESTART
        task_status.started("finally")
        await trio.sleep_forever()

    policy = attrs_evolve(POLICY, backoff=Backoff(0.5, 10))
    supervisor = Supervisor(
        "app",
        intensity=RestartIntensity(5, 100),
        children=[ChildSpec("flaky", flaky_start, policy), spec(script, "next")],
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(supervisor.run)
        # 1 s, fail, 0.5 s, 1 s, fail, 1 s, 1 s: ready at 4.5; only then does "next" start.
        assert trio.current_time() == 4.5
        assert script.of("start") == [(4.5, "next")]
        assert handle.statistics().restarts == 2
        assert handle.which_children()[0].value == "finally"
        nursery.cancel_scope.cancel()


async def test_readiness_timeout_of_a_child(autojump_clock: Clock) -> None:
    script = Script()
    policy = Policy(rules(on(ts.ReadinessTimeout, Directive.RESTART)), RestartIntensity(2, 100))
    child = ChildSpec("slow", script.child("slow", ready_after=10), policy, readiness_timeout=3)
    supervisor = Supervisor("app", children=[child], intensity=RestartIntensity(9, 9))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(100), pytest.raises(ts.RestartIntensityExceeded) as info:
            await nursery.start(supervisor.run)
    assert isinstance(info.value.__cause__, ts.ReadinessTimeout)
    assert trio.current_time() == 9.0


async def test_nested_supervisors_escalate(autojump_clock: Clock) -> None:
    script = Script()
    recorder = Recorder()
    inner = Supervisor(
        "inner",
        intensity=RestartIntensity(1, 100),
        children=[
            spec(script, "worker", fail_after={n: (1, ts.ContextPoisoned) for n in range(1, 9)})
        ],
        on_event=recorder,
    )
    outer_policy = Policy(
        rules(on(ts.RestartIntensityExceeded, Directive.RESTART)), RestartIntensity(1, 100)
    )
    outer = Supervisor(
        "outer",
        intensity=RestartIntensity(5, 100),
        children=[ChildSpec("inner", inner.run, outer_policy)],
        on_event=recorder,
    )
    gave_up = pytest.RaisesExc(
        ts.RestartIntensityExceeded,
        match=r"^supervisor 'outer' gave up: RestartIntensityExceeded\(",
    )
    with trio.fail_after(100), pytest.RaisesGroup(gave_up):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(outer.run)
            assert handle.which_children()[0].value.supervisor is inner
    assert [e.supervisor for e in recorder.events if e.kind is EventKind.GAVE_UP] == [
        "inner",
        "inner",
        "outer",
    ]
    # Each inner run: the worker fails at +1 (restart), at +2 (gives up).
    assert script.of("start") == [
        (0.0, "worker"),
        (1.0, "worker"),
        (2.0, "worker"),
        (3.0, "worker"),
    ]


async def test_outside_cancellation_stops_children_in_reverse_order(autojump_clock: Clock) -> None:
    # Cleanup times grow with start order, so a concurrent shutdown would finish a, b, c.
    script = Script()
    recorder = Recorder()
    supervisor = Supervisor(
        "app",
        children=[
            spec(script, "a", cleanup=1),
            spec(script, "b", cleanup=2),
            spec(script, "c", cleanup=3),
        ],
        on_event=recorder,
    )
    before = len(all_tasks())
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(supervisor.run)
            assert len(all_tasks()) == before + 4  # the supervisor and three children
    assert script.of("stopped") == [(13.0, "c"), (15.0, "b"), (16.0, "a")]
    assert len(all_tasks()) == before
    assert handle.statistics().restarts == 0
    assert "FAILED" not in recorder.kinds()
    assert [e.child for e in recorder.events if e.kind is EventKind.STOPPED] == ["c", "b", "a"]


async def test_a_child_past_its_shutdown_timeout_is_reported_then_awaited(
    autojump_clock: Clock,
) -> None:
    script = Script()
    recorder = Recorder()
    supervisor = Supervisor(
        "app",
        children=[
            spec(script, "a", cleanup=1),
            spec(script, "stubborn", cleanup=30, shutdown=5),
            spec(script, "c", cleanup=1),
        ],
        on_event=recorder,
    )
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
    # c stops at 11; stubborn is given 5 s (to 16), reported; a is still stopped (17);
    # then the supervisor waits for stubborn (40).
    assert recorder.times(EventKind.SHUTDOWN_TIMEOUT) == [16.0]
    assert script.of("stopped") == [(11.0, "c"), (17.0, "a"), (41.0, "stubborn")]
    assert trio.current_time() == 41.0


async def test_start_and_terminate_children(autojump_clock: Clock) -> None:
    script = Script()
    supervisor = Supervisor("app", children=[spec(script, "a")], max_children=2)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(supervisor.run)
        value = await handle.start_child(spec(script, "b", ready_after=2, cleanup=1))
        assert value == "b1"
        assert trio.current_time() == 2.0
        with pytest.raises(ValueError, match=r"^a child named 'b' exists already$"):
            await handle.start_child(spec(script, "b"))
        with pytest.raises(ts.TooManyChildren, match=r"^supervisor 'app' holds max_children=2"):
            await handle.start_child(spec(script, "c"))
        await handle.terminate_child("b")
        assert trio.current_time() == 3.0
        assert [c.name for c in handle.which_children()] == ["a"]
        with pytest.raises(KeyError, match=r"supervisor 'app' has no child named 'b'"):
            await handle.terminate_child("b")
        await handle.start_child(spec(script, "c"))  # room again
        assert [c.name for c in handle.which_children()] == ["a", "c"]
        nursery.cancel_scope.cancel()
    assert script.of("stopped") == [(3.0, "b"), (3.0, "c"), (3.0, "a")]


async def test_start_child_that_stops_before_ready_raises_child_stopped(
    autojump_clock: Clock,
) -> None:
    async def no_driver(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        raise ts.Unrecoverable("no driver")

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(Supervisor("app").run)
        with pytest.raises(ts.ChildStopped, match=r"^child 'gpu' stopped before it was ready$"):
            await handle.start_child(ChildSpec("gpu", no_driver, POLICY))
        assert handle.which_children()[0].status is ChildStatus.STOPPED
        nursery.cancel_scope.cancel()
    with pytest.raises(ts.ChildStopped, match=r"^supervisor 'app' is not running$"):
        await handle.start_child(ChildSpec("late", no_driver, POLICY))


async def test_events_of_every_kind_and_bounded_subscriptions(autojump_clock: Clock) -> None:
    script = Script()
    recorder = Recorder()
    supervisor = Supervisor(
        "app",
        intensity=RestartIntensity(1, 100),
        children=[
            spec(script, "resumer", fail_after={1: (1, ts.OutOfMemory)}),
            spec(script, "slow_to_stop", cleanup=10, shutdown=1),
            spec(
                script, "bad", fail_after={1: (2, ts.ContextPoisoned), 2: (1, ts.ContextPoisoned)}
            ),
        ],
        on_event=recorder,
    )
    with trio.fail_after(100), pytest.RaisesGroup(ts.RestartIntensityExceeded):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(supervisor.run)
            everything = handle.subscribe(max_buffer=1000)
            tiny = handle.subscribe(max_buffer=2)
    kinds = set(recorder.kinds())
    assert kinds == {
        "STARTED",
        "READY",
        "FAILED",
        "RESUMED",
        "RESTARTING",
        "GAVE_UP",
        "STOPPED",
        "SHUTDOWN_TIMEOUT",
    }
    received = [event async for event in everything]
    assert received == [e for e in recorder.events if e.time >= received[0].time]
    assert len([e async for e in tiny]) == 2
    assert tiny.dropped == len(received) - 2
    assert handle.statistics().events_dropped == tiny.dropped


def test_specs_refuse_bad_arguments() -> None:
    async def child(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        pass

    with pytest.raises(ValueError, match=r"^name must be a non-empty str, got ''$"):
        ChildSpec("", child, POLICY)
    with pytest.raises(TypeError, match=r"^start must be an async function taking task_status"):
        ChildSpec("a", None, POLICY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^policy must be a Policy, got None$"):
        ChildSpec("a", child, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^shutdown must be a number of seconds >= 0, got -1$"):
        ChildSpec("a", child, POLICY, shutdown=-1)
    with pytest.raises(
        ValueError, match=r"^child names must be unique, got \['a'\] more than once"
    ):
        Supervisor("s", children=[ChildSpec("a", child, POLICY)] * 2)
    with pytest.raises(TypeError, match=r"^strategy must be a Strategy, got 'one_for_one'$"):
        Supervisor("s", "one_for_one")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_children must be an int >= 1 or None, got 0$"):
        Supervisor("s", max_children=0)
    with pytest.raises(ValueError, match=r"^max_children is 1, got 2 static children$"):
        Supervisor("s", children=[ChildSpec(n, child, POLICY) for n in "ab"], max_children=1)
    with pytest.raises(TypeError, match=r"^children must be ChildSpec values, got 3$"):
        Supervisor("s", children=[3])  # type: ignore[list-item]
