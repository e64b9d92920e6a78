"""A circuit breaker, sans-I/O: the caller passes the time, the breaker answers and counts.

Theory of operation
-------------------
CLOSED: calls go through; ``failures`` consecutive failures (network, server, timeout errors;
the caller decides what counts) open it. OPEN: calls fail fast with :class:`CircuitOpen`, whose
``retry_after`` says when the breaker will try again. Once ``reset_timeout`` has passed, the next
call is let through alone as a probe (HALF_OPEN): its success closes the breaker, its failure
opens it again for another ``reset_timeout``. A success in CLOSED resets the count.

Every change of state goes to ``on_change(old, new)``, for events, metrics and ``/v1/workers``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, final

import attrs

from .._errors import CircuitOpen, ConfigError

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _check(instance: object, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"breaker {attribute.name} must be a finite number, got {value!r}")
    minimum = 1 if attribute.name == "failures" else 0
    if value < minimum:
        raise ConfigError(f"breaker {attribute.name} must be >= {minimum}, got {value!r}")


@final
@attrs.define(eq=False)
class CircuitBreaker:
    """``CircuitBreaker(failures=5, reset_timeout=5.0)``; see the module docstring.

    Example::

        breaker = CircuitBreaker(failures=2, reset_timeout=5.0)
        breaker.before_call(now)        # raises CircuitOpen while open
        breaker.record_failure(now)     # or breaker.record_success()
    """

    failures: int = attrs.field(default=5, validator=_check)
    """Consecutive failures that open the breaker."""
    reset_timeout: float = attrs.field(default=5.0, validator=_check)
    """Seconds it stays open before a probe is let through."""
    on_change: Callable[[BreakerState, BreakerState], object] | None = None
    """Called with ``(old, new)`` on every change of state."""
    state: BreakerState = attrs.field(default=BreakerState.CLOSED, init=False)
    """Where it stands now."""
    _count: int = attrs.field(default=0, init=False)
    _opened_at: float = attrs.field(default=0.0, init=False)
    _probing: bool = attrs.field(default=False, init=False)

    def _move(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old is not new and self.on_change is not None:
            self.on_change(old, new)

    def before_call(self, now: float) -> bool:
        """Let a call through, or raise :class:`CircuitOpen` (with ``retry_after``).

        Returns whether this call is the half-open probe: a probe that ends with no outcome to
        count (cancelled) must call :meth:`release`, or no other probe would be let through.
        """
        if self.state is BreakerState.CLOSED:
            return False
        if self.state is BreakerState.OPEN:
            wait = self._opened_at + self.reset_timeout - now
            if wait > 0:
                raise CircuitOpen(
                    f"the circuit breaker is open after {self.failures} failures; "
                    f"it tries again in {wait:.3g}s",
                    retry_after=wait,
                )
            self._move(BreakerState.HALF_OPEN)
        if self._probing:  # HALF_OPEN: one probe at a time
            raise CircuitOpen("the circuit breaker is probing the backend", retry_after=0.1)
        self._probing = True
        return True

    def record_success(self) -> None:
        """A call succeeded: a probe closes the breaker; in CLOSED the count resets."""
        self._count = 0
        self._probing = False
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def release(self) -> None:
        """The probe ended with no outcome to count (it was cancelled): the slot is free."""
        self._probing = False

    def record_failure(self, now: float) -> None:
        """A call failed (the kind that counts): open after ``failures`` in a row, or at once
        when a probe fails."""
        self._probing = False
        if self.state is BreakerState.HALF_OPEN:
            self._opened_at = now
            self._move(BreakerState.OPEN)
            return
        self._count += 1
        if self.state is BreakerState.CLOSED and self._count >= self.failures:
            self._opened_at = now
            self._move(BreakerState.OPEN)
