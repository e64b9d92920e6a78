"""Supervision machinery against hand-written Trio code, in the same run (DESIGN.md targets).

1. Restarts per second through ``supervised(...)``: a child that raises at once in every
   incarnation, restarted N times with no backoff, against a hand-written loop that runs each
   incarnation in its own nursery and catches the failure. Target: ratio >= 0.6. The policy's
   intensity window keeps every restart (``RestartIntensity(N + 1, 1e9)``); a second row uses a
   1 ms window, to tell the cost of the window's size from that of the rest of the machinery.
2. Many children (10,000; 1,000 with ``--quick``) under one ONE_FOR_ONE ``Supervisor``, time
   until all are ready and traced memory per child, against as many bare tasks started with
   ``await nursery.start(...)`` one after another. Target: within 2x in time and in memory.
3. A storm: of as many children under one ONE_FOR_ONE ``Supervisor`` (no backoff, intensities
   that let the storm through), every tenth (1,000; 100 with ``--quick``) fails at once; the
   time from the failure to the moment all of them are ready again. The baseline is the same
   storm on bare tasks: each runs the same child function inside a ``try`` that reports its
   ``Boom`` on a channel, and a hand-written loop reads the channel and restarts each with
   ``nursery.start_soon``. Both sides count readiness in the child itself, right after
   ``task_status.started()``. DESIGN.md sets no target.

Every number is the best of a few repetitions on the real clock (``time.perf_counter``); the two
sides of a comparison are interleaved so that drift hits both. Memory is measured in separate
runs under ``tracemalloc``, which would distort the timings.

Run ``python benchmarks/bench_supervisor.py [--quick]`` or
``python -m benchmarks.bench_supervisor [--quick]``; :func:`main` returns the numbers as a dict,
:func:`measure` the rows (``python -m benchmarks`` runs it with the other scripts).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from trio_supervise import (
    Backoff,
    ChildSpec,
    Directive,
    Policy,
    RestartIntensity,
    Strategy,
    Supervisor,
    on,
    rules,
    supervised,
)

if not __package__:  # run as a script: ``benchmarks`` is a package of the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    Measurements,
    Row,
    collected_run,
    parse_args,
    pick_sizes,
    quiet_library_logger,
    report,
)

RESTARTS_TARGET = 0.6
"""DESIGN.md: restarts through ``supervised`` at >= 0.6 of the hand-written loop's rate."""
CHILDREN_TARGET = 2.0
"""DESIGN.md: many supervised children within 2x the time and memory of bare tasks."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    restarts: int
    children: int
    storm_failing: int
    """How many of the ``children`` fail at once in the storm (every ``children //
    storm_failing``-th)."""
    repeat: int


FULL = Sizes(restarts=20_000, children=10_000, storm_failing=1_000, repeat=5)
QUICK = Sizes(restarts=2_000, children=1_000, storm_failing=100, repeat=3)


# --- 1. restarts per second -------------------------------------------------------------------


class Boom(Exception):
    """Every incarnation but the last fails with this: the decider restarts it."""


class Enough(Exception):
    """The last incarnation fails with this: the decider stops the child."""


ChildFn = Callable[..., Awaitable[None]]


def failing_child(restarts: int) -> tuple[ChildFn, list[int]]:
    """A child that raises at once: ``Boom`` ``restarts`` times, then ``Enough``.

    Returns the child and a one-item list counting its incarnations, to check both sides ran
    the same ``restarts + 1`` incarnations.
    """
    count = [0]

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        count[0] += 1
        if count[0] > restarts:
            raise Enough
        raise Boom

    return child, count


LONG_WINDOW = 1e9
"""An intensity window that never forgets: it ends up holding every restart of the run."""
SHORT_WINDOW = 1e-3
"""A 1 ms window: it holds only the last few dozen restarts at these rates."""


async def restarts_ours(restarts: int, within: float = LONG_WINDOW) -> float:
    """Seconds for ``restarts`` restarts through ``supervised``, then a STOP.

    The policy always restarts (``RestartIntensity(restarts + 1, within)``, no backoff), but
    for ``Enough``, which it maps to STOP.
    """
    child, count = failing_child(restarts)
    policy = Policy(
        rules(on(Enough, Directive.STOP), default=Directive.RESTART),
        RestartIntensity(restarts + 1, within),
        Backoff.none(),
    )
    run = supervised(child, policy, name="bench")
    start = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - start
    assert count[0] == restarts + 1, count
    return elapsed


async def restarts_baseline(restarts: int) -> float:
    """The same incarnations, hand-written: each in its own nursery, its failure caught."""
    child, count = failing_child(restarts)
    start = time.perf_counter()
    stopped = False
    while not stopped:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)
        except* Boom:
            pass  # restart
        except* Enough:
            stopped = True
    elapsed = time.perf_counter() - start
    assert count[0] == restarts + 1, count
    return elapsed


def bench_restarts(sizes: Sizes) -> tuple[Row, Row]:
    """Restarts per second, best of ``sizes.repeat`` for each side.

    The first row is the generic case: an intensity window that keeps every restart. The
    second, with a 1 ms window, isolates the per-restart machinery from the window's size;
    both are compared with the same baseline runs.
    """
    n = sizes.restarts
    ours_long: list[float] = []
    ours_short: list[float] = []
    baseline: list[float] = []
    for _ in range(sizes.repeat):
        ours_long.append(collected_run(restarts_ours, n, LONG_WINDOW))
        ours_short.append(collected_run(restarts_ours, n, SHORT_WINDOW))
        baseline.append(collected_run(restarts_baseline, n))
    long_row = Row(
        key="restarts_per_s",
        label=f"restarts/s ({n:,} restarts)",
        unit="restarts/s",
        ours=n / min(ours_long),
        baseline=n / min(baseline),
        target=RESTARTS_TARGET,
        higher_is_better=True,
    )
    short_row = dataclasses.replace(
        long_row,
        key="restarts_per_s_short_window",
        label=f"restarts/s, {SHORT_WINDOW * 1e3:g} ms window",
        ours=n / min(ours_short),
    )
    return long_row, short_row


# --- 2. many children -------------------------------------------------------------------------


async def sleeper(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The child body on both sides: ready at once, then sleeps until cancelled."""
    task_status.started()
    await trio.sleep_forever()


def traced_bytes(measure_memory: bool) -> int:
    """Memory traced by tracemalloc now, after a full collection (0 when not measuring)."""
    if not measure_memory:
        return 0
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def children_ours(n: int, measure_memory: bool) -> tuple[float, int, float]:
    """Seconds until ``n`` supervised children are ready, the bytes they hold, and the seconds
    of the first number spent building the ``ChildSpec`` values and the ``Supervisor``.

    Time and memory include that building: the supervisor keeps the specs, and a user cannot
    supervise a child without them.
    """
    policy = Policy(rules(default=Directive.RESTART))
    async with trio.open_nursery() as nursery:
        before = traced_bytes(measure_memory)
        start = time.perf_counter()
        specs = tuple(ChildSpec(f"child-{i}", sleeper, policy) for i in range(n))
        supervisor = Supervisor("bench", Strategy.ONE_FOR_ONE, children=specs)
        del specs  # the supervisor holds the same tuple
        built = time.perf_counter() - start
        handle = await nursery.start(supervisor.run)
        elapsed = time.perf_counter() - start
        used = traced_bytes(measure_memory) - before
        assert handle.statistics().running == n
        nursery.cancel_scope.cancel()  # stopping them is not measured
    return elapsed, used, built


async def children_baseline(n: int, measure_memory: bool) -> tuple[float, int, float]:
    """The same for ``n`` bare tasks, each started with ``await nursery.start`` in turn."""
    async with trio.open_nursery() as nursery:
        before = traced_bytes(measure_memory)
        start = time.perf_counter()
        for _ in range(n):
            await nursery.start(sleeper)
        elapsed = time.perf_counter() - start
        used = traced_bytes(measure_memory) - before
        assert len(nursery.child_tasks) == n
        nursery.cancel_scope.cancel()
    return elapsed, used, 0.0


def bench_children(sizes: Sizes) -> tuple[Row, Row, float]:
    """Time to ready (best of ``sizes.repeat``) and memory per child (one traced run each).

    Also returns the seconds our best run spent building specs and the supervisor.
    """
    n = sizes.children
    ours: list[tuple[float, float]] = []
    baseline: list[float] = []
    for _ in range(sizes.repeat):
        elapsed, _, built = collected_run(children_ours, n, False)
        ours.append((elapsed, built))
        baseline.append(collected_run(children_baseline, n, False)[0])
    tracemalloc.start()
    try:
        ours_bytes = collected_run(children_ours, n, True)[1]
        baseline_bytes = collected_run(children_baseline, n, True)[1]
    finally:
        tracemalloc.stop()
    time_row = Row(
        key="children_ready_s",
        label=f"{n:,} children: time to ready",
        unit="s",
        ours=min(ours)[0],
        baseline=min(baseline),
        target=CHILDREN_TARGET,
        higher_is_better=False,
    )
    memory_row = Row(
        key="children_bytes_per_child",
        label=f"{n:,} children: memory/child",
        unit="B",
        ours=ours_bytes / n,
        baseline=baseline_bytes / n,
        target=CHILDREN_TARGET,
        higher_is_better=False,
    )
    return time_row, memory_row, min(ours)[1]


# --- 3. a storm of failures -------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Storm:
    """What the children of one storm share: the signal to fail, and who is ready again."""

    failing: int
    """How many children fail when :attr:`strike` is set."""
    strike: trio.Event = dataclasses.field(default_factory=trio.Event)
    """Set once: the failing children raise ``Boom``."""
    back: int = 0
    """Incarnations ready since the strike (each failing child's next one)."""
    all_back: trio.Event = dataclasses.field(default_factory=trio.Event)
    """Set when :attr:`back` reaches :attr:`failing`."""


async def storm_child(
    storm: Storm, fails: bool, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """The child body on both sides: ready at once; then, if ``fails``, raises ``Boom`` at the
    strike. An incarnation started after the strike (a restart) counts itself back."""
    task_status.started()
    if storm.strike.is_set():
        storm.back += 1
        if storm.back == storm.failing:
            storm.all_back.set()
    elif fails:
        await storm.strike.wait()
        raise Boom
    await trio.sleep_forever()


def storm_stride(n: int, failing: int) -> int:
    """Every ``stride``-th of ``n`` children fails, so that exactly ``failing`` of them do."""
    if not 0 < failing <= n or n % failing:
        raise ValueError(f"storm_failing must divide children, got {failing} of {n}")
    return n // failing


async def storm_ours(n: int, failing: int) -> float:
    """Seconds from the strike until the ``failing`` of ``n`` supervised children that failed
    are ready again. Starting and stopping the children are not timed."""
    storm = Storm(failing)
    stride = storm_stride(n, failing)
    # No backoff; the supervisor's intensity lets the whole storm through (each child fails once).
    policy = Policy(rules(default=Directive.RESTART), RestartIntensity(3, 60.0), Backoff.none())
    specs = [
        ChildSpec(f"child-{i}", functools.partial(storm_child, storm, i % stride == 0), policy)
        for i in range(n)
    ]
    supervisor = Supervisor(
        "storm", Strategy.ONE_FOR_ONE, RestartIntensity(failing, 60.0), children=specs
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(supervisor.run)
        start = time.perf_counter()
        storm.strike.set()
        await storm.all_back.wait()
        elapsed = time.perf_counter() - start
        statistics = handle.statistics()
        assert statistics.running == n and statistics.restarts == failing, statistics
        nursery.cancel_scope.cancel()
    return elapsed


async def storm_baseline(n: int, failing: int) -> float:
    """The same storm on ``n`` bare tasks; a hand-written loop restarts the failed ones."""
    storm = Storm(failing)
    stride = storm_stride(n, failing)
    # Bounded: each task reports at most one failure.
    failed_send, failed_receive = trio.open_memory_channel[int](n)

    async def guarded(
        index: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await storm_child(storm, index % stride == 0, task_status=task_status)
        except Boom:
            failed_send.send_nowait(index)

    async def restart_loop(nursery: trio.Nursery) -> None:
        async for index in failed_receive:
            nursery.start_soon(guarded, index)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            await nursery.start(guarded, i)
        nursery.start_soon(restart_loop, nursery)
        start = time.perf_counter()
        storm.strike.set()
        await storm.all_back.wait()
        elapsed = time.perf_counter() - start
        assert len(nursery.child_tasks) == n + 1  # the children and the restart loop
        nursery.cancel_scope.cancel()
    return elapsed


def bench_storm(sizes: Sizes) -> Row:
    """Time from the strike until all failed children are ready again, best of
    ``sizes.repeat`` per side."""
    n, failing = sizes.children, sizes.storm_failing
    ours: list[float] = []
    baseline: list[float] = []
    for _ in range(sizes.repeat):
        ours.append(collected_run(storm_ours, n, failing))
        baseline.append(collected_run(storm_baseline, n, failing))
    return Row(
        key="storm_ready_again_s",
        label=f"storm: {failing:,} of {n:,} children fail at once, time to all ready",
        unit="s",
        ours=min(ours),
        baseline=min(baseline),
        target=None,
        higher_is_better=False,
    )


# --- the table --------------------------------------------------------------------------------


def format_value(value: float, unit: str) -> str:
    """A number with its unit, at a readable precision."""
    if unit == "s":
        return f"{value * 1e3:,.1f} ms"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:,.0f} /s"


def measure(sizes: Sizes) -> Measurements:
    """Run the three benchmarks at ``sizes``; the rows, and the children's build time.

    The children's time row has the extra ``ours_build``: the seconds of ``ours`` spent
    building the specs and the supervisor.
    """
    # We measure the supervision machinery, not log formatting: the benchmark child's failures
    # are logged at WARNING (and its restarts at INFO), so the library's logger is raised to
    # ERROR for the run and restored afterwards. Events are then skipped before any is built.
    with quiet_library_logger():
        restart_rows = bench_restarts(sizes)
        time_row, memory_row, build_s = bench_children(sizes)
        storm_row = bench_storm(sizes)
    note = (
        f"ours, {sizes.children:,} children: {build_s * 1e3:,.1f} ms building ChildSpecs and "
        f"Supervisor, {(time_row.ours - build_s) * 1e3:,.1f} ms in nursery.start(supervisor.run)"
    )
    return Measurements(
        rows=(*restart_rows, time_row, memory_row, storm_row),
        extras={time_row.key: {"ours_build": build_s}},
        notes=(note,),
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks, print the table, and return the numbers.

    Returns:
        ``{"quick", "sizes", "environment", "results"}``; ``results`` maps each benchmark's key
        to its ``ours``, ``baseline``, ``ratio``, ``target``, ``higher_is_better``, ``met`` and
        ``shortfall`` (the children's time also has ``ours_build``: the part spent building
        specs; the storm has no target, so its ``target``, ``met`` and ``shortfall`` are None).
    """
    args = parse_args(argv, prog="bench_supervisor", doc=__doc__)
    sizes = pick_sizes(args, full=FULL, quick=QUICK)
    return report(measure(sizes), sizes=sizes, quick=args.quick, format_value=format_value)


if __name__ == "__main__":
    main(sys.argv[1:])
