"""The HTTP front end against the HTTP stack's own ceiling, every server in its own process.

Every side is a server process of :mod:`benchmarks.http_servers`, driven by the load generator
of :mod:`benchmarks.loadgen` from another process, so that client and server never share an
event loop: ``concurrency`` keep-alive connections each send completions of ``max_tokens``
tokens back to back for ``duration`` seconds (after a short warm-up).

1. Ours (``serve``, two replicas of the mock runner with no delay) against a minimal ASGI app
   on the same stack (hypercorn on Trio) that sends the same bytes with no worker behind it:
   requests/s (target: at least 0.5 of the minimal app's) and time to first token p50 (the
   first body bytes; target: within 2x), streamed (SSE) and whole (one JSON body, whose first
   bytes are all of it), at ``concurrency`` clients and at one client.
2. The same minimal app on uvicorn (asyncio, uvloop, httptools): the reference a user would
   compare with; no target.
3. A front whose replicas are ``RemoteRunner``s in front of our server, against that server
   reached directly: the cost of one more hop on one machine (targets: 0.7 of its requests/s,
   within 1.5x its time to first token).
4. Two of our servers on one port (``[server] reuse_port``) against one: whether a second core
   helps; no target.
5. A grid, reported as a table: requests/s, time to first token p50 and the answers other than
   200 at 1, 8, 64 and 256 clients against 1, 2 and 4 replicas. A 5xx other than a 429 or a
   503 with ``Retry-After``, or a broken connection, counts as ``bad``.

Every number is the best of ``repeat`` runs, the sides interleaved run by run. Run
``python benchmarks/bench_http.py [--quick]``; :func:`main` returns the numbers as a dict,
:func:`measure` the rows (``python -m benchmarks`` runs it with the other scripts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: ``benchmarks`` is a package of the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _processes
from benchmarks._common import Measurements, Row, parse_args, pick_sizes, report


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much load each measurement gets."""

    concurrency: int
    max_tokens: int
    duration: float
    """Seconds measured per load (after a warm-up of 0.3 s)."""
    grid_duration: float
    """Seconds measured per point of the grid."""
    grid_clients: tuple[int, ...]
    grid_replicas: tuple[int, ...]
    repeat: int


FULL = Sizes(32, 16, 2.0, 1.0, (1, 8, 64, 256), (1, 2, 4), repeat=2)
QUICK = Sizes(16, 16, 0.3, 0.2, (1, 64), (1,), repeat=1)

REQUESTS_TARGET = 0.5
"""Issue 14: requests/s at least half of the minimal app's on the same stack."""
TTFT_TARGET = 2.0
"""Issue 14: time to first token p50 within 2x of the minimal app's."""
FRONT_REQUESTS_TARGET = 0.7
"""Issue 29: a RemoteRunner front at 0.7 of the backend's requests/s (out of reach with httpx
when front and backend share 2 cores: see docs/benchmarks.md)."""
FRONT_TTFT_TARGET = 1.5
"""Issue 29: a RemoteRunner front's time to first token within 1.5x of the backend's."""


@dataclasses.dataclass
class Best:
    """The best of the runs of one side and one load: highest rate, lowest p50, and the rest
    of the best-rate run."""

    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return max(run["requests_per_s"] for run in self.runs)

    @property
    def ttft(self) -> float:
        return min(run["ttft_p50_s"] for run in self.runs if run["ttft_p50_s"] is not None)

    @property
    def top(self) -> dict[str, Any]:
        return max(self.runs, key=lambda run: run["requests_per_s"])


def _load(port: int, sizes: Sizes, *, stream: bool, concurrency: int | None = None,
          duration: float | None = None) -> dict[str, Any]:  # fmt: skip
    return _processes.load(
        port,
        concurrency=sizes.concurrency if concurrency is None else concurrency,
        duration=sizes.duration if duration is None else duration,
        stream=stream,
        max_tokens=sizes.max_tokens,
    )


@contextlib.contextmanager
def _ours_on_one_port(processes: int, replicas: int) -> Iterator[int]:
    """``processes`` of our servers sharing one port (SO_REUSEPORT): the port."""
    with contextlib.ExitStack() as stack:
        port, _ = stack.enter_context(
            _processes.running_server("ours", "--replicas", str(replicas), "--reuse-port")
        )
        for _ in range(processes - 1):
            stack.enter_context(
                _processes.running_server("ours", "--replicas", str(replicas), "--reuse-port",
                                          "--port", str(port))
            )  # fmt: skip
        yield port


def measure(sizes: Sizes) -> Measurements:
    """Every side, ``repeat`` times, interleaved (see the module docstring)."""
    best: dict[str, Best] = {}

    def record(key: str, run: dict[str, Any]) -> None:
        best.setdefault(key, Best()).runs.append(run)

    for _ in range(sizes.repeat):
        for kind in ("ours", "hypercorn", "uvicorn"):
            with _processes.running_server(kind) as (port, _):
                for stream in (True, False):
                    mode = "stream" if stream else "whole"
                    record(f"{kind}.{mode}", _load(port, sizes, stream=stream))
                    if kind != "uvicorn":
                        record(f"{kind}.{mode}.1", _load(port, sizes, stream=stream, concurrency=1))
        with _processes.running_server("ours") as (back, _):
            url = f"http://127.0.0.1:{back}/v1"
            with _processes.running_server("ours", "--front", url) as (front, _):
                record("front.stream", _load(front, sizes, stream=True))
            record("back.stream", _load(back, sizes, stream=True))
        for processes in (1, 2):
            with _ours_on_one_port(processes, replicas=2) as port:
                record(f"processes{processes}.stream", _load(port, sizes, stream=True))
    grid: dict[tuple[int, int], dict[str, Any]] = {}
    for replicas in sizes.grid_replicas:
        with _processes.running_server("ours", "--replicas", str(replicas)) as (port, _):
            for clients in sizes.grid_clients:
                grid[replicas, clients] = _load(port, sizes, stream=True, concurrency=clients,
                                                duration=sizes.grid_duration)  # fmt: skip

    def rate(key: str, label: str, ours: str, baseline: str, target: float | None) -> Row:
        return Row(key, label, "req/s", best[ours].rate, best[baseline].rate, target, True)

    def ttft(key: str, label: str, ours: str, baseline: str, target: float | None) -> Row:
        return Row(key, label, "s", best[ours].ttft, best[baseline].ttft, target, False)

    c, n = sizes.concurrency, sizes.max_tokens
    rows = (
        rate("stream_requests_per_s", f"HTTP streamed, {c} clients x {n} tokens: requests/s "
             "(vs a minimal hypercorn app)", "ours.stream", "hypercorn.stream", REQUESTS_TARGET),
        ttft("stream_ttft_p50_s", f"HTTP streamed, {c} clients: time to first token p50 (vs the "
             "minimal app)", "ours.stream", "hypercorn.stream", TTFT_TARGET),
        ttft("stream_ttft_p50_one_client_s", "HTTP streamed, 1 client: time to first token p50 "
             "(vs the minimal app)", "ours.stream.1", "hypercorn.stream.1", TTFT_TARGET),
        rate("whole_requests_per_s", f"HTTP whole, {c} clients: requests/s (vs the minimal app)",
             "ours.whole", "hypercorn.whole", REQUESTS_TARGET),
        ttft("whole_latency_p50_s", f"HTTP whole, {c} clients: latency p50 (vs the minimal app)",
             "ours.whole", "hypercorn.whole", TTFT_TARGET),
        ttft("whole_latency_p50_one_client_s", "HTTP whole, 1 client: latency p50 (vs the "
             "minimal app)", "ours.whole.1", "hypercorn.whole.1", TTFT_TARGET),
        rate("uvicorn_stream_requests_per_s", "HTTP streamed: requests/s (vs the minimal app on "
             "uvicorn, reference)", "ours.stream", "uvicorn.stream", None),
        ttft("uvicorn_stream_ttft_p50_s", "HTTP streamed: time to first token p50 (vs uvicorn, "
             "reference)", "ours.stream", "uvicorn.stream", None),
        rate("uvicorn_whole_requests_per_s", "HTTP whole: requests/s (vs uvicorn, reference)",
             "ours.whole", "uvicorn.whole", None),
        rate("remote_front_requests_per_s", "HTTP via a RemoteRunner front: requests/s (vs the "
             "backend directly)", "front.stream", "back.stream", FRONT_REQUESTS_TARGET),
        ttft("remote_front_ttft_p50_s", "HTTP via a RemoteRunner front: time to first token p50 "
             "(vs the backend directly)", "front.stream", "back.stream", FRONT_TTFT_TARGET),
        rate("two_processes_requests_per_s", "HTTP streamed, 2 serve processes on one port "
             "(reuse_port): requests/s (vs 1)", "processes2.stream", "processes1.stream", None),
    )  # fmt: skip
    others = [
        f"{key} {best[key].top['statuses']}"
        for key in best
        if set(best[key].top["statuses"]) != {"200"}
    ]
    cpu = [
        f"{kind} {best[f'{kind}.stream'].top['client_cpu_share']:.2f}"
        for kind in ("ours", "hypercorn", "uvicorn")
    ]
    notes = (
        f"events per streamed response: ours {best['ours.stream'].top['events_per_response']:.1f}"
        " (chunks a client has not read yet coalesce), the minimal apps "
        f"{best['hypercorn.stream'].top['events_per_response']:.1f}",
        f"load generator CPU share (1.0: it, not the server, was the limit): {', '.join(cpu)}",
        f"answers other than 200 in the comparisons: {', '.join(others) or 'none'}",
    )
    return Measurements(rows=rows, extras={}, notes=notes, tables=(grid_table(grid, sizes),))


def grid_table(grid: dict[tuple[int, int], dict[str, Any]], sizes: Sizes) -> str:
    """Requests/s, time to first token p50 and the answers other than 200, per point."""
    lines = [
        f"Cost growth, streamed completions of {sizes.max_tokens} tokens, "
        f"{sizes.grid_duration:g} s per point: requests/s, time to first token p50, and what "
        "was not a 200 (429 and 503 carry Retry-After; bad: any other 5xx or a broken "
        "connection).",
        "",
        "| replicas | clients | requests/s | TTFT p50 | TTFT p99 | not 200 | bad |",
        "|--:|--:|--:|--:|--:|---|--:|",
    ]
    for (replicas, clients), run in sorted(grid.items()):
        others = {k: v for k, v in run["statuses"].items() if k != "200"}
        refused = ", ".join(f"{v} x {k}" for k, v in others.items()) or "-"
        lines.append(
            f"| {replicas} | {clients} | {run['requests_per_s']:,.0f} | "
            f"{format_value(run['ttft_p50_s'] or 0.0, 's')} | "
            f"{format_value(run['ttft_p99_s'] or 0.0, 's')} | {refused} | {run['bad']} |"
        )
    return "\n".join(lines)


def format_value(value: float, unit: str) -> str:
    """A number with its unit."""
    if unit == "s":
        return f"{value * 1e3:,.2f} ms"
    return f"{value:,.0f} {unit}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every side, print the table, return the numbers."""
    args = parse_args(argv, prog="bench_http", doc=__doc__)
    sizes = pick_sizes(args, full=FULL, quick=QUICK)
    return report(measure(sizes), sizes=sizes, quick=args.quick, format_value=format_value)


if __name__ == "__main__":
    main(sys.argv[1:])
