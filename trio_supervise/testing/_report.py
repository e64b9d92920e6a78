"""``ChaosReport``: what a chaos run did and whether the worker survived it; the tallies that fill
it, and ``assert_survives``, which fails a test with every violation listed."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping
from typing import final

import attrs

from ._invariants import RequestRecord, Violation

__all__ = ["ChaosReport", "assert_survives", "latency_percentiles", "tally_outcomes"]


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
    """Restart-causing errors seen by requests, by class."""
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

    @property
    def ok(self) -> bool:
        """Whether every invariant held."""
        return not self.violations

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"{self.requests} requests in {self.duration:.2f}s "
            f"({self.tokens_per_s:,.0f} tokens/s, latency p50 {self.latency_p50 * 1e3:.1f} ms, "
            f"p99 {self.latency_p99 * 1e3:.1f} ms), {self.restarts} restarts",
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            f"untouched by a fault and served: {self.succeeded_untouched:.2%}; "
            f"streams continued after a fault: {self.continued}",
            f"plan: {self.plan}; seed {self.seed}",
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
