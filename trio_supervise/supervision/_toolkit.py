"""What every supervision driver shares: one incarnation's run, and what a decision becomes.

A driver (``supervised``, :class:`Supervisor`, the worker's own restart loop) does three things
around the pure policy, and does them the same way with these:

* check its arguments: :func:`callbacks` (``on_event``), :func:`check_readiness_timeout`;
* run one incarnation: :class:`Readiness` is the ``task_status`` it gets, and
  :func:`run_incarnation` awaits it and returns its exception rather than raise it;
* act on a :class:`Decision`: :func:`emit_decision` reports it as its event, and
  :func:`fatal_error` is what the driver raises when it gives up or escalates.
"""

# No ``from __future__ import annotations`` here: attrs copies a converter's annotations (those of
# ``callbacks``) into the ``__init__`` of the class that uses it, where strings would be resolved
# against the wrong module's names.
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

import trio

from ._decider import Directive
from ._errors import ReadinessTimeout, RestartIntensityExceeded
from ._events import Emitter, EventKind, SupervisionEvent
from ._policy import Decision

__all__ = [
    "EventCallback",
    "Readiness",
    "callbacks",
    "check_readiness_timeout",
    "emit_decision",
    "fatal_error",
    "run_incarnation",
]

EventCallback: TypeAlias = Callable[[SupervisionEvent], object]
"""An ``on_event`` observer: given every event, it must not change what happens."""


# --- arguments -----------------------------------------------------------------------------------


def callbacks(
    on_event: EventCallback | Sequence[EventCallback] | None,
) -> tuple[EventCallback, ...]:
    """Normalise an ``on_event`` argument to a tuple of callables."""
    if on_event is None:
        return ()
    items = (on_event,) if callable(on_event) else tuple(on_event)
    for item in items:
        if not callable(item):
            raise TypeError(f"on_event must be a callable or a sequence of callables, got {item!r}")
    return items


def check_readiness_timeout(value: object) -> float | None:
    """Validate a ``readiness_timeout`` argument: a finite number of seconds > 0, or None."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"readiness_timeout must be a finite number > 0 or None, got {value!r}")
    return float(value)


# --- one incarnation -----------------------------------------------------------------------------


class Readiness:
    """The ``task_status`` an incarnation gets; ``started()`` marks it ready."""

    __slots__ = ("_on_ready", "ready", "value")

    def __init__(self, on_ready: Callable[[object], None]) -> None:
        self.ready = False
        self.value: object = None
        self._on_ready = on_ready

    def started(self, value: object = None) -> None:
        """Report this incarnation ready, handing ``value`` to whoever waits for it."""
        if self.ready:
            raise RuntimeError("called 'started' twice on the same task status")
        self.ready = True
        self.value = value
        self._on_ready(value)


async def run_incarnation(
    child: Callable[..., Awaitable[object]], readiness: Readiness, scope: trio.CancelScope
) -> Exception | None:
    """Run one incarnation inside ``scope``; return its exception, or None if it returned.

    A readiness deadline that fired before the child was ready becomes ``ReadinessTimeout``.
    A ``BaseException`` that is not an ``Exception`` propagates.
    """
    try:
        with scope:
            await child(task_status=readiness)
    except Exception as exc:
        return exc
    if scope.cancelled_caught and not readiness.ready and scope.deadline <= trio.current_time():
        return ReadinessTimeout("the child was not ready within its readiness timeout")
    return None


# --- what a decision becomes ---------------------------------------------------------------------


def emit_decision(
    emitter: Emitter,
    child: str,
    generation: int,
    decision: Decision,
    error: Exception | None,
) -> None:
    """Emit the event that says what ``decision`` does (GAVE_UP, RESUMED, RESTARTING, ...)."""
    directive = decision.directive
    if decision.gave_up:
        kind = EventKind.GAVE_UP
    elif directive is Directive.RESUME:
        kind = EventKind.RESUMED
    elif directive is Directive.RESTART:
        kind = EventKind.RESTARTING
    elif directive is Directive.STOP:
        kind = EventKind.STOPPED
    else:
        kind = EventKind.ESCALATED
    delay = decision.delay if kind in (EventKind.RESUMED, EventKind.RESTARTING) else None
    emitter.emit(child, generation, kind, error=error, delay=delay, reason=decision.reason)


def fatal_error(decision: Decision, error: Exception | None, who: str) -> BaseException:
    """What a driver raises on give-up (chained to the failure) or ESCALATE (the failure)."""
    if decision.gave_up:
        exc = RestartIntensityExceeded(f"{who} gave up: {decision.reason}")
        exc.__cause__ = error  # as `raise exc from error` would
        exc.__suppress_context__ = True
        return exc
    assert error is not None, "only an exception can be escalated"
    return error
