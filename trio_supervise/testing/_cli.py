"""``trio-supervise chaos``: a chaos run from the command line, with a progress bar and a table."""

from __future__ import annotations

import argparse
import math
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio

from .._errors import ConfigError
from ..supervision import Backoff, RestartIntensity
from ..tier._runner import DEVICE_POLICY
from ._chaos import run_chaos
from ._plan import Fault, FaultPlan
from ._report import ChaosReport

__all__ = ["add_chaos_parser", "run_chaos_command"]

MOCK = "trio_supervise.runners.mock:MockRunner"

HANG_TIMEOUTS = {"inline": 5.0, "process": 0.5, "ray": 2.0}
"""The worker's ``hang_timeout`` for each ``--isolation``, unless ``--hang-timeout`` says."""


def add_chaos_parser(commands: Any) -> None:
    """Add the ``chaos`` subcommand to the CLI."""
    chaos = commands.add_parser(
        "chaos",
        help="drive load through a worker while faults fire; check every invariant",
        description=(
            "Drive requests through a worker while injected faults fire, and check that every "
            "request ends once, chunks arrive in order, errors are typed, restarts stay within "
            "the policy, nothing is left behind, and (for a deterministic runner) every request "
            "reads the text it reads with no faults, its stream continued after a fault. Exit "
            "code 1 when an invariant fails."
        ),
    )
    chaos.add_argument("--requests", type=int, default=2000, help="requests in all (2000)")
    chaos.add_argument("--concurrency", type=int, default=64, help="requests at once (64)")
    chaos.add_argument(
        "--fault-rate",
        type=float,
        default=0.03,
        help="per-batch fault probability, split equally between POISON and OOM (and, with "
        "--isolation process, HANG, EXIT and KILL) (0.03)",
    )
    chaos.add_argument("--faults", default="", help="extra faults, KIND=RATE,... (any kind)")
    chaos.add_argument("--seed", type=int, default=0, help="seeds the faults and the requests")
    chaos.add_argument("--isolation", choices=("inline", "process", "ray"), default="inline")
    chaos.add_argument("--runner", default=MOCK, help=f"the runner's import path ({MOCK})")
    chaos.add_argument("--timeout", type=float, default=120.0, help="seconds for the run (120)")
    chaos.add_argument(
        "--hang-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the worker's hang_timeout: seconds a batch may go without a chunk before the "
        "worker fails it with HungWorker and restarts (default: "
        + ", ".join(f"{s:g} with {i}" for i, s in HANG_TIMEOUTS.items())
        + " isolation)",
    )


def parse_faults(text: str) -> dict[Fault, float]:
    """``"poison=0.01,oom=0.02"`` as rates."""
    rates: dict[Fault, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            fault = Fault[name.strip().upper()]
            rates[fault] = float(value)
        except (KeyError, ValueError):
            kinds = ", ".join(f.name for f in Fault)
            raise ConfigError(
                f"--faults takes KIND=RATE pairs with KIND one of {kinds}, got {item!r}"
            ) from None
        if not sep:
            raise ConfigError(f"--faults takes KIND=RATE pairs, got {item!r}")
    return rates


def build_plan(args: argparse.Namespace) -> FaultPlan:
    """The plan the command line describes."""
    if not 0 <= args.fault_rate <= 1:
        raise ConfigError(f"--fault-rate must be in [0, 1], got {args.fault_rate!r}")
    kinds = [Fault.POISON, Fault.OOM]
    if args.isolation != "inline":
        kinds += [Fault.HANG, Fault.EXIT, Fault.KILL]
    rates = {kind: args.fault_rate / len(kinds) for kind in kinds}
    for kind, rate in parse_faults(args.faults).items():
        rates[kind] = rates.get(kind, 0.0) + rate
    # Faults fire after the first chunk, so requests see partial output before the failure;
    # SLOW (only through --faults) waits 10 ms before each chunk of its batch.
    return FaultPlan.random(args.seed, rates, token=1, delay=0.01)


def hang_timeout(args: argparse.Namespace) -> float:
    """``--hang-timeout``, checked, or the default of ``--isolation`` (``HANG_TIMEOUTS``)."""
    seconds: float | None = args.hang_timeout
    if seconds is None:
        return HANG_TIMEOUTS[args.isolation]
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--hang-timeout must be a finite number of seconds > 0, got {seconds!r}")
    return seconds


def worker_factory(args: argparse.Namespace) -> Any:
    """``plan -> open_worker(...)`` for the command line's runner and isolation.

    The policy is DEVICE_POLICY with an intensity that allows the restarts the fault rate
    implies (the run tests survival; giving up has tests of its own), and a short backoff.
    """
    from ..worker._open_worker import open_worker

    hang = hang_timeout(args)
    expected_restarts = args.requests * args.fault_rate
    policy = attrs.evolve(
        DEVICE_POLICY,
        intensity=RestartIntensity(max(10, math.ceil(expected_restarts * 3) + 10), 3600.0),
        backoff=Backoff.none(),
    )

    def factory(plan: FaultPlan) -> AbstractAsyncContextManager[Any]:
        runner_args = {"inner": args.runner, "plan": plan.to_dict()}
        return open_worker(
            "trio_supervise.testing:FaultyRunner",
            runner_args=runner_args,
            device="cpu",
            policy=policy,
            isolation=args.isolation,
            hang_timeout=hang,
            heartbeat_timeout=2.0,
            max_pending=args.requests + 1,
        )

    return factory


def render(report: ChaosReport, hang_timeout: float | None = None) -> Any:
    """A rich table of the report (with the worker's ``hang_timeout``, when given). Long values
    (the plan, the policy) fold onto more lines: nothing is cut."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="chaos run", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")

    def row(name: str, value: str) -> None:
        table.add_row(name, Text(value))  # as it is: no rich markup in reprs and messages

    row("requests", f"{report.requests} in {report.duration:.2f}s")
    row("throughput", f"{report.tokens_per_s:,.0f} tokens/s")
    row("latency", f"p50 {report.latency_p50 * 1e3:.1f} ms, p99 {report.latency_p99 * 1e3:.1f} ms")
    row("restarts", str(report.restarts))
    for outcome, count in sorted(report.outcomes.items()):
        row(f"  {outcome}", str(count))
    row("served", report.describe_served())
    row("faults fired", report.describe_faults())
    row("streams continued after a fault", str(report.continued))
    texts = report.describe_texts()
    if not report.compared:
        texts += " (the runner does not say it is deterministic)"
    row("texts", texts)
    row("plan", f"{report.plan}; seed {report.seed}")
    row("policy", report.policy)
    if hang_timeout is not None:
        row("hang timeout", f"{hang_timeout:g}s")
    row(
        "invariants", "all invariants hold" if report.ok else "\n".join(map(str, report.violations))
    )
    return table


def run_chaos_command(args: argparse.Namespace) -> int:
    """Run ``chaos``; 0 when every invariant held, 1 when one failed, 2 on bad arguments."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console()
    try:
        plan = build_plan(args)
        factory = worker_factory(args)
        hang = hang_timeout(args)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2

    async def main() -> ChaosReport:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("requests", total=args.requests)
            return await run_chaos(
                factory,
                requests=args.requests,
                concurrency=args.concurrency,
                plan=plan,
                seed=args.seed,
                timeout=args.timeout,
                on_progress=lambda: progress.advance(task),
            )

    report = trio.run(main)
    console.print(render(report, hang))
    return 0 if report.ok else 1
