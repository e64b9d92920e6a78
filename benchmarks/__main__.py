"""``python -m benchmarks``: every CPU benchmark in one run, as a JSON file and a markdown table.

Runs the scripts' ``measure`` functions one after another (``bench_supervisor``,
``bench_worker``, ``bench_http``, ``bench_ray`` where Ray is installed, and
``bench_transformers`` where PyTorch and ``transformers`` are; a suite left out for want of them
says so in a note; each still runs on its own too), then writes:

* a JSON file (``--json PATH``; default ``benchmarks/results.json``, next to this file) with
  the environment, the sizes, every row's numbers and the rows whose target was missed;
* a markdown table (printed to stdout, and written to ``--markdown PATH`` if given): one row
  per benchmark with our number, the baseline's, the ratio, the DESIGN.md target and whether
  it is met; a missed target says by how much, e.g. ``MISSED by 4%`` (see ``Row.shortfall``).

Progress goes to stderr, so stdout holds the table alone. The full run takes about three
minutes on a 2-core machine (the transformers suite about 40 s of it); ``--quick`` (small sizes,
a few seconds) is for smoke tests and its numbers mean little. ``--repeat N`` overrides every
script's repetitions; ``--only NAME`` runs a subset. ``--busy N`` keeps N other processes busy
(``while True: pass``) for the whole run, as on a loaded machine; ``--idle-and-busy`` runs
everything twice, idle and then with one busy process per CPU, and prints one table with both
columns (the JSON then holds ``{"idle", "busy"}``). ``trio-supervise bench [ARGS]`` runs this
from a checkout. The exit status is 0 whether targets are met or not: the table is the verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from benchmarks import (
    bench_http,
    bench_ray,
    bench_supervisor,
    bench_transformers,
    bench_worker,
)
from benchmarks._common import (
    FormatValue,
    Measurements,
    describe_environment,
    environment_record,
    pick_sizes,
    row_cells,
)

SizesT = TypeVar("SizesT")

DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"
"""Where the JSON goes without ``--json`` (git-ignored)."""


@dataclasses.dataclass(frozen=True)
class Suite(Generic[SizesT]):
    """One script, as this entry runs it: its ``measure``, its sizes and its number format."""

    name: str
    measure: Callable[[SizesT], Measurements]
    full: SizesT
    quick: SizesT
    format_value: FormatValue


def installed(*modules: str) -> bool:
    """Whether every one of these modules can be imported (without importing it)."""
    return all(importlib.util.find_spec(module) is not None for module in modules)


OPTIONAL: dict[str, tuple[tuple[str, ...], str]] = {
    "ray": (("ray",), "Ray is not installed: pip install 'trio-supervise[ray]'"),
    "transformers": (
        ("torch", "transformers"),
        "PyTorch or transformers is not installed: pip install 'trio-supervise[transformers]'",
    ),
}
"""The suites that need an extra: the modules they import, and why they are left out without
them."""

SKIPPED: dict[str, str] = {
    name: why for name, (modules, why) in OPTIONAL.items() if not installed(*modules)
}
"""The optional suites this environment cannot run, and why (a note in the report)."""

SUITES: tuple[Suite[Any], ...] = (
    Suite(
        "supervisor",
        bench_supervisor.measure,
        bench_supervisor.FULL,
        bench_supervisor.QUICK,
        bench_supervisor.format_value,
    ),
    Suite(
        "worker",
        bench_worker.measure,
        bench_worker.FULL,
        bench_worker.QUICK,
        bench_worker.format_value,
    ),
    Suite("http", bench_http.measure, bench_http.FULL, bench_http.QUICK, bench_http.format_value),
    *(
        [Suite("ray", bench_ray.measure, bench_ray.FULL, bench_ray.QUICK, bench_ray.format_value)]
        if "ray" not in SKIPPED
        else []
    ),
    *(
        [
            Suite(
                "transformers",
                bench_transformers.measure,
                bench_transformers.FULL,
                bench_transformers.QUICK,
                bench_transformers.format_value,
            )
        ]
        if "transformers" not in SKIPPED
        else []
    ),
)


@dataclasses.dataclass(frozen=True)
class SuiteRun:
    """What one suite measured in this run, and how long it took."""

    suite: Suite[Any]
    sizes: Any
    measured: Measurements
    wall_s: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """``--quick``, ``--repeat N``, ``--only NAME``, ``--json PATH`` and ``--markdown PATH``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Every CPU benchmark in one run: a JSON file and a markdown table of "
        "ratios against their baselines, with their targets (docs/benchmarks.md).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (a few seconds; for smoke tests)"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions per measurement (best is kept)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[suite.name for suite in SUITES],
        help="run only this suite (repeatable; default: all)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help="where to write the JSON results (default: benchmarks/results.json)",
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, metavar="PATH", help="also write the table here"
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="keep N other processes busy during the run, as on a loaded machine (default: 0)",
    )
    parser.add_argument(
        "--idle-and-busy",
        action="store_true",
        help="run twice, idle and with one busy process per CPU; one table with both columns",
    )
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.busy < 0:
        parser.error("--busy must be >= 0")
    if args.busy and args.idle_and_busy:
        parser.error("--busy and --idle-and-busy exclude each other")
    return args


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes that keep a CPU busy each, for the body; killed and reaped after."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


def run_suites(args: argparse.Namespace) -> list[SuiteRun]:
    """Run the chosen suites in order, progress on stderr."""
    chosen = [suite for suite in SUITES if not args.only or suite.name in args.only]
    if not args.only:
        for name, why in SKIPPED.items():
            print(f"{name}: skipped ({why})", file=sys.stderr, flush=True)
    runs = []
    for number, suite in enumerate(chosen, 1):
        sizes = pick_sizes(args, full=suite.full, quick=suite.quick)
        print(f"[{number}/{len(chosen)}] {suite.name}: {sizes}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        measured = suite.measure(sizes)
        wall_s = time.perf_counter() - start
        print(f"[{number}/{len(chosen)}] {suite.name}: {wall_s:.1f} s", file=sys.stderr, flush=True)
        runs.append(SuiteRun(suite, sizes, measured, wall_s))
    return runs


# --- the markdown table -----------------------------------------------------------------------

HEADER = ("benchmark", "ours", "baseline", "ratio", "target", "met")
RIGHT_ALIGNED = (False, True, True, True, False, False)


def table_cells(run: SuiteRun) -> list[tuple[str, ...]]:
    """The cells of one suite's rows (see :func:`row_cells`)."""
    return [row_cells(row, run.suite.format_value) for row in run.measured.rows]


def markdown_table(runs: Sequence[SuiteRun]) -> str:
    """Every row of every suite as one markdown table, padded so that it reads as text too."""
    lines = [cells for run in runs for cells in table_cells(run)]
    widths = [max(len(line[i]) for line in [HEADER, *lines]) for i in range(len(HEADER))]

    def render(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, RIGHT_ALIGNED, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    dashes = [
        "-" * (width + 1) + ":" if right else "-" * (width + 2)
        for width, right in zip(widths, RIGHT_ALIGNED, strict=True)
    ]
    rule = "|" + "|".join(dashes) + "|"
    return "\n".join([render(HEADER), rule, *(render(line) for line in lines)])


def markdown_report(runs: Sequence[SuiteRun], record: dict[str, Any]) -> str:
    """A line on the environment and the run, the table, then the suites' notes as a list."""
    repeats = sorted({run.sizes.repeat for run in runs})
    summary = (
        f"{describe_environment(record['environment'])}; "
        f"{'--quick sizes' if record['quick'] else 'full sizes'}, best of "
        f"{'/'.join(str(r) for r in repeats)}; "
        f"{busy_words(record.get('busy', 0))}; {record['wall_s']:.0f} s in all. "
        f"Ratios are ours / baseline, measured in the same run."
    )
    missed = record["missed"]
    verdict = (
        f"{len(missed)} target(s) missed: {', '.join(missed)}."
        if missed
        else "Every target measured here is met."
    )
    notes = [f"- {run.suite.name}: {note}" for run in runs for note in run.measured.notes]
    if {run.suite.name for run in runs} == {suite.name for suite in SUITES}:  # not --only
        notes += [f"- {name}: skipped: {why}" for name, why in SKIPPED.items()]
    tables = [f"\n{table}" for run in runs for table in run.measured.tables]
    return "\n".join([summary, "", markdown_table(runs), "", verdict, "", *notes, *tables]) + "\n"


# --- the JSON record --------------------------------------------------------------------------


def json_record(
    runs: Sequence[SuiteRun], *, quick: bool, wall_s: float, busy: int = 0
) -> dict[str, Any]:
    """The run as JSON-able values.

    Returns:
        ``{"quick", "busy", "wall_s", "environment", "suites", "missed"}``: ``busy`` is the
        number of busy processes beside the run, ``suites`` maps each suite's
        name to ``{"sizes", "wall_s", "results", "notes"}`` (``results`` as the script's
        ``main`` returns them), ``missed`` lists ``"suite.key"`` for every missed target.
    """
    return {
        "quick": quick,
        "busy": busy,
        "wall_s": wall_s,
        "environment": environment_record(),
        "suites": {
            run.suite.name: {
                "sizes": dataclasses.asdict(run.sizes),
                "wall_s": run.wall_s,
                "results": run.measured.results(),
                "notes": list(run.measured.notes),
                "tables": list(run.measured.tables),
            }
            for run in runs
        },
        "missed": [
            f"{run.suite.name}.{row.key}"
            for run in runs
            for row in run.measured.rows
            if row.met is False
        ],
    }


def busy_words(busy: int) -> str:
    """How loaded the machine was kept, in words."""
    if not busy:
        return "no busy processes beside it"
    return f"{busy} busy process{'es' if busy > 1 else ''} beside it"


def run_once(args: argparse.Namespace, busy: int) -> tuple[list[SuiteRun], dict[str, Any]]:
    """Every chosen suite, with ``busy`` busy processes beside them: the runs and the record."""
    with busy_processes(busy):
        start = time.perf_counter()
        runs = run_suites(args)
        wall_s = time.perf_counter() - start
    return runs, json_record(runs, quick=args.quick, wall_s=wall_s, busy=busy)


def idle_and_busy_table(idle: Sequence[SuiteRun], busy: Sequence[SuiteRun], cpus: int) -> str:
    """One markdown table: each row's target, then ours, ratio and verdict idle and busy."""
    header = ("benchmark", "target", "idle: ours", "ratio", "met",
              f"{cpus} CPUs busy: ours", "ratio", "met")  # fmt: skip
    lines = []
    for idle_run, busy_run in zip(idle, busy, strict=True):
        for quiet, loaded in zip(table_cells(idle_run), table_cells(busy_run), strict=True):
            label, ours, _, ratio, target, met = quiet
            lines.append((label, target, ours, ratio, met, loaded[1], loaded[3], loaded[5]))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    right = (False, False, True, True, False, True, True, False)

    def render(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2)
                          for w, r in zip(widths, right, strict=True)) + "|"  # fmt: skip
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the suites, write the JSON (and the markdown), print the markdown; return the JSON
    record (see :func:`json_record`; with ``--idle-and-busy``, ``{"idle": ..., "busy": ...}``)."""
    args = parse_args(argv)
    if args.idle_and_busy:
        cpus = os.cpu_count() or 1
        idle_runs, idle = run_once(args, 0)
        busy_runs, busy = run_once(args, cpus)
        record: dict[str, Any] = {"idle": idle, "busy": busy}
        text = (
            f"{describe_environment(idle['environment'])}; idle: {idle['wall_s']:.0f} s, with "
            f"{busy_words(cpus)}: {busy['wall_s']:.0f} s. Ratios are ours / baseline, measured "
            "in the same run.\n\n" + idle_and_busy_table(idle_runs, busy_runs, cpus) + "\n"
        )
    else:
        runs, record = run_once(args, args.busy)
        text = markdown_report(runs, record)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    print(text, end="")
    print(f"wrote {args.json}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
