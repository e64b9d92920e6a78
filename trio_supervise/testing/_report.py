"""``ChaosReport``: what a chaos run did and whether the worker survived it; the tallies that fill
it, and ``assert_survives``, which fails a test with every violation listed."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import final

import attrs

from ._invariants import RequestRecord, Violation
from ._plan import Fault, FaultPlan

__all__ = [
    "ChaosReport",
    "assert_survives",
    "latency_percentiles",
    "tally_faults",
    "tally_outcomes",
]


@final
@attrs.frozen
class ChaosReport:
    """What a chaos run did and whether the worker survived it."""

    requests: int
    """Requests submitted."""
    outcomes: dict[str, int]
    """How requests ended: ``finished``, ``rejected: <class>`` or ``failed: <class>``."""
    restarts: int
    """Tier restarts (generations beyond the first)."""
    restarts_by_cause: dict[str, int]
    """Errors that faults cause, by class, as the requests saw them: their sum is the number of
    requests a fault touched (ended with such an error)."""
    succeeded_untouched: float
    """Share of the requests no fault touched that finished (1.0 when none)."""
    tokens_per_s: float
    """Tokens delivered to consumers per second of the run."""
    latency_p50: float
    """Seconds from submit to the end, median."""
    latency_p99: float
    """Seconds from submit to the end, 99th percentile."""
    duration: float
    """Seconds the run took."""
    policy: str
    """The worker's policy, as its repr."""
    plan: str
    """The fault plan, as its repr (replayable)."""
    seed: int
    """The seed of the request mix."""
    violations: tuple[Violation, ...]
    """Every broken invariant."""
    continued: int = 0
    """Runs that continued a stream cut by a fault (``WorkerStatistics.continued``)."""
    compared: int = 0
    """Requests whose text was compared with a fault-free run (0: no such run)."""
    differed: int = 0
    """Of the ``compared``, the requests whose text differed from the fault-free run's (each one
    is in a ``same_text`` violation)."""
    faults_fired: dict[str, int] = attrs.Factory(dict)
    """The plan's faults that fired during the load, by kind (``Fault.value``): those it sets on
    the batches the worker dispatched, and ``fail_load`` in the generations it reached. A fault
    set after ``token`` chunks counts once its batch was dispatched, even if the batch ended
    with fewer chunks. Empty when none fired, or when the worker keeps no ``statistics()``."""

    @property
    def ok(self) -> bool:
        """Whether every invariant held."""
        return not self.violations

    def describe_served(self) -> str:
        """How many requests did not finish, how many of those a fault touched (they ended with
        an error a fault causes), and the share of the others that finished."""
        unfinished = self.requests - self.outcomes.get("finished", 0)
        if unfinished <= 0:
            return f"all {self.requests} requests finished"
        touched = sum(self.restarts_by_cause.values())
        untouched = sum(self.outcomes.values()) - touched
        if touched == unfinished:
            who = "all of them touched" if unfinished > 1 else "touched"
        elif touched == 0:
            who = "none of them touched" if unfinished > 1 else "not touched"
        else:
            who = f"{touched} of them touched"
        return (
            f"{unfinished} of {self.requests} requests did not finish, {who} by a fault; of the "
            f"{untouched} requests no fault touched, {self.succeeded_untouched:.2%} finished"
        )

    def describe_faults(self) -> str:
        """The faults fired, by kind: ``oom 12, poison 3`` (``none`` when none did)."""
        fired = sorted(self.faults_fired.items())
        return ", ".join(f"{kind} {count}" for kind, count in fired) or "none"

    def describe_texts(self) -> str:
        """How many texts were compared with a fault-free run, and how many matched or
        differed."""
        if not self.compared:
            return "not compared with a fault-free run"
        matched = self.compared - self.differed
        verdict = f"{matched} matched" + (f", {self.differed} differed" if self.differed else "")
        return f"{self.compared} requests compared with a fault-free run: {verdict}"

    def summary(self) -> str:
        """A few lines for people: the plan and the policy in full (both are Python)."""
        lines = [
            f"{self.requests} requests in {self.duration:.2f}s "
            f"({self.tokens_per_s:,.0f} tokens/s, latency p50 {self.latency_p50 * 1e3:.1f} ms, "
            f"p99 {self.latency_p99 * 1e3:.1f} ms), {self.restarts} restarts",
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            self.describe_served(),
            f"faults fired: {self.describe_faults()}; "
            f"streams continued after a fault: {self.continued}",
            f"texts: {self.describe_texts()}",
            f"plan: {self.plan}; seed {self.seed}",
            f"policy: {self.policy}",
        ]
        lines += [f"VIOLATION {v}" for v in self.violations] or ["all invariants hold"]
        return "\n".join(lines)


def assert_survives(report: ChaosReport) -> None:
    """Fail (AssertionError) listing every violated invariant, and how to replay the run."""
    if not report.ok:
        listing = "\n".join(f"  - {v}" for v in report.violations)
        raise AssertionError(
            f"{len(report.violations)} invariant(s) violated:\n{listing}\n"
            f"replay with plan={report.plan} seed={report.seed}"
        )


def tally_outcomes(
    records: Mapping[str, RequestRecord], caused: tuple[type[Exception], ...]
) -> tuple[dict[str, int], dict[str, int]]:
    """How the requests ended (``finished``, ``<end>: <class>``, ``open``), and the errors among
    them that faults cause (``caused``), by class."""
    outcomes: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    for record in records.values():
        if record.end == "finished":
            outcomes["finished"] += 1
        elif record.error is not None:
            name = type(record.error).__name__
            outcomes[f"{record.end}: {name}"] += 1
            if isinstance(record.error, caused):
                causes[name] += 1
        else:
            outcomes["open"] += 1
    return dict(outcomes), dict(causes)


def latency_percentiles(records: Mapping[str, RequestRecord]) -> tuple[float, float]:
    """Seconds from submit to the end of the requests that ended: the median and the 99th
    percentile (0.0 each when none ended)."""
    latencies = sorted(r.ended - r.submitted for r in records.values() if r.ended is not None)
    if not latencies:
        return 0.0, 0.0
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return statistics.median(latencies), p99


def tally_faults(plan: FaultPlan, batches: Iterable[int], generations: int) -> dict[str, int]:
    """The faults ``plan`` fires, by kind (``Fault.value``): on the batches the worker dispatched
    (``batches``: their ``seq``), and FAIL_LOAD in its generations 1 to ``generations``.

    A trigger counts once its batch was dispatched: one set after ``token`` chunks does not fire
    when its batch ends with fewer, or is cut first by another batch's fault (a runner with
    ``max_concurrency`` > 1). FAIL_REBUILD is not counted: ``run_chaos`` calls no ``rebuild()``.
    """
    fired: Counter[str] = Counter()
    for seq in batches:
        trigger = plan.for_batch(seq)
        if trigger is not None:
            fired[trigger.fault.value] += 1
    for generation in range(1, generations + 1):
        if plan.for_generation(Fault.FAIL_LOAD, generation):
            fired[Fault.FAIL_LOAD.value] += 1
    return dict(fired)
