"""The restart policy: a pure state machine from failures to directives.

Theory of operation
-------------------
A :class:`Policy` is three independent values:

* a **decider** maps an exception to a :class:`Directive` (``RESUME`` < ``RESTART`` < ``STOP`` <
  ``ESCALATE``, by severity); see ``_decider``.
* a **restart intensity** (OTP's ``intensity``/``period``): more than ``max_restarts`` restarts
  within ``within`` seconds means give up; see ``_pacing``.
* a **backoff**: the delay before the n-th consecutive restart, with seeded jitter. The streak
  resets once an incarnation has run for ``reset_after`` seconds without failing.

:class:`PolicyState` is an immutable value. The driver feeds it events, always passing the time:
``on_started(state, now)`` when an incarnation starts, ``on_failure(state, error, now)`` when one
ends (``error=None``: a permanent child returned normally), or ``on_exit`` to apply the child's
:class:`RestartType` first. Each returns a :class:`Decision` and the next state. Nothing here
imports Trio or reads a clock.

``RESUME`` (keep the resource, fail only the unit of work) is never counted against the
intensity; its delay is the error's ``retry_after`` when it has one, else the backoff's.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, TypeGuard, final

import attrs

from ._decider import Decider, Directive, decide
from ._errors import InvalidPolicy
from ._pacing import Backoff, RestartIntensity, generator_state

__all__ = ["Decision", "Policy", "PolicyState", "RestartType"]


class RestartType(enum.Enum):
    """When a child is restarted (OTP's restart types)."""

    PERMANENT = "permanent"
    """Always restarted, after a failure and after a normal return (which counts)."""
    TRANSIENT = "transient"
    """Restarted only after a failure; a normal return ends it."""
    TEMPORARY = "temporary"
    """Never restarted; a failure is reported, and escalates only if the decider says so."""

    def __repr__(self) -> str:
        return f"RestartType.{self.name}"

    __str__ = __repr__


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


@final
@attrs.frozen
class PolicyState:
    """Where one supervised child stands; an immutable value threaded through the policy."""

    restarts: tuple[float, ...] = ()
    """Times of the counted restarts still in the intensity window, oldest first."""
    streak: int = 0
    """Consecutive failures so far (the backoff's ``n``)."""
    started_at: float | None = None
    """When the current incarnation started, or ``None`` while none is running."""
    rng: int = 0
    """The jitter generator's state."""


@final
@attrs.frozen
class Decision:
    """What the policy decided about one failure."""

    directive: Directive
    """What to do. ``ESCALATE`` when the intensity was exceeded (then ``gave_up`` is True)."""
    delay: float
    """Seconds to wait before resuming or restarting (0 for STOP and ESCALATE)."""
    gave_up: bool
    """True when this failure exceeded the restart intensity."""
    reason: str
    """A readable sentence saying why."""
    counted: bool = False
    """True when this failure was counted against the restart intensity."""


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "a normal return"
    text = str(error)
    return f"{type(error).__name__}({text!r})" if text else type(error).__name__


def _validate_decider(instance: Any, attribute: Any, value: Any) -> None:
    if not callable(value):
        raise InvalidPolicy(f"decider must be callable (exception -> Directive), got {value!r}")


def _validate_instance(cls: type) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if not isinstance(value, cls):
            raise InvalidPolicy(f"{attribute.name} must be a {cls.__name__}, got {value!r}")

    return check


@final
@attrs.frozen
class Policy:
    """How a supervisor answers failures: a decider, a restart intensity, a backoff.

    Example::

        policy = Policy(
            rules(on(ContextPoisoned, Directive.RESTART), on(OutOfMemory, Directive.RESUME)),
            RestartIntensity(3, 60.0),
            Backoff(0.1, 5.0, jitter=0.2),
        )
        state = policy.initial_state(seed=1)
        state = policy.on_started(state, now=0.0)
        decision, state = policy.on_failure(state, ContextPoisoned("boom"), now=2.5)
        assert decision.directive is Directive.RESTART

    Policies are values: derive variants with ``attrs.evolve(policy, backoff=...)``.
    """

    decider: Decider = attrs.field(validator=_validate_decider)
    """Maps an exception to a directive (see :func:`rules`)."""
    intensity: RestartIntensity = attrs.field(
        default=RestartIntensity(1, 5.0), validator=_validate_instance(RestartIntensity)
    )
    """The restart window (OTP's default: 1 restart within 5 seconds)."""
    backoff: Backoff = attrs.field(factory=Backoff.none, validator=_validate_instance(Backoff))
    """The delay before each restart (default: none)."""

    def initial_state(self, seed: int = 0) -> PolicyState:
        """A fresh state: no restarts, no streak, the jitter generator seeded with ``seed``."""
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        return PolicyState(rng=generator_state(seed))

    def decide(self, exc: Exception) -> Directive:
        """The directive for ``exc`` alone (no counting); see :func:`decide`."""
        return decide(self.decider, exc)

    def on_started(self, state: PolicyState, now: float) -> PolicyState:
        """An incarnation started at ``now`` (the backoff's streak resets after a healthy run)."""
        return PolicyState(state.restarts, state.streak, now, state.rng)

    def on_exit(
        self,
        state: PolicyState,
        error: Exception | None,
        now: float,
        *,
        restart: RestartType = RestartType.PERMANENT,
        ready: bool = True,
    ) -> tuple[Decision, PolicyState]:
        """Decide about an incarnation that ended, by the child's :class:`RestartType` (OTP).

        - ``PERMANENT``: as :meth:`on_failure` (a normal return is a counted restart).
        - ``TRANSIENT``: a normal return is a ``STOP``; a failure, as :meth:`on_failure`.
        - ``TEMPORARY``: never restarted: a failure is ``ESCALATE`` only when the decider says
          so, else ``STOP``; nothing is counted.
        """
        if restart is RestartType.PERMANENT or (
            restart is RestartType.TRANSIENT and error is not None
        ):
            return self.on_failure(state, error, now, ready=ready)
        state = attrs.evolve(state, started_at=None)
        kind = restart.name.lower()
        if error is None:
            return Decision(Directive.STOP, 0.0, False, f"a {kind} child returned normally"), state
        directive = self.decide(error)
        what = _describe(error)
        if directive is Directive.ESCALATE:
            return Decision(directive, 0.0, False, f"{what}: the decider says ESCALATE"), state
        reason = f"{what}: a temporary child is never restarted (the decider said {directive.name})"
        return Decision(Directive.STOP, 0.0, False, reason), state

    def on_failure(
        self,
        state: PolicyState,
        error: Exception | None,
        now: float,
        *,
        ready: bool = True,
    ) -> tuple[Decision, PolicyState]:
        """Decide about an incarnation that ended at ``now``.

        Args:
            state: the current state.
            error: the exception it ended with, or ``None`` when a permanent child returned
                normally (a counted restart).
            now: the time, from the driver's clock.
            ready: whether the incarnation had reported ready. A failure before readiness is
                never resumed: a ``RESUME`` becomes a counted ``RESTART``.

        Returns:
            The decision and the next state.

        Raises:
            TypeError: ``error`` is a BaseException that is not an Exception; it must propagate.
        """
        streak = state.streak
        if state.started_at is not None and now - state.started_at >= (
            self.backoff.effective_reset_after
        ):
            streak = 0
        what = _describe(error)
        if error is None:
            directive = Directive.RESTART
            why = "a permanent child returned, so it is restarted"
        else:
            directive = self.decide(error)
            why = f"the decider says {directive.name}"
            if directive is Directive.RESUME and not ready:
                directive = Directive.RESTART
                why = "it failed before it was ready, so RESUME becomes a counted RESTART"
        if directive is Directive.RESUME:
            retry_after = getattr(error, "retry_after", None)
            delay, rng = self.backoff.delay(streak, state.rng)
            if _is_number(retry_after) and math.isfinite(retry_after) and retry_after >= 0:
                delay = float(retry_after)
                why += f", after the error's retry_after of {delay:g}s"
            decision = Decision(directive, delay, False, f"{what}: {why} (not counted)")
            return decision, PolicyState(state.restarts, streak + 1, None, rng)

        if directive is not Directive.RESTART:
            decision = Decision(directive, 0.0, False, f"{what}: {why}")
            return decision, PolicyState(state.restarts, state.streak, None, state.rng)

        window, exceeded = self.intensity.record(state.restarts, now)
        if exceeded:
            limit = self.intensity
            reason = (
                f"{what}: {len(window)} restarts within {limit.within:g}s exceed "
                f"max_restarts={limit.max_restarts}, so the supervisor gives up"
            )
            decision = Decision(Directive.ESCALATE, 0.0, True, reason, counted=True)
            return decision, PolicyState(window, state.streak, None, state.rng)
        delay, rng = self.backoff.delay(streak, state.rng)
        reason = (
            f"{what}: {why}; restart {len(window)} of {self.intensity.max_restarts} "
            f"within {self.intensity.within:g}s, after {delay:.3g}s"
        )
        decision = Decision(Directive.RESTART, delay, False, reason, counted=True)
        return decision, PolicyState(window, streak + 1, None, rng)
