"""How often and how soon a child may restart: the restart intensity and the backoff.

* :class:`RestartIntensity` (OTP's ``intensity``/``period``): on a restart at ``now``, earlier
  restarts ``t`` with ``t >= now - within`` are kept and ``now`` is added; more than
  ``max_restarts`` in the window means give up. Only time empties the window.
* :class:`Backoff`: the n-th consecutive failure (n = 0 first) waits
  ``min(maximum, initial * multiplier**n) * (1 - jitter * u)``, ``u`` uniform in [0, 1) from
  :func:`next_uniform`, a seeded generator whose state is a plain int carried by the caller.

Both are pure values: the time and the generator state come in as arguments and go out as
results, so the same inputs always give the same window and the same delay.
"""

from __future__ import annotations

import bisect
import math
from typing import final

import attrs

from ._errors import InvalidPolicy

__all__ = ["Backoff", "RestartIntensity", "generator_state", "next_uniform"]


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
        raise InvalidPolicy(f"{name} must be a finite number {op} {minimum:g}, got {value!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidPolicy(f"{name} must be an int >= {minimum}, got {value!r}")


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
        _check_int("max_restarts", max_restarts, 0)
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


def generator_state(seed: int) -> int:
    """The state of :func:`next_uniform`'s generator seeded with ``seed`` (its low 64 bits)."""
    return seed & _MASK64


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
            raise InvalidPolicy(
                f"initial must be <= maximum, got initial={initial!r} > maximum={maximum!r}"
            )
        _check_number("multiplier", multiplier, minimum=1)
        _check_number("jitter", jitter, minimum=0)
        if jitter > 1:
            raise InvalidPolicy(f"jitter must be a finite number in [0, 1], got {jitter!r}")
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
