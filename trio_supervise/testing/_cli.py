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


def worker_factory(args: argparse.Namespace) -> Any:
    """``plan -> open_worker(...)`` for the command line's runner and isolation.

    The policy is DEVICE_POLICY with an intensity that allows the restarts the fault rate
    implies (the run tests survival; giving up has tests of its own), and a short backoff.
    """
    from ..worker._open_worker import open_worker

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
            hang_timeout={"process": 0.5, "ray": 2.0}.get(args.isolation, 5.0),
            heartbeat_timeout=2.0,
            max_pending=args.requests + 1,
        )

    return factory


def render(report: ChaosReport) -> Any:
    """A rich table of the report."""
    from rich.table import Table

    table = Table(title="chaos run", show_header=False)
    table.add_row("requests", f"{report.requests} in {report.duration:.2f}s")
    table.add_row("throughput", f"{report.tokens_per_s:,.0f} tokens/s")
    table.add_row(
        "latency", f"p50 {report.latency_p50 * 1e3:.1f} ms, p99 {report.latency_p99 * 1e3:.1f} ms"
    )
    table.add_row("restarts", str(report.restarts))
    for outcome, count in sorted(report.outcomes.items()):
        table.add_row(f"  {outcome}", str(count))
    table.add_row("served, untouched by faults", f"{report.succeeded_untouched:.2%}")
    table.add_row("streams continued after a fault", str(report.continued))
    compared = (
        f"{report.compared} requests compared with a run without faults"
        if report.compared
        else "not compared (the runner does not say it is deterministic)"
    )
    table.add_row("same text as without faults", compared)
    table.add_row("plan", report.plan)
    table.add_row("policy", report.policy)
    verdict = "all invariants hold" if report.ok else "\n".join(map(str, report.violations))
    table.add_row("invariants", verdict)
    return table


def run_chaos_command(args: argparse.Namespace) -> int:
    """Run ``chaos``; 0 when every invariant held, 1 when one failed, 2 on bad arguments."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console()
    try:
        plan = build_plan(args)
        factory = worker_factory(args)
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
    console.print(render(report))
    return 0 if report.ok else 1
