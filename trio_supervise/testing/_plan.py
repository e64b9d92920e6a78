"""Fault plans: which fault fires where, deterministic for a seed, printable and replayable.

A plan is a tuple of triggers. A trigger fires on the worker-wide ``Batch.seq`` (``at(batch=)``,
``every(n)``, or a random draw per batch) or on the tier's generation (``FAIL_LOAD``,
``FAIL_REBUILD``), never on a counter kept inside one runner, so ``at(batch=3)`` fires once and
not again in each new runner or process. A random draw is a pure function of the seed and the
batch number (SplitMix64), so a plan replays exactly. Plans compose with ``+``: for a batch, the
first trigger that fires wins.
"""

from __future__ import annotations

import enum
from typing import Any, final

import attrs

from .._errors import ConfigError
from ..supervision import next_uniform

__all__ = ["Fault", "FaultPlan", "Trigger"]


class Fault(enum.Enum):
    """What a fault does."""

    POISON = "poison"
    """Raise ContextPoisoned (a poisoned device context): the tier restarts."""
    OOM = "oom"
    """Raise OutOfMemory: the batch fails, the runner goes on."""
    UNRECOVERABLE = "unrecoverable"
    """Raise Unrecoverable: the worker stops."""
    ERROR = "error"
    """Raise a generic exception, which the default policy escalates."""
    HANG = "hang"
    """Never return (the hang timeout must catch it)."""
    SLOW = "slow"
    """Sleep ``delay`` seconds before each chunk of the batch."""
    FAIL_LOAD = "fail_load"
    """Fail ``load`` (with ContextPoisoned) in one generation."""
    FAIL_REBUILD = "fail_rebuild"
    """Fail ``rebuild_session`` (with ContextPoisoned) in one generation."""
    EXIT = "exit"
    """``os._exit(1)``: only in a child process (isolation='process')."""
    KILL = "kill"
    """SIGKILL to itself: only in a child process (isolation='process')."""

    def __repr__(self) -> str:
        return f"Fault.{self.name}"


BATCH_FAULTS = frozenset(Fault) - {Fault.FAIL_LOAD, Fault.FAIL_REBUILD}
PROCESS_ONLY = frozenset({Fault.EXIT, Fault.KILL})


@final
@attrs.frozen
class Trigger:
    """One rule of a plan (build them with the ``FaultPlan`` constructors)."""

    fault: Fault
    batch: int | None = None
    """Fire on the batch with this ``seq``."""
    every: int | None = None
    """Fire on every batch whose ``seq`` is a multiple of this (``seq > 0``)."""
    generation: int | None = None
    """For FAIL_LOAD and FAIL_REBUILD: the tier generation in which to fail."""
    rate: float | None = None
    """Fire on a batch with this probability (drawn from ``seed`` and the batch's seq)."""
    seed: int = 0
    token: int = 0
    """Fire after this many chunks of the batch (0: before the first)."""
    delay: float = 0.0
    """For SLOW: seconds before each chunk."""


def _check_token(token: int) -> None:
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise ConfigError(f"token must be an int >= 0, got {token!r}")


@final
@attrs.frozen(repr=False)
class FaultPlan:
    """Where faults fire (see the module docstring).

    Example::

        plan = FaultPlan.at(batch=3, fault=Fault.POISON) + FaultPlan.random(
            7, {Fault.POISON: 0.01, Fault.OOM: 0.02}
        )
    """

    triggers: tuple[Trigger, ...] = ()

    # --- constructors -------------------------------------------------------------------------

    @classmethod
    def none(cls) -> FaultPlan:
        """No faults."""
        return cls()

    @classmethod
    def at(
        cls,
        *,
        fault: Fault,
        batch: int | None = None,
        token: int = 0,
        generation: int | None = None,
        delay: float = 0.0,
    ) -> FaultPlan:
        """One fault: on batch ``batch`` after ``token`` chunks, or (FAIL_LOAD, FAIL_REBUILD) in
        generation ``generation``."""
        if not isinstance(fault, Fault):
            raise ConfigError(f"fault must be a Fault, got {fault!r}")
        _check_token(token)
        if fault in (Fault.FAIL_LOAD, Fault.FAIL_REBUILD):
            if not isinstance(generation, int) or generation < 1:
                raise ConfigError(f"{fault!r} needs generation=N (an int >= 1), got {generation!r}")
        elif not isinstance(batch, int) or batch < 0:
            raise ConfigError(f"{fault!r} needs batch=N (an int >= 0), got {batch!r}")
        return cls((Trigger(fault, batch=batch, generation=generation, token=token, delay=delay),))

    @classmethod
    def every(cls, n: int, fault: Fault, *, token: int = 0, delay: float = 0.0) -> FaultPlan:
        """A fault on every ``n``-th batch (seq n, 2n, ...)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"every() takes an int n >= 1, got {n!r}")
        if fault not in BATCH_FAULTS:
            raise ConfigError(f"every() takes a batch fault, got {fault!r}")
        _check_token(token)
        return cls((Trigger(fault, every=n, token=token, delay=delay),))

    @classmethod
    def random(
        cls, seed: int, rates: dict[Fault, float], *, token: int = 0, delay: float = 0.0
    ) -> FaultPlan:
        """Each batch gets at most one of the faults, with the given probabilities."""
        total = 0.0
        triggers = []
        for fault, rate in rates.items():
            if fault not in BATCH_FAULTS:
                raise ConfigError(f"random() takes batch faults, got {fault!r}")
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise ConfigError(f"the rate of {fault!r} must be in [0, 1], got {rate!r}")
            total += rate
            triggers.append(Trigger(fault, rate=float(rate), seed=seed, token=token, delay=delay))
        if total > 1:
            raise ConfigError(f"fault rates must add up to at most 1, got {total:g}")
        return cls(tuple(triggers))

    def __add__(self, other: FaultPlan) -> FaultPlan:
        if not isinstance(other, FaultPlan):
            return NotImplemented
        return FaultPlan(self.triggers + other.triggers)

    # --- queries ------------------------------------------------------------------------------

    @property
    def faults(self) -> frozenset[Fault]:
        """Every fault kind the plan can fire."""
        return frozenset(t.fault for t in self.triggers)

    def for_batch(self, seq: int) -> Trigger | None:
        """The trigger that fires on batch ``seq``, if any."""
        draws: dict[int, float] = {}
        cumulative: dict[int, float] = {}
        for trigger in self.triggers:
            if trigger.fault not in BATCH_FAULTS:
                continue
            if trigger.batch is not None and trigger.batch == seq:
                return trigger
            if trigger.every is not None and seq > 0 and seq % trigger.every == 0:
                return trigger
            if trigger.rate is not None:
                seed = trigger.seed
                if seed not in draws:
                    key = (seed * 0x9E3779B97F4A7C15 + seq) & (2**64 - 1)
                    draws[seed], _ = next_uniform(key)
                    cumulative[seed] = 0.0
                cumulative[seed] += trigger.rate
                if draws[seed] < cumulative[seed]:
                    return trigger
        return None

    def for_generation(self, fault: Fault, generation: int) -> bool:
        """Whether ``fault`` (FAIL_LOAD or FAIL_REBUILD) fires in ``generation``."""
        return any(t.fault is fault and t.generation == generation for t in self.triggers)

    # --- data ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for ``runner_args`` that cross into a child process)."""
        return {
            "triggers": [
                {k: (v.value if isinstance(v, Fault) else v) for k, v in attrs.asdict(t).items()}
                for t in self.triggers
            ]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultPlan:
        """The plan back from :meth:`to_dict`."""
        try:
            triggers = tuple(Trigger(**{**t, "fault": Fault(t["fault"])}) for t in data["triggers"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a fault plan: {data!r} ({exc})") from exc
        return cls(triggers)

    def __repr__(self) -> str:
        if not self.triggers:
            return "FaultPlan.none()"
        parts: list[str] = []
        group: list[Trigger] = []  # consecutive random triggers of one random() call

        def flush() -> None:
            if group:
                first = group[0]
                body = ", ".join(f"{t.fault!r}: {t.rate!r}" for t in group)
                parts.append(f"FaultPlan.random({first.seed}, {{{body}}}{_extra(first)})")
                group.clear()

        for t in self.triggers:
            if t.rate is not None:
                if group and (group[0].seed, group[0].token, group[0].delay) != (
                    t.seed,
                    t.token,
                    t.delay,
                ):
                    flush()
                group.append(t)
                continue
            flush()
            if t.every is not None:
                parts.append(f"FaultPlan.every({t.every}, {t.fault!r}{_extra(t)})")
            elif t.generation is not None:
                parts.append(f"FaultPlan.at(fault={t.fault!r}, generation={t.generation})")
            else:
                parts.append(f"FaultPlan.at(fault={t.fault!r}, batch={t.batch}{_extra(t)})")
        flush()
        return " + ".join(parts)


def _extra(trigger: Trigger) -> str:
    text = f", token={trigger.token}" if trigger.token else ""
    return text + (f", delay={trigger.delay!r}" if trigger.delay else "")
