"""Supervision events: every decision a supervisor takes, as an immutable record.

Events go to ``on_event`` callbacks, to subscriptions (bounded channels that drop the oldest
event rather than block the supervisor, and count what they dropped), and to the stdlib logger
``trio_supervise``.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Callable
from typing import final

import attrs
import trio

__all__ = ["EventKind", "EventSubscription", "SupervisionEvent"]

logger = logging.getLogger("trio_supervise")
# A library leaves output to the application: without its own logging setup, nothing is printed.
logger.addHandler(logging.NullHandler())


class EventKind(enum.Enum):
    """What happened to a supervised child."""

    STARTED = "started"
    """An incarnation was started."""
    READY = "ready"
    """An incarnation reported ready (``task_status.started()``)."""
    FAILED = "failed"
    """An incarnation ended with an exception (``error``)."""
    RESUMED = "resumed"
    """The policy said RESUME: run again, uncounted, after ``delay``."""
    RESTARTING = "restarting"
    """The policy said RESTART: a counted restart after ``delay``."""
    STOPPED = "stopped"
    """The child ended for good, cleanly (a STOP, a normal exit, or a terminate)."""
    ESCALATED = "escalated"
    """The policy said ESCALATE: the supervisor fails with ``error``."""
    GAVE_UP = "gave_up"
    """The restart intensity was exceeded: the supervisor gives up."""
    SHUTDOWN_TIMEOUT = "shutdown_timeout"
    """A child outlived its shutdown timeout; the supervisor stops the others, then waits."""
    THREAD_ABANDONED = "thread_abandoned"
    """Work in a thread was abandoned on cancellation; its device is untrusted from then on."""
    BREAKER_CHANGED = "breaker_changed"
    """A circuit breaker changed state."""

    def __repr__(self) -> str:
        return f"EventKind.{self.name}"


_LEVELS = {
    EventKind.STARTED: logging.DEBUG,
    EventKind.READY: logging.DEBUG,
    EventKind.FAILED: logging.WARNING,
    EventKind.RESUMED: logging.INFO,
    EventKind.RESTARTING: logging.INFO,
    EventKind.STOPPED: logging.INFO,
    EventKind.ESCALATED: logging.ERROR,
    EventKind.GAVE_UP: logging.ERROR,
    EventKind.SHUTDOWN_TIMEOUT: logging.WARNING,
    EventKind.THREAD_ABANDONED: logging.WARNING,
    EventKind.BREAKER_CHANGED: logging.INFO,
}


@final
@attrs.frozen
class SupervisionEvent:
    """One decision or observation of a supervisor."""

    time: float
    """``trio.current_time()`` when it happened."""
    supervisor: str
    """The supervisor's name (for ``supervised``, its ``name``)."""
    child: str
    """The child's name."""
    generation: int
    """The child's incarnation, 1 for the first."""
    kind: EventKind
    """What happened."""
    error: BaseException | None = None
    """The failure, for FAILED, ESCALATED, GAVE_UP, and a STOP caused by an error."""
    delay: float | None = None
    """The wait before a RESUMED or RESTARTING incarnation."""
    reason: str = ""
    """The policy's sentence, when a decision was taken."""

    def describe(self) -> str:
        """A one-line text for logs."""
        text = f"{self.supervisor}/{self.child}#{self.generation} {self.kind.value}"
        if self.reason:  # the policy's sentence names the error and the delay itself
            return f"{text}: {self.reason}"
        if self.error is not None:
            text += f": {self.error!r}"
        if self.delay is not None:
            text += f" (in {self.delay:.3g}s)"
        return text


@final
class EventSubscription(trio.abc.ReceiveChannel[SupervisionEvent]):
    """A bounded channel of events that drops the oldest rather than block the supervisor.

    ``dropped`` counts the events lost that way. It ends (``EndOfChannel``) when the supervisor
    ends, so ``async for event in subscription`` finishes by itself.
    """

    def __init__(self, max_buffer: int, on_close: Callable[[EventSubscription], None]) -> None:
        if not isinstance(max_buffer, int) or max_buffer < 1:
            raise ValueError(f"max_buffer must be an int >= 1, got {max_buffer!r}")
        self._buffer: collections.deque[SupervisionEvent] = collections.deque()
        self._max_buffer = max_buffer
        self._lot = trio.lowlevel.ParkingLot()
        self._ended = False
        self._closed = False
        self._on_close = on_close
        self.dropped = 0

    def _push(self, event: SupervisionEvent) -> None:
        if len(self._buffer) >= self._max_buffer:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(event)
        self._lot.unpark()

    def _end(self) -> None:
        self._ended = True
        self._lot.unpark_all()

    def receive_nowait(self) -> SupervisionEvent:
        """The oldest buffered event; ``trio.WouldBlock`` when there is none yet."""
        if self._closed:
            raise trio.ClosedResourceError("this subscription was closed")
        if self._buffer:
            return self._buffer.popleft()
        if self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> SupervisionEvent:
        """Wait for the next event; ``trio.EndOfChannel`` once the supervisor has ended."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not (self._buffer or self._ended or self._closed):
            await self._lot.park()
        event = self.receive_nowait()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    async def aclose(self) -> None:
        """Stop receiving; the supervisor forgets this subscription."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        if not self._closed:
            self._closed = True
            self._buffer.clear()
            self._on_close(self)
            self._lot.unpark_all()


@attrs.define(eq=False)
class Emitter:
    """Sends a supervisor's events to its callbacks, subscriptions and logger."""

    supervisor: str
    callbacks: tuple[Callable[[SupervisionEvent], object], ...] = ()
    subscriptions: list[EventSubscription] = attrs.field(factory=list)

    def emit(
        self,
        child: str,
        generation: int,
        kind: EventKind,
        *,
        error: BaseException | None = None,
        delay: float | None = None,
        reason: str = "",
    ) -> None:
        """Record one event (cheaply skipped when nobody listens)."""
        level = _LEVELS[kind]
        logged = logger.isEnabledFor(level)
        if not (logged or self.callbacks or self.subscriptions):
            return
        event = SupervisionEvent(
            trio.current_time(), self.supervisor, child, generation, kind, error, delay, reason
        )
        if logged:
            logger.log(level, "%s", event.describe(), extra={"supervision_event": event})
        for callback in self.callbacks:
            try:
                callback(event)
            except Exception:
                # A broken observer must not take the supervisor down; it is reported instead.
                logger.exception("on_event callback %r failed on %s", callback, event.describe())
        for subscription in self.subscriptions:
            subscription._push(event)

    def subscribe(self, max_buffer: int = 256) -> EventSubscription:
        """A new subscription to every later event."""
        subscription = EventSubscription(max_buffer, self.subscriptions.remove)
        self.subscriptions.append(subscription)
        return subscription

    def close(self) -> None:
        """End every subscription (the supervisor has ended)."""
        for subscription in self.subscriptions:
            subscription._end()
