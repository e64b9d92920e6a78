"""What the benchmark scripts share: the row of a result, what a script measured, the table, the
command line, the environment record, the quieted library logger and the best-of-N helpers.

The scripts import it as ``benchmarks._common``; run as ``python benchmarks/X.py``, they first put
the repository root on ``sys.path`` so that this import works the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import platform
import statistics
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

import trio

import trio_supervise

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    SizesT = TypeVar("SizesT", bound=DataclassInstance)

RetT = TypeVar("RetT")
PosArgT = TypeVarTuple("PosArgT")

FormatValue = Callable[[float, str], str]
"""How a script writes a number of a given unit in its table."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: our number, the baseline's, and the target.

    With a baseline, the target applies to the ratio ours / baseline; without one (``baseline``
    None), it applies to ``ours`` itself. A row with no target is for information only.
    """

    key: str
    label: str
    unit: str
    ours: float
    baseline: float | None
    target: float | None
    higher_is_better: bool

    @property
    def ratio(self) -> float | None:
        """ours / baseline (for throughput higher is better, for time lower); None without one."""
        if self.baseline is None:
            return None
        return self.ours / self.baseline if self.baseline else float("inf")

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None for a row without a target)."""
        if self.target is None:
            return None
        value = self.ours if self.ratio is None else self.ratio
        if self.higher_is_better:
            return value >= self.target
        return value <= self.target

    @property
    def shortfall(self) -> float | None:
        """How far the target is missed, as a fraction of the target: 0.0 when it is met, 0.04
        for a ratio of 1.92 against ">= 2.0" or of 2.08 against "<= 2.0"; None without one."""
        if self.target is None:
            return None
        value = self.ours if self.ratio is None else self.ratio
        gap = self.target - value if self.higher_is_better else value - self.target
        return max(0.0, gap / self.target)

    @property
    def verdict(self) -> str:
        """The "met" cell: ``yes``, ``MISSED by 4%`` (see :attr:`shortfall`), or "-" without a
        target."""
        if self.met is None:
            return "-"
        if self.met:
            return "yes"
        return f"MISSED by {format_fraction(self.shortfall or 0.0)}"

    def as_dict(self) -> dict[str, Any]:
        """The row as plain JSON-able values."""
        return {
            "label": self.label,
            "unit": self.unit,
            "ours": self.ours,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target,
            "higher_is_better": self.higher_is_better,
            "met": self.met,
            "shortfall": self.shortfall,
        }


def format_fraction(fraction: float) -> str:
    """A fraction as a percentage: one decimal under 10% (``3.5%``), none above (``12%``)."""
    if fraction < 0.0005:
        return "<0.1%" if fraction > 0 else "0%"
    return f"{fraction:.1%}" if fraction < 0.0995 else f"{fraction:.0%}"


@dataclasses.dataclass(frozen=True)
class Measurements:
    """What one script measured: its rows in table order, extra numbers for some rows, and
    lines to print below its table. Each script's ``measure(sizes)`` returns one; its ``main``
    and ``python -m benchmarks`` both report it."""

    rows: tuple[Row, ...]
    extras: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    """Keyed by a row's key: numbers added to that row's dict in :meth:`results`."""
    notes: tuple[str, ...] = ()
    """Sentences about the run (chunk counts, tails, where the time went)."""
    tables: tuple[str, ...] = ()
    """Markdown tables printed after the notes (a grid that is no row of ratios)."""

    def results(self) -> dict[str, dict[str, Any]]:
        """Each row's key mapped to :meth:`Row.as_dict`, with the row's extras added."""
        results = {row.key: row.as_dict() for row in self.rows}
        for key, extra in self.extras.items():
            results[key].update(extra)
        return results


# --- measuring --------------------------------------------------------------------------------


def collected_run(async_fn: Callable[[*PosArgT], Awaitable[RetT]], *args: *PosArgT) -> RetT:
    """``trio.run(async_fn, *args)`` after a full garbage collection, so that no run pays for the
    garbage of the one before (the sides of a comparison are interleaved run by run)."""
    gc.collect()
    return trio.run(async_fn, *args)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``samples`` (``fraction`` in (0, 1])."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil, at least the first
    return ordered[int(rank) - 1]


def best_median(runs: Sequence[Sequence[float]]) -> float:
    """The best (lowest) of the runs' medians."""
    return min(statistics.median(run) for run in runs)


def pooled_percentile(runs: Sequence[Sequence[float]], fraction: float) -> float:
    """The percentile over the samples of all runs together (the tail is what it is)."""
    return percentile([x for run in runs for x in run], fraction)


@contextlib.contextmanager
def quiet_library_logger() -> Iterator[None]:
    """Raise the ``trio_supervise`` logger to ERROR for the block, and restore it afterwards.

    The benchmarks measure the library, not log formatting: with the logger raised, the events
    their failing children cause are skipped before any is built.
    """
    library_logger = logging.getLogger("trio_supervise")
    saved_level = library_logger.level
    library_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        library_logger.setLevel(saved_level)


# --- the command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None, *, prog: str, doc: str | None) -> argparse.Namespace:
    """The command line shared by the scripts: ``--quick`` and ``--repeat N``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0] if doc else None)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (a few seconds; for smoke tests)"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions per measurement (best is kept)"
    )
    return parser.parse_args(argv)


def pick_sizes(args: argparse.Namespace, *, full: SizesT, quick: SizesT) -> SizesT:
    """``quick`` with ``--quick``, else ``full``; its ``repeat`` replaced by ``--repeat``."""
    sizes = quick if args.quick else full
    if args.repeat is not None:
        if args.repeat < 1:
            raise SystemExit("--repeat must be >= 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    return sizes


# --- the report -------------------------------------------------------------------------------


def environment_record() -> dict[str, Any]:
    """Versions and machine the numbers were taken with."""
    return {
        "python": platform.python_version(),
        "trio": trio.__version__,
        "trio_supervise": trio_supervise.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def format_target(row: Row, format_value: FormatValue) -> str:
    """The target, with its direction and, for an absolute one, its unit; "no target" for a row
    given for information (DESIGN.md sets none)."""
    if row.target is None:
        return "no target"
    if row.baseline is None:
        return f"{'>' if row.higher_is_better else '<'} {format_value(row.target, row.unit)}"
    target = f"{row.target:.1f}" if round(row.target, 1) == row.target else f"{row.target:g}"
    return f"{'>=' if row.higher_is_better else '<='} {target}"


def row_cells(row: Row, format_value: FormatValue) -> tuple[str, ...]:
    """A row's cells: label, ours, baseline, ratio, target, met ("-" for what does not apply,
    "no target" where DESIGN.md sets none); numbers written by ``format_value``."""

    def value(number: float | None) -> str:
        return "-" if number is None else format_value(number, row.unit)

    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
    target = format_target(row, format_value)
    return (row.label, value(row.ours), value(row.baseline), ratio, target, row.verdict)


def format_table(rows: Sequence[Row], format_value: FormatValue) -> str:
    """The rows as an aligned text table, numbers written by ``format_value`` ("-" for none)."""
    header = ("benchmark", "ours", "baseline", "ratio", "target", "met")
    lines = [row_cells(row, format_value) for row in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def describe_environment(environment: Mapping[str, Any]) -> str:
    """The versions and CPU count of :func:`environment_record`, in one line."""
    return (
        f"trio-supervise {environment['trio_supervise']}, trio {environment['trio']}, "
        f"Python {environment['python']}, {environment['cpus']} CPUs"
    )


def report(
    measured: Measurements, *, sizes: DataclassInstance, quick: bool, format_value: FormatValue
) -> dict[str, Any]:
    """Print the run's header line, the table and the notes; return what ``main`` returns.

    Returns:
        ``{"quick", "sizes", "environment", "results"}``; ``results`` is
        :meth:`Measurements.results`.
    """
    environment = environment_record()
    sizes_record = dataclasses.asdict(sizes)
    print(
        f"{describe_environment(environment)}; "
        f"best of {sizes_record['repeat']}{' (--quick)' if quick else ''}"
    )
    print(format_table(measured.rows, format_value))
    for note in measured.notes:
        print(note)
    for table in measured.tables:
        print()
        print(table)
    return {
        "quick": quick,
        "sizes": sizes_record,
        "environment": environment,
        "results": measured.results(),
    }
