"""The Ray tier against the process tier, in one run: tokens/s, round trip, restart latency.

Every row puts a worker with ``isolation="ray"`` (its runner in a Ray actor, on a local Ray
with two CPUs, on loopback) beside the same worker with ``isolation="process"`` (its runner in a
child process, frames on a socketpair), the baseline, measured in the same run, side by side:

1. **tokens/s**: ``batches`` batches of 64 requests of 256 tokens (MockRunner, no delay),
   submitted at once, read to the end (target: at least 0.8 of the process tier's). The frames
   travel on the worker's TCP connection to its actor (``ray_frames="direct"``, the default);
   the row "through Ray's streams" has them go through Ray (``ray_frames="ray"``: as many
   frames per Ray item as were waiting, so a Ray object carries many tokens), for comparison.
2. **round trip**: one request of one token, submitted and read, ``round_trips`` times (median;
   target: at most 1 ms, the row "within 1 ms"), both ways.
3. **restart latency, cold**: a fault, then the next request's first chunk, served by a fresh
   actor (the process side: a fresh process); p50 of ``restarts``.
4. **restart latency, standby**: the same with a parked spare swapped in.
5. **the bridge**: one call of a trivial actor method from Trio through the worker's bridge
   (:class:`~trio_supervise.isolation.ray.Bridge`: an asyncio loop in one thread, results back
   by ``run_sync_soon``) against ``trio.to_thread.run_sync(ray.get, ref)``, the obvious other
   way (one thread hop per call), ``round_trips`` times each (median).

The targets are issue 29's; the other rows say what Ray costs next to a child process on one
machine (its own scheduler, object store and RPC), which buys placement on any node. Run it:
``python benchmarks/bench_ray.py [--quick] [--repeat N]`` (needs ``trio-supervise[ray]``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from benchmarks._common import (
    Measurements,
    Row,
    best_median,
    collected_run,
    parse_args,
    pick_sizes,
    quiet_library_logger,
    report,
)
from benchmarks.bench_worker import (
    BATCH_SIZE,
    MAX_TOKENS,
    ONE_TOKEN,
    batches_of_requests,
    restarts_ours,
)
from trio_supervise import Request, open_worker
from trio_supervise.isolation.ray import LOOPBACK_ENV
from trio_supervise.isolation.ray._runtime import LOCAL_SYSTEM_CONFIG

MOCK = "trio_supervise.runners.mock:MockRunner"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    batches: int
    round_trips: int
    restarts: int
    repeat: int


FULL = Sizes(batches=2, round_trips=200, restarts=3, repeat=1)
"""Small: a cold actor takes seconds on a loaded machine, and the whole run must stay under
400 s with both cores busy."""
QUICK = Sizes(batches=1, round_trips=20, restarts=2, repeat=1)

TOKENS_TARGET = 0.8
"""Issue 29: the Ray tier's tokens/s at least 0.8 of the process tier's."""
ROUND_TRIP_TARGET = 1e-3
"""Issue 29: a round trip through the Ray tier within 1 ms."""


def _worker(side: str, **kwargs: Any) -> Any:
    """A worker of one side: ``process``, ``ray`` (frames direct) or ``ray-streams``."""
    if side == "process":
        return open_worker(MOCK, device="cpu", isolation="process", **kwargs)
    frames = "ray" if side == "ray-streams" else "direct"
    return open_worker(MOCK, device="cpu", isolation="ray", ray_frames=frames, **kwargs)


async def tokens_per_s(side: str, batches: int) -> float:
    """Tokens per second through a worker of this side, batches submitted at once."""
    async with _worker(side, runner_args={"delay": 0.0}) as worker:
        received = 0

        async def read(stream: Any) -> None:
            nonlocal received
            async for chunk in stream:
                received += len(chunk.token_ids)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for requests in batches_of_requests(batches):
                for request in requests:
                    nursery.start_soon(read, worker.generate(request))
        elapsed = time.perf_counter() - start
    assert received == batches * BATCH_SIZE * MAX_TOKENS, received
    return received / elapsed


async def round_trips(side: str, n: int) -> list[float]:
    """Seconds for one one-token request, ``n`` times."""
    async with _worker(side) as worker:
        latencies = []
        for i in range(n):
            start = time.perf_counter()
            async for _ in worker.generate(Request(f"r{i}", "hello", ONE_TOKEN)):
                pass
            latencies.append(time.perf_counter() - start)
    return latencies


class Echo:
    """A trivial actor: what a call costs in Ray itself."""

    async def echo(self, value: int) -> int:
        return value


async def bridge_calls(how: str, n: int) -> list[float]:
    """Seconds per call of ``Echo.echo`` from Trio, through the bridge or a thread."""
    import ray

    from trio_supervise.isolation.ray import Bridge

    actor = ray.remote(Echo).options(num_cpus=0).remote()
    bridge = Bridge()
    try:
        await bridge.get(actor.echo.remote(0))  # placed and started
        latencies = []
        for i in range(n):
            start = time.perf_counter()
            if how == "bridge":
                assert await bridge.get(actor.echo.remote(i)) == i
            else:
                assert await trio.to_thread.run_sync(ray.get, actor.echo.remote(i)) == i
            latencies.append(time.perf_counter() - start)
    finally:
        await bridge.aclose()
        ray.kill(actor)
    return latencies


def measure(sizes: Sizes) -> Measurements:
    """Both tiers, every benchmark, interleaved run by run."""
    import ray

    started = not ray.is_initialized()
    if started:  # one local Ray for the whole run (a worker would start and stop its own)
        ray.init(address="local", num_cpus=2, _node_ip_address="127.0.0.1",
                 include_dashboard=False, log_to_driver=False,
                 _system_config=LOCAL_SYSTEM_CONFIG)  # fmt: skip
    try:
        with quiet_library_logger():
            rows = _measure(sizes)
    finally:
        if started:
            ray.shutdown()
    return Measurements(
        rows=rows,
        notes=(
            "baseline: the same worker with isolation='process' (a child process, frames on a "
            "socketpair), in the same run; the Ray side runs on a local Ray with 2 CPUs; the "
            "bridge row's baseline is trio.to_thread.run_sync(ray.get, ref)",
        ),
    )


def _measure(sizes: Sizes) -> tuple[Row, ...]:
    speed: dict[str, list[float]] = {"ray": [], "ray-streams": [], "process": []}
    trips: dict[str, list[list[float]]] = {"ray": [], "ray-streams": [], "process": []}
    cold: dict[str, list[list[float]]] = {"ray": [], "process": []}
    warm: dict[str, list[list[float]]] = {"ray": [], "process": []}
    calls: dict[str, list[list[float]]] = {"bridge": [], "thread": []}
    for _ in range(sizes.repeat):
        for how in ("bridge", "thread"):
            calls[how].append(collected_run(bridge_calls, how, sizes.round_trips))
        for side in ("ray", "ray-streams", "process"):
            speed[side].append(collected_run(tokens_per_s, side, sizes.batches))
            trips[side].append(collected_run(round_trips, side, sizes.round_trips))
            if side == "ray-streams":
                continue
            cold[side].append(collected_run(restarts_ours, sizes.restarts, side))
            warm[side].append(collected_run(restarts_ours, sizes.restarts, side, True))
    tokens = Row(
        key="ray_tokens_per_s",
        label=f"Ray tier tokens/s ({sizes.batches} x {BATCH_SIZE} requests x {MAX_TOKENS})",
        unit="tok/s",
        ours=max(speed["ray"]),
        baseline=max(speed["process"]),
        target=TOKENS_TARGET,
        higher_is_better=True,
    )
    tokens_streams = dataclasses.replace(
        tokens,
        key="ray_streams_tokens_per_s",
        label=f"{tokens.label}, through Ray's streams",
        ours=max(speed["ray-streams"]),
        target=None,
    )
    trip = Row(
        key="ray_round_trip_s",
        label=f"Ray tier round trip, 1 token (median of {sizes.round_trips})",
        unit="s",
        ours=best_median(trips["ray"]),
        baseline=best_median(trips["process"]),
        target=None,
        higher_is_better=False,
    )
    trip_within = dataclasses.replace(
        trip,
        key="ray_round_trip_within_s",
        label=f"{trip.label}, within {ROUND_TRIP_TARGET * 1e3:g} ms",
        baseline=None,
        target=ROUND_TRIP_TARGET,
    )
    trip_streams = dataclasses.replace(
        trip,
        key="ray_streams_round_trip_s",
        label=f"{trip.label}, through Ray's streams",
        ours=best_median(trips["ray-streams"]),
    )
    restart_cold = dataclasses.replace(
        trip,
        key="ray_restart_cold_p50_s",
        label=f"Ray tier restart, cold, p50 ({sizes.restarts} restarts)",
        ours=best_median(cold["ray"]),
        baseline=best_median(cold["process"]),
    )
    restart_standby = dataclasses.replace(
        trip,
        key="ray_restart_standby_p50_s",
        label=f"Ray tier restart, standby, p50 ({sizes.restarts} restarts)",
        ours=best_median(warm["ray"]),
        baseline=best_median(warm["process"]),
    )
    bridge = dataclasses.replace(
        trip,
        key="ray_bridge_call_s",
        label=f"Ray call from Trio: bridge vs to_thread(ray.get) (median of {sizes.round_trips})",
        ours=best_median(calls["bridge"]),
        baseline=best_median(calls["thread"]),
    )
    return (tokens, tokens_streams, trip, trip_within, trip_streams, restart_cold,
            restart_standby, bridge)  # fmt: skip


def format_value(value: float, unit: str) -> str:
    """A number with its unit, at a readable precision."""
    if unit == "s":
        return f"{value * 1e6:,.1f} us" if value < 1e-3 else f"{value * 1e3:,.2f} ms"
    return f"{value:,.0f} {unit}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks, print the table, and return the numbers (as bench_worker's)."""
    args = parse_args(argv, prog="bench_ray", doc=__doc__)
    sizes = pick_sizes(args, full=FULL, quick=QUICK)
    return report(measure(sizes), sizes=sizes, quick=args.quick, format_value=format_value)


os.environ.setdefault(LOOPBACK_ENV, "0")  # before Ray is imported: a local Ray on loopback

if __name__ == "__main__":
    main()
