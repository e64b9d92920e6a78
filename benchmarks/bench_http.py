"""The HTTP front end against the same load through ``pool.generate`` in-process, in one run.

Both sides serve the same config (the mock runner, no delay, two replicas) and run the same
load: ``concurrency`` clients each sending requests of ``max_tokens`` tokens one after another.
Ours goes through ``serve`` over loopback HTTP with httpx (streamed, so the time to first token
is the first SSE event); the baseline calls ``pool.generate`` in the same process. No target is
set by DESIGN.md: the table reports the cost of HTTP as ratios (requests/s ours/baseline,
higher is better; time to first token ours/baseline, lower is better). A third side puts a
front in between, whose two replicas are ``RemoteRunner``s in front of the same server (the
cost of one more hop, all in this one process), compared with the server reached directly.

Run ``python benchmarks/bench_http.py [--quick]``; :func:`main` returns the numbers as a dict,
:func:`measure` the rows (``python -m benchmarks`` runs it with the other scripts).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

from trio_supervise import Request, SamplingParams
from trio_supervise.serve import ServeConfig
from trio_supervise.serve.pool import WorkerPool
from trio_supervise.serve.server import ServerHandle, serve

if not __package__:  # run as a script: ``benchmarks`` is a package of the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each side does."""

    requests: int
    concurrency: int
    max_tokens: int
    repeat: int


FULL = Sizes(requests=2000, concurrency=32, max_tokens=16, repeat=3)
QUICK = Sizes(requests=200, concurrency=16, max_tokens=16, repeat=2)

CONFIG = {
    "server": {"port": 0, "drain_timeout": 5},
    "batching": {"max_batch_size": 32, "max_wait": 0.001},
    "workers": [
        {
            "name": "mock",
            "runner": "trio_supervise.runners.mock:MockRunner",
            "runner_args": {"delay": 0.0},
            "device": "cpu",
            "replicas": 2,
        }
    ],
}


async def http_load(url: str, sizes: Sizes) -> tuple[float, list[float]]:
    """Requests/s and times to first token of the streamed load against the server at ``url``."""
    firsts: list[float] = []
    limits = httpx.Limits(max_connections=sizes.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        remaining = sizes.requests
        body = {"prompt": "hello", "max_tokens": sizes.max_tokens, "stream": True}

        async def user() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                sent = time.perf_counter()
                first = True
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    async for raw in response.aiter_raw():
                        if first and raw:
                            firsts.append(time.perf_counter() - sent)
                            first = False

        start = time.perf_counter()
        async with trio.open_nursery() as users:
            for _ in range(sizes.concurrency):
                users.start_soon(user)
        elapsed = time.perf_counter() - start
    return sizes.requests / elapsed, firsts


async def over_http(sizes: Sizes) -> tuple[float, list[float]]:
    """Requests/s and times to first token, streamed through the HTTP server."""
    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, ServeConfig.from_dict(CONFIG))
        result = await http_load(handle.url, sizes)
        handle.drain()
    return result


def front_config(backend_url: str, concurrency: int) -> ServeConfig:
    """A front whose two replicas are RemoteRunners in front of the backend at the URL."""
    worker = {
        "name": "mock",
        "runner": "trio_supervise.runners.remote:RemoteRunner",
        "runner_args": {"base_url": backend_url, "model": "mock", "max_connections": concurrency},
        "replicas": 2,
    }
    return ServeConfig.from_dict({**CONFIG, "workers": [worker]})


async def through_front(sizes: Sizes) -> tuple[float, list[float]]:
    """The same load through a front whose runner is a RemoteRunner in front of the server."""
    async with trio.open_nursery() as nursery:
        back: ServerHandle = await nursery.start(serve, ServeConfig.from_dict(CONFIG))
        front: ServerHandle = await nursery.start(serve, front_config(back.url, sizes.concurrency))
        result = await http_load(front.url, sizes)
        front.drain()
        back.drain()
    return result


async def in_process(sizes: Sizes) -> tuple[float, list[float]]:
    """Requests/s and times to first token through ``pool.generate``, no HTTP."""
    firsts: list[float] = []
    async with trio.open_nursery() as nursery:
        pool: WorkerPool = await nursery.start(WorkerPool(ServeConfig.from_dict(CONFIG)).run)
        remaining = sizes.requests
        counter = 0

        async def user() -> None:
            nonlocal remaining, counter
            while remaining > 0:
                remaining -= 1
                counter += 1
                sent = time.perf_counter()
                params = SamplingParams(max_tokens=sizes.max_tokens)
                stream = pool.generate(Request(f"r{counter}", "hello", params))
                first = True
                async with stream:
                    async for _ in stream:
                        if first:
                            firsts.append(time.perf_counter() - sent)
                            first = False

        start = time.perf_counter()
        async with trio.open_nursery() as users:
            for _ in range(sizes.concurrency):
                users.start_soon(user)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return sizes.requests / elapsed, firsts


def format_value(value: float, unit: str) -> str:
    """A number with its unit."""
    if unit == "s":
        return f"{value * 1e3:,.2f} ms"
    return f"{value:,.0f} {unit}"


def measure(sizes: Sizes) -> Measurements:
    """Run every side ``sizes.repeat`` times, interleaved; the best rate and p50 of each."""
    sides = {"http": over_http, "in_process": in_process, "front": through_front}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    firsts: dict[str, list[list[float]]] = {name: [] for name in sides}
    with quiet_library_logger():
        for _ in range(sizes.repeat):
            for name, side in sides.items():
                rate, first = collected_run(side, sizes)
                rates[name].append(rate)
                firsts[name].append(first)

    def compared(key: str, label: str, ttft_label: str, ours: str, baseline: str) -> list[Row]:
        """Requests/s (higher is better) and time to first token (lower) of two sides."""
        return [
            Row(key=f"{key}requests_per_s", label=label, unit="req/s",
                ours=max(rates[ours]), baseline=max(rates[baseline]), target=None,
                higher_is_better=True),
            Row(key=f"{key}time_to_first_token_p50_s", label=ttft_label, unit="s",
                ours=best_median(firsts[ours]), baseline=best_median(firsts[baseline]),
                target=None, higher_is_better=False),
        ]  # fmt: skip

    rows = (
        *compared(
            "",
            f"HTTP requests/s, {sizes.concurrency} clients x {sizes.max_tokens} tokens",
            "HTTP time to first token, p50",
            ours="http",
            baseline="in_process",
        ),
        *compared(
            "remote_front_",
            "HTTP via a RemoteRunner front, requests/s (vs the backend directly)",
            "HTTP via a RemoteRunner front, time to first token p50",
            ours="front",
            baseline="http",
        ),
    )
    return Measurements(rows=rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both sides, print the table, return the numbers."""
    args = parse_args(argv, prog="bench_http", doc=__doc__)
    sizes = pick_sizes(args, full=FULL, quick=QUICK)
    return report(measure(sizes), sizes=sizes, quick=args.quick, format_value=format_value)


if __name__ == "__main__":
    main(sys.argv[1:])
