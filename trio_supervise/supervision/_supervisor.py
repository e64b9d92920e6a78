"""``Supervisor``: OTP-style supervision of several children, with strategies.

Theory of operation
-------------------
One task, the supervisor's loop, takes every decision; children run in their own tasks in the
supervisor's nursery, each inside a *shielded* cancel scope of its own, so that nothing but the
supervisor stops a child, and it stops them one at a time, in reverse start order, each within
its ``shutdown`` timeout (also when the supervisor itself is cancelled from outside).

A child's task reports its exit to the loop on a channel; the loop asks the child's pure policy
(``policy.on_exit``), records counted restarts in the supervisor's own intensity window
(``RestartIntensity.record``, the same pure function), and applies the strategy:

* ``ONE_FOR_ONE``: only the failed child is restarted, after its backoff delay.
* ``ONE_FOR_ALL``: every other child is stopped (reverse order), then all are started again in
  order, each ready before the next.
* ``REST_FOR_ONE``: the children started after the failed one are stopped, then it and they are
  started again in order.

Siblings stopped by a strategy are neither failures nor counted; TEMPORARY ones are not
restarted. Children waiting to be started in order sit in ``pending``; the loop starts them one
by one and waits until each is ready (or has failed, which it then decides like any failure).

The loop's queue holds at most one exit message per live child task and one command per
waiting caller, so it is bounded by the number of children and callers.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, final

import attrs
import trio

from ._errors import ChildStopped, TooManyChildren
from ._events import Emitter, EventKind, EventSubscription
from ._policy import Directive, Policy, PolicyState, RestartIntensity, RestartType
from ._toolkit import (
    EventCallback,
    Readiness,
    callbacks,
    check_readiness_timeout,
    emit_decision,
    fatal_error,
    run_incarnation,
)

__all__ = [
    "ChildInfo",
    "ChildSpec",
    "ChildStatus",
    "Strategy",
    "Supervisor",
    "SupervisorHandle",
    "SupervisorStatistics",
]


class Strategy(enum.Enum):
    """Which children restart when one fails (OTP's restart strategies)."""

    ONE_FOR_ONE = "one_for_one"
    """Only the failed child."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: the others are stopped, then all start again in order."""
    REST_FOR_ONE = "rest_for_one"
    """The failed child and those started after it."""

    def __repr__(self) -> str:
        return f"Strategy.{self.name}"


class ChildStatus(enum.Enum):
    """Where a supervised child stands."""

    PENDING = "pending"
    """Waiting to be started (its turn in order, or its backoff delay)."""
    STARTING = "starting"
    """Running, not yet ready."""
    RUNNING = "running"
    """Running and ready."""
    STOPPED = "stopped"
    """Ended for good."""


def _check_shutdown(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"shutdown must be a number of seconds >= 0, got {value!r}")


def _check_name(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty str, got {value!r}")


def _check_start(instance: Any, attribute: Any, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"start must be an async function taking task_status, got {value!r}")


def _check_type(cls: type) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, cls):
            raise TypeError(f"{attribute.name} must be a {cls.__name__}, got {value!r}")

    return check


def _check_timeout(instance: Any, attribute: Any, value: Any) -> None:
    check_readiness_timeout(value)


@final
@attrs.frozen
class ChildSpec:
    """How to run one child of a :class:`Supervisor`.

    Example: ``ChildSpec("cache", run_cache, DEVICE_POLICY, restart=RestartType.TRANSIENT)``.
    """

    name: str = attrs.field(validator=_check_name)
    """Unique among the supervisor's children."""
    start: Callable[..., Awaitable[object]] = attrs.field(validator=_check_start)
    """``async def start(*, task_status)``; ``task_status.started(value)`` marks it ready."""
    policy: Policy = attrs.field(validator=_check_type(Policy))
    """Its decider and backoff; its own intensity also applies to it."""
    restart: RestartType = attrs.field(
        default=RestartType.PERMANENT, validator=_check_type(RestartType)
    )
    """When it is restarted (OTP's restart types)."""
    shutdown: float = attrs.field(default=5.0, validator=_check_shutdown)
    """Seconds it gets to stop once cancelled, before SHUTDOWN_TIMEOUT is reported."""
    readiness_timeout: float | None = attrs.field(default=None, validator=_check_timeout)
    """Seconds an incarnation may take to be ready; past it, it fails with ReadinessTimeout."""
    seed: int = 0
    """Seeds the jitter of its backoff."""


def _tuple_of_specs(children: Iterable[ChildSpec]) -> tuple[ChildSpec, ...]:
    return tuple(children)


@final
@attrs.frozen
class ChildInfo:
    """One row of :meth:`SupervisorHandle.which_children`."""

    name: str
    """The child's name."""
    status: ChildStatus
    """Where it stands."""
    generation: int
    """Its incarnation, 1 for the first (0 before it ever started)."""
    restart: RestartType
    """Its restart type."""
    value: object
    """What its first incarnation passed to ``task_status.started()``."""


@final
@attrs.frozen
class SupervisorStatistics:
    """A snapshot of a running supervisor."""

    name: str
    """The supervisor's name."""
    strategy: Strategy
    """Its strategy."""
    children: int
    """Children it holds, stopped ones included."""
    running: int
    """Children running and ready."""
    restarts: int
    """Counted restarts since it started."""
    restarts_in_window: int
    """Counted restarts still inside its intensity window."""
    events_dropped: int
    """Events its subscriptions dropped because nobody read them in time."""


@attrs.define(eq=False)
class _Slot:
    spec: ChildSpec
    state: PolicyState
    generation: int = 0
    status: ChildStatus = ChildStatus.PENDING
    delay: float = 0.0
    scope: trio.CancelScope | None = None
    done: trio.Event | None = None
    settled: trio.Event | None = None
    stop_requested: bool = False
    first_ready: trio.Event = attrs.Factory(trio.Event)
    ready_once: bool = False
    value: object = None

    @property
    def alive(self) -> bool:
        return self.done is not None and not self.done.is_set()


@attrs.frozen
class _Exit:
    slot: _Slot
    generation: int
    error: Exception | None
    ready: bool


@attrs.frozen
class _Terminate:
    name: str
    reply: trio.Event
    outcome: list[BaseException]


class _Wake:
    """Tells the loop that pending children were added."""


_Message = _Exit | _Terminate | _Wake


@final
@attrs.frozen
class Supervisor:
    """An OTP-style supervisor: children, a strategy, and one restart intensity over them all.

    ``await nursery.start(supervisor.run)`` returns a :class:`SupervisorHandle` once every
    static child is ready. Each run starts afresh, so a supervisor can itself be a child.

    Example::

        supervisor = Supervisor(
            "app",
            Strategy.ONE_FOR_ONE,
            RestartIntensity(5, 10.0),
            children=[ChildSpec("db", run_db, policy), ChildSpec("api", run_api, policy)],
        )
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(supervisor.run)
            print(handle.which_children())
    """

    name: str = attrs.field(validator=_check_name)
    """The supervisor's name, in events and errors."""
    strategy: Strategy = attrs.field(default=Strategy.ONE_FOR_ONE, validator=_check_type(Strategy))
    """Which children restart when one fails."""
    intensity: RestartIntensity = attrs.field(
        default=RestartIntensity(1, 5.0), validator=_check_type(RestartIntensity)
    )
    """At most this many restarts of all its children together (OTP's default: 1 in 5 s)."""
    children: tuple[ChildSpec, ...] = attrs.field(default=(), converter=_tuple_of_specs)
    """The static children, started in order, each ready before the next."""
    max_children: int | None = None
    """At most this many children (static and dynamic, stopped ones excluded)."""
    on_event: tuple[EventCallback, ...] = attrs.field(default=(), converter=callbacks)
    """Callables given every event."""

    def __attrs_post_init__(self) -> None:
        for spec in self.children:
            if not isinstance(spec, ChildSpec):
                raise TypeError(f"children must be ChildSpec values, got {spec!r}")
        counts = collections.Counter(spec.name for spec in self.children)
        duplicates = sorted(name for name, count in counts.items() if count > 1)
        if duplicates:
            raise ValueError(f"child names must be unique, got {duplicates} more than once")
        if self.max_children is not None and (
            isinstance(self.max_children, bool)
            or not isinstance(self.max_children, int)
            or self.max_children < 1
        ):
            raise ValueError(f"max_children must be an int >= 1 or None, got {self.max_children!r}")
        if self.max_children is not None and len(self.children) > self.max_children:
            raise ValueError(
                f"max_children is {self.max_children}, got {len(self.children)} static children"
            )

    async def run(
        self, *, task_status: trio.TaskStatus[SupervisorHandle] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the children until cancelled, or until giving up.

        Raises:
            RestartIntensityExceeded: more restarts than ``intensity`` (or a child's own
                policy) allows; the children were stopped first.
            Exception: a child's exception that its policy escalated.
        """
        handle = SupervisorHandle(self)
        await handle._run(task_status)


@final
class SupervisorHandle:
    """A running supervisor: start and stop children, look at them, follow their events."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._emitter = Emitter(supervisor.name, supervisor.on_event)
        self._slots: list[_Slot] = []
        self._by_name: dict[str, _Slot] = {}
        self._stopped = 0  # slots listed with status STOPPED
        self._pending: collections.deque[_Slot] = collections.deque()
        self._restarts: tuple[float, ...] = ()
        self._total_restarts = 0
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._fatal: BaseException | None = None
        self._send, self._receive = trio.open_memory_channel[_Message](math.inf)

    def __repr__(self) -> str:
        return f"<SupervisorHandle {self.supervisor.name!r}: {len(self._slots)} children>"

    # --- public API ---------------------------------------------------------------------------

    async def start_child(self, spec: ChildSpec) -> object:
        """Add a child and wait until it is ready; return what it passed to ``started()``.

        Its failures before readiness are decided by its policy like any other.

        Raises:
            ValueError: a child of that name exists already.
            TooManyChildren: the supervisor holds ``max_children`` children.
            ChildStopped: the child stopped for good before it was ready, or the supervisor
                ended first.
        """
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child takes a ChildSpec, got {spec!r}")
        self._check_open()
        if spec.name in self._by_name:
            raise ValueError(f"a child named {spec.name!r} exists already")
        limit = self.supervisor.max_children
        if limit is not None and len(self._slots) - self._stopped >= limit:
            raise TooManyChildren(
                f"supervisor {self.supervisor.name!r} holds max_children={limit} children"
            )
        slot = self._new_slot(spec)
        self._pending.append(slot)
        self._send.send_nowait(_Wake())
        await slot.first_ready.wait()
        if not slot.ready_once:
            raise ChildStopped(f"child {spec.name!r} stopped before it was ready")
        return slot.value

    async def terminate_child(self, name: str) -> None:
        """Stop a child (within its shutdown timeout) and remove it; it is not restarted.

        Raises:
            KeyError: no child has that name.
        """
        self._check_open()
        self._slot_named(name)
        reply = trio.Event()
        outcome: list[BaseException] = []
        self._send.send_nowait(_Terminate(name, reply, outcome))
        await reply.wait()
        if outcome:
            raise outcome[0]

    def which_children(self) -> tuple[ChildInfo, ...]:
        """Every child, in start order."""
        return tuple(
            ChildInfo(s.spec.name, s.status, s.generation, s.spec.restart, s.value)
            for s in self._slots
        )

    def statistics(self) -> SupervisorStatistics:
        """Counts of children and restarts."""
        return SupervisorStatistics(
            name=self.supervisor.name,
            strategy=self.supervisor.strategy,
            children=len(self._slots),
            running=sum(s.status is ChildStatus.RUNNING for s in self._slots),
            restarts=self._total_restarts,
            restarts_in_window=len(self._restarts),
            events_dropped=sum(s.dropped for s in self._emitter.subscriptions),
        )

    def subscribe(self, max_buffer: int = 256) -> EventSubscription:
        """A channel of every later event; when full it drops the oldest and counts it."""
        return self._emitter.subscribe(max_buffer)

    # --- the loop -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._nursery is None:
            raise ChildStopped(f"supervisor {self.supervisor.name!r} is not running")

    def _slot_named(self, name: str) -> _Slot:
        try:
            return self._by_name[name]
        except KeyError:
            message = f"supervisor {self.supervisor.name!r} has no child named {name!r}"
            raise KeyError(message) from None

    def _new_slot(self, spec: ChildSpec) -> _Slot:
        slot = _Slot(spec, spec.policy.initial_state(spec.seed))
        self._slots.append(slot)
        self._by_name[spec.name] = slot
        return slot

    def _remove(self, slot: _Slot) -> None:
        self._slots.remove(slot)
        del self._by_name[slot.spec.name]
        if slot in self._pending:
            self._pending.remove(slot)

    def _set_pending(self, slots: Iterable[_Slot]) -> None:
        """Make ``slots`` (with those already pending) the pending ones, in start order."""
        merged = set(self._pending)
        merged.update(slots)
        self._pending = collections.deque(s for s in self._slots if s in merged)

    async def _run(self, task_status: trio.TaskStatus[SupervisorHandle]) -> None:
        for spec in self.supervisor.children:
            self._pending.append(self._new_slot(spec))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._loop(task_status)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._stop_in_reverse(self._slots, "the supervisor is shutting down")
        finally:
            self._closed = True
            self._emitter.close()
            for slot in self._slots:
                slot.first_ready.set()
            while True:
                try:
                    message = self._receive.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(message, _Terminate):
                    message.reply.set()
        if self._fatal is not None:
            raise self._fatal

    async def _loop(self, task_status: trio.TaskStatus[SupervisorHandle]) -> None:
        reported = False
        while self._fatal is None:
            await self._start_pending()
            if not reported and not self._pending:
                reported = True
                task_status.started(self)
            message = await self._receive.receive()
            if isinstance(message, _Exit):
                await self._on_exit(message)
            elif isinstance(message, _Terminate):
                await self._on_terminate(message)

    async def _start_pending(self) -> None:
        """Start pending children in order, each ready before the next.

        Returns early when one ends before it is ready: its exit is decided first.
        """
        while self._pending and self._fatal is None:
            slot = self._pending[0]  # it stays pending until it is ready
            self._spawn(slot)
            assert slot.settled is not None
            await slot.settled.wait()
            if slot.status is not ChildStatus.RUNNING:
                return
            self._pending.popleft()

    def _spawn(self, slot: _Slot) -> None:
        assert self._nursery is not None
        slot.generation += 1
        slot.status = ChildStatus.PENDING if slot.delay else ChildStatus.STARTING
        slot.stop_requested = False
        slot.done = trio.Event()
        slot.settled = trio.Event()
        slot.scope = trio.CancelScope(shield=True)
        delay, slot.delay = slot.delay, 0.0
        self._nursery.start_soon(self._child_task, slot, slot.generation, delay)

    async def _child_task(self, slot: _Slot, generation: int, delay: float) -> None:
        spec = slot.spec
        done, settled = slot.done, slot.settled
        assert slot.scope is not None and done is not None and settled is not None
        error: Exception | None = None
        readiness: Readiness | None = None
        try:
            if delay:
                with slot.scope:
                    await trio.sleep(delay)
            if not slot.stop_requested:
                now = trio.current_time()
                deadline = math.inf
                if spec.readiness_timeout is not None:
                    deadline = now + spec.readiness_timeout
                scope = slot.scope = trio.CancelScope(shield=True, deadline=deadline)
                slot.state = spec.policy.on_started(slot.state, now)
                slot.status = ChildStatus.STARTING
                self._emitter.emit(spec.name, generation, EventKind.STARTED)

                def on_ready(value: object) -> None:
                    scope.deadline = math.inf
                    slot.status = ChildStatus.RUNNING
                    self._emitter.emit(spec.name, generation, EventKind.READY)
                    if not slot.ready_once:
                        slot.value = value
                        slot.ready_once = True
                        slot.first_ready.set()
                    settled.set()

                readiness = Readiness(on_ready)
                error = await run_incarnation(spec.start, readiness, scope)
        finally:
            done.set()
            settled.set()
        if slot.stop_requested:
            if error is not None:
                self._emitter.emit(spec.name, generation, EventKind.FAILED, error=error)
            return
        ready = readiness is not None and readiness.ready
        self._send.send_nowait(_Exit(slot, generation, error, ready))

    async def _on_exit(self, message: _Exit) -> None:
        slot = message.slot
        if slot.generation != message.generation or self._by_name.get(slot.spec.name) is not slot:
            return  # stale: that incarnation was already stopped or replaced
        spec, error = slot.spec, message.error
        now = trio.current_time()
        decision, slot.state = spec.policy.on_exit(
            slot.state, error, now, restart=spec.restart, ready=message.ready
        )
        if error is not None:
            self._emitter.emit(spec.name, slot.generation, EventKind.FAILED, error=error)
        if decision.counted and not decision.gave_up:
            self._total_restarts += 1
            self._restarts, exceeded = self.supervisor.intensity.record(self._restarts, now)
            if exceeded:
                limit = self.supervisor.intensity
                reason = (
                    f"{len(self._restarts)} restarts of its children within {limit.within:g}s "
                    f"exceed max_restarts={limit.max_restarts}"
                )
                decision = attrs.evolve(
                    decision, directive=Directive.ESCALATE, delay=0.0, gave_up=True, reason=reason
                )
        emit_decision(self._emitter, spec.name, slot.generation, decision, error)
        directive = decision.directive
        if directive is Directive.ESCALATE:
            self._fatal = fatal_error(decision, error, f"supervisor {self.supervisor.name!r}")
        elif directive is Directive.STOP:
            self._finish(slot)
        elif directive is Directive.RESUME or self.supervisor.strategy is Strategy.ONE_FOR_ONE:
            slot.delay = decision.delay
            self._schedule([slot])
        else:
            await self._restart_group(slot, decision.delay)

    def _finish(self, slot: _Slot) -> None:
        """A child ended for good: temporary ones are forgotten (OTP), others stay listed."""
        slot.status = ChildStatus.STOPPED
        slot.first_ready.set()
        if slot in self._pending:
            self._pending.remove(slot)
        if slot.spec.restart is RestartType.TEMPORARY:
            self._remove(slot)
        else:
            self._stopped += 1

    def _schedule(self, slots: list[_Slot]) -> None:
        """Start ``slots`` again: at once, or in order behind a start sequence in progress."""
        if self._pending:
            for slot in slots:
                slot.status = ChildStatus.PENDING
            self._set_pending(slots)
            return
        for slot in slots:
            self._spawn(slot)

    async def _restart_group(self, failed: _Slot, delay: float) -> None:
        index = self._slots.index(failed)
        group = (
            self._slots
            if self.supervisor.strategy is Strategy.ONE_FOR_ALL
            else (self._slots[index:])
        )
        group = [s for s in group if s.status is not ChildStatus.STOPPED]
        siblings = [s for s in group if s is not failed and s.alive]
        strategy = self.supervisor.strategy.name
        await self._stop_in_reverse(
            siblings, f"stopped by {strategy} after {failed.spec.name!r} failed"
        )
        for sibling in siblings:
            if sibling.spec.restart is RestartType.TEMPORARY:
                self._finish(sibling)
        restart = [s for s in group if s.status is not ChildStatus.STOPPED]
        for slot in restart:
            slot.status = ChildStatus.PENDING
        self._set_pending(restart)
        if self._pending:
            head = self._pending[0]
            head.delay = max(head.delay, delay)

    async def _on_terminate(self, message: _Terminate) -> None:
        try:
            slot = self._slot_named(message.name)
        except KeyError as exc:
            message.outcome.append(exc)
            message.reply.set()
            return
        await self._stop_in_reverse([slot], "terminated by terminate_child")
        if slot.status is ChildStatus.STOPPED:
            self._stopped -= 1
        slot.status = ChildStatus.STOPPED
        slot.first_ready.set()
        self._remove(slot)
        message.reply.set()

    async def _stop_in_reverse(self, slots: Sequence[_Slot], reason: str) -> None:
        """Stop children one at a time in reverse order, each within its shutdown timeout.

        One past its timeout is reported (SHUTDOWN_TIMEOUT), the others are still stopped in
        order, and then it is waited for: a Trio task cannot be killed.
        """
        overdue = []
        for slot in reversed(slots):
            if not slot.alive:
                continue
            assert slot.scope is not None and slot.done is not None
            slot.stop_requested = True
            slot.scope.cancel()
            with trio.move_on_after(slot.spec.shutdown) as timer:
                await slot.done.wait()
            if timer.cancelled_caught:
                self._emitter.emit(
                    slot.spec.name,
                    slot.generation,
                    EventKind.SHUTDOWN_TIMEOUT,
                    reason=f"still running {slot.spec.shutdown:g}s after it was cancelled",
                )
                overdue.append(slot)
            else:
                self._emitter.emit(
                    slot.spec.name, slot.generation, EventKind.STOPPED, reason=reason
                )
        for slot in overdue:
            assert slot.done is not None
            await slot.done.wait()
            self._emitter.emit(slot.spec.name, slot.generation, EventKind.STOPPED, reason=reason)
