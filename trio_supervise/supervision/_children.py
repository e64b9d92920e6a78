"""A :class:`Supervisor`'s children: where each one stands, its tasks, and stopping them.

A :class:`Slot` runs each incarnation of its child in a task of its own, in the supervisor's
nursery, inside a *shielded* cancel scope, so that nothing but the supervisor stops a child. When
an incarnation ends, the slot reports an :class:`Exit` for the supervisor's loop to decide;
an incarnation the supervisor stopped itself reports nothing. :class:`Children` keeps the slots
in start order, by name, and the queue of those waiting for their turn to start.
:func:`stop_in_reverse` stops children one at a time, in reverse order, each within its
``shutdown`` timeout. What to do about an exit (policy, strategy, intensity) is the loop's
business, not this module's.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable, Sequence

import attrs
import trio

from ._events import Emitter, EventKind
from ._policy import PolicyState, RestartType
from ._specs import ChildSpec, ChildStatus
from ._toolkit import Readiness, run_incarnation

__all__ = ["Children", "Exit", "Slot", "stop_in_reverse"]


@attrs.define(eq=False)
class Slot:
    """A child of a running supervisor: its spec, its policy state and its current incarnation."""

    spec: ChildSpec
    state: PolicyState
    generation: int = 0
    status: ChildStatus = ChildStatus.PENDING
    delay: float = 0.0
    """The wait before its next incarnation starts (its backoff delay)."""
    scope: trio.CancelScope | None = None
    done: trio.Event | None = None
    """Set when the current incarnation's task is over."""
    settled: trio.Event | None = None
    """Set when the current incarnation is ready or over, whichever comes first."""
    stop_requested: bool = False
    first_ready: trio.Event = attrs.Factory(trio.Event)
    """Set once it was ever ready, or stopped for good first (``ready_once`` says which)."""
    ready_once: bool = False
    value: object = None
    """What its first incarnation passed to ``task_status.started()``."""

    @property
    def alive(self) -> bool:
        """Whether an incarnation's task is running."""
        return self.done is not None and not self.done.is_set()

    def spawn(
        self, nursery: trio.Nursery, emitter: Emitter, report: Callable[[Exit], None]
    ) -> None:
        """Start the next incarnation in ``nursery``, after ``delay``; ``report`` gets its exit."""
        self.generation += 1
        self.status = ChildStatus.PENDING if self.delay else ChildStatus.STARTING
        self.stop_requested = False
        self.done = trio.Event()
        self.settled = trio.Event()
        self.scope = trio.CancelScope(shield=True)
        delay, self.delay = self.delay, 0.0
        nursery.start_soon(self._incarnation, self.generation, delay, emitter, report)

    async def _incarnation(
        self, generation: int, delay: float, emitter: Emitter, report: Callable[[Exit], None]
    ) -> None:
        spec = self.spec
        done, settled = self.done, self.settled
        assert self.scope is not None and done is not None and settled is not None
        error: Exception | None = None
        readiness: Readiness | None = None
        try:
            if delay:
                with self.scope:
                    await trio.sleep(delay)
            if not self.stop_requested:
                now = trio.current_time()
                deadline = math.inf
                if spec.readiness_timeout is not None:
                    deadline = now + spec.readiness_timeout
                scope = self.scope = trio.CancelScope(shield=True, deadline=deadline)
                self.state = spec.policy.on_started(self.state, now)
                self.status = ChildStatus.STARTING
                emitter.emit(spec.name, generation, EventKind.STARTED)

                def on_ready(value: object) -> None:
                    scope.deadline = math.inf
                    self.status = ChildStatus.RUNNING
                    emitter.emit(spec.name, generation, EventKind.READY)
                    if not self.ready_once:
                        self.value = value
                        self.ready_once = True
                        self.first_ready.set()
                    settled.set()

                readiness = Readiness(on_ready)
                error = await run_incarnation(spec.start, readiness, scope)
        finally:
            done.set()
            settled.set()
        if self.stop_requested:
            if error is not None:
                emitter.emit(spec.name, generation, EventKind.FAILED, error=error)
            return
        ready = readiness is not None and readiness.ready
        report(Exit(self, generation, error, ready))


@attrs.frozen
class Exit:
    """An incarnation ended by itself: the message a slot sends its supervisor's loop."""

    slot: Slot
    generation: int
    error: Exception | None
    ready: bool


@attrs.define(eq=False)
class Children:
    """A supervisor's children: in start order, by name, and those waiting to be started."""

    supervisor: str
    """The supervisor's name, for errors."""
    slots: list[Slot] = attrs.Factory(list)
    """Every child listed, in start order (stopped ones included, but not temporary ones)."""
    pending: collections.deque[Slot] = attrs.Factory(collections.deque)
    """Children waiting to be started in order, each ready before the next."""
    stopped: int = 0
    """How many of ``slots`` are STOPPED."""
    _by_name: dict[str, Slot] = attrs.Factory(dict)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def holds(self, slot: Slot) -> bool:
        """Whether ``slot`` is still listed (not removed, nor replaced under its name)."""
        return self._by_name.get(slot.spec.name) is slot

    def named(self, name: str) -> Slot:
        """The child called ``name``; ``KeyError`` if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            message = f"supervisor {self.supervisor!r} has no child named {name!r}"
            raise KeyError(message) from None

    def add(self, spec: ChildSpec) -> Slot:
        """List a new child, last in start order, with a fresh policy state."""
        slot = Slot(spec, spec.policy.initial_state(spec.seed))
        self.slots.append(slot)
        self._by_name[spec.name] = slot
        return slot

    def set_pending(self, slots: Iterable[Slot]) -> None:
        """Make ``slots`` (with those already pending) the pending ones, in start order."""
        merged = set(self.pending)
        merged.update(slots)
        self.pending = collections.deque(s for s in self.slots if s in merged)

    def finish(self, slot: Slot) -> None:
        """A child ended for good: temporary ones are forgotten (OTP), others stay listed."""
        slot.status = ChildStatus.STOPPED
        slot.first_ready.set()
        if slot in self.pending:
            self.pending.remove(slot)
        if slot.spec.restart is RestartType.TEMPORARY:
            self._remove(slot)
        else:
            self.stopped += 1

    def forget(self, slot: Slot) -> None:
        """A stopped child is removed for good, whatever it was (``terminate_child``)."""
        if slot.status is ChildStatus.STOPPED:
            self.stopped -= 1
        slot.status = ChildStatus.STOPPED
        slot.first_ready.set()
        self._remove(slot)

    def _remove(self, slot: Slot) -> None:
        self.slots.remove(slot)
        del self._by_name[slot.spec.name]
        if slot in self.pending:
            self.pending.remove(slot)


async def stop_in_reverse(slots: Sequence[Slot], emitter: Emitter, reason: str) -> None:
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
            emitter.emit(
                slot.spec.name,
                slot.generation,
                EventKind.SHUTDOWN_TIMEOUT,
                reason=f"still running {slot.spec.shutdown:g}s after it was cancelled",
            )
            overdue.append(slot)
        else:
            emitter.emit(slot.spec.name, slot.generation, EventKind.STOPPED, reason=reason)
    for slot in overdue:
        assert slot.done is not None
        await slot.done.wait()
        emitter.emit(slot.spec.name, slot.generation, EventKind.STOPPED, reason=reason)
