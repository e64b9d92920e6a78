"""``Supervisor``: OTP-style supervision of several children, with strategies.

A :class:`Supervisor` is the frozen value that says what to supervise; each
:meth:`Supervisor.run` makes a :class:`SupervisorHandle`, whose loop does the supervising.

Theory of operation
-------------------
One task, the supervisor's loop, takes every decision; each child runs in a task of its own
(see ``_children``), which nothing but the loop stops, and the loop stops them one at a time, in
reverse start order, each within its ``shutdown`` timeout (also when the supervisor itself is
cancelled from outside).

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
import math
from collections.abc import Iterable
from typing import final

import attrs
import trio

from ._children import Children, Exit, Slot, stop_in_reverse
from ._decider import Directive
from ._errors import ChildStopped, TooManyChildren
from ._events import Emitter, EventKind, EventSubscription
from ._pacing import RestartIntensity
from ._policy import RestartType
from ._specs import (
    ChildInfo,
    ChildSpec,
    ChildStatus,
    Strategy,
    SupervisorStatistics,
    check_name,
    check_type,
)
from ._toolkit import EventCallback, callbacks, emit_decision, fatal_error

__all__ = ["Supervisor", "SupervisorHandle"]


def _tuple_of_specs(children: Iterable[ChildSpec]) -> tuple[ChildSpec, ...]:
    return tuple(children)


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

    name: str = attrs.field(validator=check_name)
    """The supervisor's name, in events and errors."""
    strategy: Strategy = attrs.field(default=Strategy.ONE_FOR_ONE, validator=check_type(Strategy))
    """Which children restart when one fails."""
    intensity: RestartIntensity = attrs.field(
        default=RestartIntensity(1, 5.0), validator=check_type(RestartIntensity)
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


@attrs.frozen
class _Terminate:
    name: str
    reply: trio.Event
    outcome: list[BaseException]


class _Wake:
    """Tells the loop that pending children were added."""


_Message = Exit | _Terminate | _Wake


@final
class SupervisorHandle:
    """A running supervisor: start and stop children, look at them, follow their events."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._emitter = Emitter(supervisor.name, supervisor.on_event)
        self._children = Children(supervisor.name)
        self._restarts: tuple[float, ...] = ()
        self._total_restarts = 0
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._fatal: BaseException | None = None
        self._send, self._receive = trio.open_memory_channel[_Message](math.inf)

    def __repr__(self) -> str:
        return f"<SupervisorHandle {self.supervisor.name!r}: {len(self._children.slots)} children>"

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
        if spec.name in self._children:
            raise ValueError(f"a child named {spec.name!r} exists already")
        limit = self.supervisor.max_children
        if limit is not None and len(self._children.slots) - self._children.stopped >= limit:
            raise TooManyChildren(
                f"supervisor {self.supervisor.name!r} holds max_children={limit} children"
            )
        slot = self._children.add(spec)
        self._children.pending.append(slot)
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
        self._children.named(name)
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
            for s in self._children.slots
        )

    def statistics(self) -> SupervisorStatistics:
        """Counts of children and restarts."""
        return SupervisorStatistics(
            name=self.supervisor.name,
            strategy=self.supervisor.strategy,
            children=len(self._children.slots),
            running=sum(s.status is ChildStatus.RUNNING for s in self._children.slots),
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

    async def _run(self, task_status: trio.TaskStatus[SupervisorHandle]) -> None:
        children = self._children
        for spec in self.supervisor.children:
            children.pending.append(children.add(spec))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._loop(task_status)
                finally:
                    with trio.CancelScope(shield=True):
                        await stop_in_reverse(
                            children.slots, self._emitter, "the supervisor is shutting down"
                        )
        finally:
            self._closed = True
            self._emitter.close()
            for slot in children.slots:
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
            if not reported and not self._children.pending:
                reported = True
                task_status.started(self)
            message = await self._receive.receive()
            if isinstance(message, Exit):
                await self._on_exit(message)
            elif isinstance(message, _Terminate):
                await self._on_terminate(message)

    async def _start_pending(self) -> None:
        """Start pending children in order, each ready before the next.

        Returns early when one ends before it is ready: its exit is decided first.
        """
        pending = self._children.pending
        while pending and self._fatal is None:
            slot = pending[0]  # it stays pending until it is ready
            self._spawn(slot)
            assert slot.settled is not None
            await slot.settled.wait()
            if slot.status is not ChildStatus.RUNNING:
                return
            pending.popleft()

    def _spawn(self, slot: Slot) -> None:
        assert self._nursery is not None
        slot.spawn(self._nursery, self._emitter, self._send.send_nowait)

    async def _on_exit(self, message: Exit) -> None:
        slot = message.slot
        if slot.generation != message.generation or not self._children.holds(slot):
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
            self._children.finish(slot)
        elif directive is Directive.RESUME or self.supervisor.strategy is Strategy.ONE_FOR_ONE:
            slot.delay = decision.delay
            self._schedule([slot])
        else:
            await self._restart_group(slot, decision.delay)

    def _schedule(self, slots: list[Slot]) -> None:
        """Start ``slots`` again: at once, or in order behind a start sequence in progress."""
        if self._children.pending:
            for slot in slots:
                slot.status = ChildStatus.PENDING
            self._children.set_pending(slots)
            return
        for slot in slots:
            self._spawn(slot)

    async def _restart_group(self, failed: Slot, delay: float) -> None:
        children = self._children
        index = children.slots.index(failed)
        group = (
            children.slots
            if self.supervisor.strategy is Strategy.ONE_FOR_ALL
            else (children.slots[index:])
        )
        group = [s for s in group if s.status is not ChildStatus.STOPPED]
        siblings = [s for s in group if s is not failed and s.alive]
        strategy = self.supervisor.strategy.name
        await stop_in_reverse(
            siblings, self._emitter, f"stopped by {strategy} after {failed.spec.name!r} failed"
        )
        for sibling in siblings:
            if sibling.spec.restart is RestartType.TEMPORARY:
                children.finish(sibling)
        restart = [s for s in group if s.status is not ChildStatus.STOPPED]
        for slot in restart:
            slot.status = ChildStatus.PENDING
        children.set_pending(restart)
        if children.pending:
            head = children.pending[0]
            head.delay = max(head.delay, delay)

    async def _on_terminate(self, message: _Terminate) -> None:
        try:
            slot = self._children.named(message.name)
        except KeyError as exc:
            message.outcome.append(exc)
            message.reply.set()
            return
        await stop_in_reverse([slot], self._emitter, "terminated by terminate_child")
        self._children.forget(slot)
        message.reply.set()
