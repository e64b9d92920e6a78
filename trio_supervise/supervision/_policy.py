"""The restart policy: a pure state machine from failures to directives.

Theory of operation
-------------------
A :class:`Policy` is three independent values:

* a **decider** maps an exception to a :class:`Directive` (``RESUME`` < ``RESTART`` < ``STOP`` <
  ``ESCALATE``, by severity). :func:`rules` builds one from :func:`on` rules, first match wins; any
  callable ``exc -> Directive`` also works. An ``ExceptionGroup`` gets the most severe directive
  of its leaves. Only ``Exception`` instances are decided: ``trio.Cancelled``,
  ``KeyboardInterrupt`` and friends must propagate, so deciding one raises ``TypeError``.
* a **restart intensity** (OTP's ``intensity``/``period``): on a restart at ``now``, earlier
  restarts ``t`` with ``t >= now - within`` are kept and ``now`` is added; more than
  ``max_restarts`` in the window means give up. Only time empties the window.
* a **backoff**: the n-th consecutive failure (n = 0 first) waits
  ``min(maximum, initial * multiplier**n) * (1 - jitter * u)``, ``u`` uniform in [0, 1) from a
  seeded generator carried in the state. The streak resets once an incarnation has run for
  ``reset_after`` seconds without failing.

:class:`PolicyState` is an immutable value. The driver feeds it events, always passing the time:
``on_started(state, now)`` when an incarnation starts, ``on_failure(state, error, now)`` when one
ends (``error=None``: a permanent child returned normally). ``on_failure`` returns a
:class:`Decision` and the next state. Nothing here imports Trio or reads a clock.

``RESUME`` (keep the resource, fail only the unit of work) is never counted against the
intensity; its delay is the error's ``retry_after`` when it has one, else the backoff's.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Callable
from typing import Any, TypeAlias, TypeGuard, final

import attrs

from ._errors import InvalidPolicy, leaves

__all__ = [
    "Backoff",
    "Decider",
    "Decision",
    "Directive",
    "Policy",
    "PolicyState",
    "RestartIntensity",
    "RestartType",
    "Rule",
    "Rules",
    "decide",
    "on",
    "rules",
]


class Directive(enum.IntEnum):
    """What to do about a failure, ordered by severity: ``max()`` picks the most severe."""

    RESUME = 0
    """Keep the resource; fail only the unit of work and go on."""
    RESTART = 1
    """Tear the child down and build a fresh one (counted against the intensity)."""
    STOP = 2
    """End the child for good, cleanly."""
    ESCALATE = 3
    """Fail the supervisor itself with the error, so its own supervisor decides."""

    def __repr__(self) -> str:
        return f"Directive.{self.name}"

    __str__ = __repr__


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


Decider: TypeAlias = Callable[[Exception], Directive]
"""Anything that maps an exception to a :class:`Directive`."""


def _fail(message: str) -> InvalidPolicy:
    return InvalidPolicy(message)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_number(name: str, value: object, *, minimum: float, strict: bool = False) -> None:
    """Raise InvalidPolicy unless value is a finite real number >= (or >) minimum."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )
    if not ok:
        op = ">" if strict else ">="
        raise _fail(f"{name} must be a finite number {op} {minimum:g}, got {value!r}")


def _refuse_non_exception(exc: object) -> None:
    if not isinstance(exc, Exception):
        name = type(exc).__name__
        raise TypeError(
            f"only Exception instances are decided; {name} must propagate, not be decided"
        )


def decide(decider: Decider, exc: Exception) -> Directive:
    """Apply ``decider`` to ``exc``, with the rules every decider shares.

    An ``ExceptionGroup`` gets the most severe directive of its leaves. A ``BaseException`` that
    is not an ``Exception`` (``trio.Cancelled``, ``KeyboardInterrupt``, a group holding one)
    raises ``TypeError``: it must propagate. A decider that returns something other than a
    :class:`Directive` raises :class:`InvalidPolicy`.
    """
    _refuse_non_exception(exc)
    if isinstance(exc, BaseExceptionGroup):
        return max(decide(decider, leaf) for leaf in leaves(exc) if isinstance(leaf, Exception))
    directive = decider(exc)
    if not isinstance(directive, Directive):
        raise _fail(f"decider {decider!r} must return a Directive, got {directive!r} for {exc!r}")
    return directive


def _type_name(cls: type) -> str:
    return cls.__qualname__


@final
@attrs.frozen(repr=False)
class Rule:
    """One rule of a decider: exceptions of these types get this directive. Built by :func:`on`."""

    exception_types: tuple[type[Exception], ...]
    """The exception classes this rule matches (``isinstance``)."""
    directive: Directive
    """The directive for a match."""

    def matches(self, exc: BaseException) -> bool:
        """Whether ``exc`` is an instance of one of this rule's types."""
        return isinstance(exc, self.exception_types)

    def __repr__(self) -> str:
        names = ", ".join(_type_name(t) for t in self.exception_types)
        return f"on({names}, {self.directive!r})"


def on(*types_then_directive: type[Exception] | Directive) -> Rule:
    """A rule: ``on(ContextPoisoned, HungWorker, Directive.RESTART)``.

    Every argument but the last is an ``Exception`` subclass; the last is the directive.
    """
    if len(types_then_directive) < 2:
        raise _fail(
            "on() takes one or more exception types and then a Directive, "
            f"got {len(types_then_directive)} argument(s)"
        )
    types: tuple[object, ...] = types_then_directive[:-1]
    directive = types_then_directive[-1]
    checked: list[type[Exception]] = []
    if not isinstance(directive, Directive):
        raise _fail(f"on()'s last argument must be a Directive, got {directive!r}")
    for t in types:
        if isinstance(t, type) and issubclass(t, Exception):
            checked.append(t)
            continue
        hint = ""
        if isinstance(t, type) and issubclass(t, BaseException):
            hint = " (a BaseException that is not an Exception must propagate)"
        raise _fail(f"on() takes Exception subclasses before the directive, got {t!r}{hint}")
    return Rule(tuple(checked), directive)


@final
@attrs.frozen(repr=False)
class Rules:
    """A decider made of rules, first match wins; ``default`` when none matches.

    Built by :func:`rules`. Rules compose as plain tuples: to override a decider, put your rules
    first, ``rules(on(MyError, Directive.RESUME), *base.rules, default=base.default)``.
    """

    rules: tuple[Rule, ...]
    """The rules, tried in order."""
    default: Directive
    """The directive when no rule matches."""

    def __call__(self, exc: Exception) -> Directive:
        """Decide ``exc`` (see :func:`decide` for groups and non-exceptions)."""
        if isinstance(exc, BaseExceptionGroup) or not isinstance(exc, Exception):
            return decide(self, exc)
        for rule in self.rules:
            if rule.matches(exc):
                return rule.directive
        return self.default

    def __repr__(self) -> str:
        parts = [repr(r) for r in self.rules]
        parts.append(f"default={self.default!r}")
        return f"rules({', '.join(parts)})"


def rules(*rules: Rule, default: Directive = Directive.ESCALATE) -> Rules:
    """A decider from :func:`on` rules: ``rules(on(OutOfMemory, Directive.RESUME))``."""
    for rule in rules:
        if not isinstance(rule, Rule):
            raise _fail(f"rules() takes rules built by on(), got {rule!r}")
    if not isinstance(default, Directive):
        raise _fail(f"rules()'s default must be a Directive, got {default!r}")
    return Rules(tuple(rules), default)


def _validate_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(f"{name} must be an int >= {minimum}, got {value!r}")


@final
@attrs.frozen
class RestartIntensity:
    """At most ``max_restarts`` restarts within any ``within`` seconds (OTP semantics).

    Example: ``RestartIntensity(3, 60.0)`` gives up on the 4th restart inside a minute.
    """

    max_restarts: int
    """How many restarts the window may hold (``>= 0``; 0 means give up on the first)."""
    within: float
    """The window's length in seconds (``> 0``)."""

    def __init__(self, max_restarts: int, within: float) -> None:
        _validate_int("max_restarts", max_restarts, 0)
        _check_number("within", within, minimum=0, strict=True)
        self.__attrs_init__(max_restarts, float(within))  # type: ignore[attr-defined]

    def record(self, restarts: tuple[float, ...], now: float) -> tuple[tuple[float, ...], bool]:
        """Add a restart at ``now`` to the window ``restarts`` (oldest first).

        Returns the new window (times ``t >= now - within``, then ``now``) and whether it now
        holds more than ``max_restarts``, which means: give up.
        """
        if restarts and now < restarts[-1]:
            raise ValueError(f"time must not go backwards: got now={now!r} after {restarts[-1]!r}")
        # The window is sorted, so the times to keep are a suffix: bisect, then slice.
        kept = (*restarts[bisect.bisect_left(restarts, now - self.within) :], now)
        return kept, len(kept) > self.max_restarts


_MASK64 = (1 << 64) - 1


def next_uniform(rng: int) -> tuple[float, int]:
    """SplitMix64: a uniform float in [0, 1) and the next generator state (both pure values)."""
    rng = (rng + 0x9E3779B97F4A7C15) & _MASK64
    z = rng
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53), rng


@final
@attrs.frozen
class Backoff:
    """How long to wait before the n-th consecutive restart.

    The n-th (0-based) waits ``min(maximum, initial * multiplier**n) * (1 - jitter*u)``, ``u``
    uniform in [0, 1), so ``0 <= delay <= maximum``. The streak resets once an incarnation ran
    for ``reset_after`` seconds (default: ``maximum``) without failing.

    Example: ``Backoff(0.1, 5.0, jitter=0.2)`` waits about 0.1, 0.2, 0.4, ... up to 5 seconds.
    """

    initial: float
    """The first delay, in seconds (``0 <= initial <= maximum``)."""
    maximum: float
    """The cap on any delay, in seconds."""
    multiplier: float = 2.0
    """Growth per consecutive restart (``>= 1``)."""
    jitter: float = 0.0
    """Fraction of the delay that may be shaved off at random (``0 <= jitter <= 1``)."""
    reset_after: float | None = None
    """Seconds of healthy running that reset the streak; ``None`` means ``maximum``."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        multiplier: float = 2.0,
        jitter: float = 0.0,
        reset_after: float | None = None,
    ) -> None:
        _check_number("initial", initial, minimum=0)
        _check_number("maximum", maximum, minimum=0)
        if initial > maximum:
            raise _fail(
                f"initial must be <= maximum, got initial={initial!r} > maximum={maximum!r}"
            )
        _check_number("multiplier", multiplier, minimum=1)
        _check_number("jitter", jitter, minimum=0)
        if jitter > 1:
            raise _fail(f"jitter must be a finite number in [0, 1], got {jitter!r}")
        if reset_after is not None:
            _check_number("reset_after", reset_after, minimum=0)
        self.__attrs_init__(  # type: ignore[attr-defined]
            float(initial),
            float(maximum),
            float(multiplier),
            float(jitter),
            None if reset_after is None else float(reset_after),
        )

    @classmethod
    def none(cls) -> Backoff:
        """No waiting: restart at once."""
        return cls(0.0, 0.0)

    @property
    def effective_reset_after(self) -> float:
        """``reset_after``, with ``None`` resolved to ``maximum``."""
        return self.maximum if self.reset_after is None else self.reset_after

    def capped(self, streak: int) -> float:
        """``min(maximum, initial * multiplier**streak)``: the delay before jitter."""
        if streak < 0:
            raise ValueError(f"streak must be >= 0, got {streak!r}")
        if self.initial == 0.0:
            return 0.0
        try:
            raw = self.initial * self.multiplier**streak
        except OverflowError:
            return self.maximum
        return min(self.maximum, raw)

    def delay(self, streak: int, rng: int) -> tuple[float, int]:
        """The delay before the ``streak``-th consecutive restart, and the next generator state.

        ``rng`` is the generator state (a :class:`PolicyState` carries it); the same state gives
        the same delay.
        """
        u, rng = next_uniform(rng)
        return self.capped(streak) * (1.0 - self.jitter * u), rng

    def __repr__(self) -> str:
        if self == Backoff.none():
            return "Backoff.none()"
        parts = [f"initial={self.initial!r}", f"maximum={self.maximum!r}"]
        if self.multiplier != 2.0:
            parts.append(f"multiplier={self.multiplier!r}")
        if self.jitter:
            parts.append(f"jitter={self.jitter!r}")
        if self.reset_after is not None:
            parts.append(f"reset_after={self.reset_after!r}")
        return f"Backoff({', '.join(parts)})"


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
        raise _fail(f"decider must be callable (exception -> Directive), got {value!r}")


def _validate_instance(cls: type) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if not isinstance(value, cls):
            raise _fail(f"{attribute.name} must be a {cls.__name__}, got {value!r}")

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
        return PolicyState(rng=seed & _MASK64)

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
