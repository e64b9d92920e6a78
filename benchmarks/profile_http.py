"""Where a streamed completion's server time goes: ours against the minimal app, per request.

``python -m benchmarks.profile_http [--concurrency 32] [--duration 4] [--stream/--no-stream]``
starts each server in its own process (our ``serve`` with the mock runner, and the minimal
hypercorn app of :mod:`benchmarks.http_servers`), drives it with the load generator from another
process, and samples the server with py-spy (``pip install py-spy``; it reads the process from
outside, so the server runs at full speed) for the measured seconds. Each sample is charged to
the code it was in: its innermost frame, or for a frame of the standard library (a
``contextlib`` helper, ``socket``) the innermost caller outside it. It prints one markdown table:
for each part of the stack, microseconds of server CPU per request on both sides.

``--front`` profiles the bench's "HTTP via a RemoteRunner front" row instead: our server (the
backend), a front whose replicas are ``RemoteRunner``s in front of it, the load on the front;
both processes are sampled at once, then the backend alone under the same load. The table has
a column for each (front, backend behind the front, backend alone), and below the parts each
process's CPU per request and CPU seconds per wall second (read from ``/proc``, so py-spy's
sampling gaps do not matter): near 1.0, that process's one thread is the limit.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: ``benchmarks`` is a package of the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _processes

RATE_HZ = 250
SATURATED = 0.9
"""CPU seconds per wall second past which a process's one thread counts as the limit."""

# (where a frame's file is, what it is charged to), first match wins.
PARTS = (
    ("trio_supervise/serve/app.py", "our HTTP app: routing, parsing, SSE events, JSON"),
    ("trio_supervise/serve/_generate.py", "our HTTP app: routing, parsing, SSE events, JSON"),
    ("trio_supervise/serve/_asgi.py", "our HTTP app: routing, parsing, SSE events, JSON"),
    ("trio_supervise/openai/", "our HTTP app: routing, parsing, SSE events, JSON"),
    ("trio_supervise/serve/pool.py", "our pool: admission, batcher, router"),
    ("trio_supervise/serve/_routing.py", "our pool: admission, batcher, router"),
    ("trio_supervise/serve/_replica.py", "our pool: admission, batcher, router"),
    ("trio_supervise/serve/metrics.py", "our metrics (prometheus-client)"),
    ("prometheus_client/", "our metrics (prometheus-client)"),
    ("trio_supervise/runners/mock.py", "the mock runner (the model's stand-in)"),
    ("trio_supervise/runners/", "our remote runner (runners/remote, _remote_*)"),
    ("trio_supervise/", "our worker: admission, tier, request buffers"),
    ("benchmarks/http_servers.py", "the minimal app"),
    ("hypercorn/", "hypercorn (ASGI server)"),
    ("httpx/", "httpx (HTTP client)"),
    ("httpcore/", "httpcore (HTTP client's connections)"),
    ("anyio/", "anyio, sniffio (httpcore's backend)"),
    ("sniffio/", "anyio, sniffio (httpcore's backend)"),
    ("h11/", "h11 (HTTP/1.1 framing)"),
    ("trio/", "trio: scheduler, sockets, epoll"),
    ("outcome/", "trio: scheduler, sockets, epoll"),
)
STDLIB_PACKAGES = {"json", "asyncio", "collections", "concurrent", "email", "http", "logging",
                   "urllib", "importlib", "encodings", "<frozen runpy>"}  # fmt: skip


def _file(frame: str) -> str:
    """``func (path/file.py:12)`` -> ``path/file.py``."""
    return frame.rpartition("(")[2].rpartition(":")[0]


def _is_stdlib(path: str) -> bool:
    return "/" not in path or path.split("/", 1)[0] in STDLIB_PACKAGES


def charge(raw: str) -> tuple[collections.Counter[str], int]:
    """Samples per part of the stack from py-spy's raw (collapsed) output, and the total."""
    parts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        path = next((_file(f) for f in reversed(frames) if not _is_stdlib(_file(f))), "")
        part = next((name for where, name in PARTS if where in path), f"other ({path or '?'})")
        parts[part] += count
    return parts, total


@dataclasses.dataclass(frozen=True)
class Sampled:
    """One server process sampled under one load."""

    parts: collections.Counter[str]
    samples: int
    requests: float
    cpu_s: float
    """CPU seconds of the process (user and system, from ``/proc``) over the measured load."""
    wall_s: float
    load: dict[str, Any]
    """What the load generator measured."""

    def per_request(self, part: str | None) -> str:
        """Microseconds of CPU per request of ``part`` (``None``: every sample)."""
        samples = self.samples if part is None else self.parts[part]
        return f"{samples / RATE_HZ / self.requests * 1e6:,.0f} us" if samples else "-"


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of the process so far (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(port: int, pids: Sequence[int], args: argparse.Namespace) -> list[Sampled]:
    """Load the server on ``port`` (after a warm-up) and sample each of ``pids`` meanwhile."""
    load = {"concurrency": args.concurrency, "stream": args.stream, "max_tokens": 16}
    _processes.load(port, duration=1.0, **load)  # warm up
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"raw-{pid}.txt" for pid in pids]
        spies = [
            subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--rate", str(RATE_HZ),
                 "--duration", str(round(args.duration)), "--format", "raw", "--output",
                 str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for pid, out in zip(pids, outs, strict=True)
        ]  # fmt: skip
        cpu = [_cpu_seconds(pid) for pid in pids]
        wall = time.monotonic()
        measured = _processes.load(port, duration=args.duration, extra=["--warmup", "0"], **load)
        wall = time.monotonic() - wall
        cpu = [_cpu_seconds(pid) - before for pid, before in zip(pids, cpu, strict=True)]
        results = []
        for spy, out, cpu_s in zip(spies, outs, cpu, strict=True):
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                raise RuntimeError(f"py-spy failed: {err[-2000:]}")
            parts, total = charge(out.read_text())
            results.append(Sampled(parts, total, float(measured["ok"]), cpu_s, wall, measured))
    return results


def profile(kind: str, args: argparse.Namespace) -> Sampled:
    """Sample one server under load."""
    with _processes.running_server(kind, "--replicas", str(args.replicas)) as (port, server):
        return sample(port, [server.pid], args)[0]


def profile_front(args: argparse.Namespace) -> dict[str, Sampled]:
    """The front and the backend behind it under the front's load, then the backend alone."""
    replicas = ("--replicas", str(args.replicas))
    with _processes.running_server("ours", *replicas) as (back, backend):
        url = f"http://127.0.0.1:{back}/v1"
        with _processes.running_server("ours", *replicas, "--front", url) as (front, server):
            on_front, behind = sample(front, [server.pid, backend.pid], args)
        alone = sample(back, [backend.pid], args)[0]
    return {"front": on_front, "backend behind the front": behind, "backend alone": alone}


def _table(sides: dict[str, Sampled]) -> list[str]:
    """The parts of the stack, one column per side, heaviest on the first side first."""
    first = next(iter(sides.values()))
    names = sorted({p for side in sides.values() for p in side.parts},
                   key=lambda p: -first.parts[p])  # fmt: skip
    return [
        f"| part of the stack | {' | '.join(sides)} |",
        "|---|" + "--:|" * len(sides),
        *(f"| {name} | {' | '.join(side.per_request(name) for side in sides.values())} |"
          for name in names),
        f"| **all (samples)** | {' | '.join(side.per_request(None) for side in sides.values())} |",
    ]  # fmt: skip


def _front_report(args: argparse.Namespace, sides: dict[str, Sampled]) -> list[str]:
    """The front's table: parts, then each process's CPU, rate and TTFT."""

    def row(label: str, cell: Callable[[Sampled], str]) -> str:
        return f"| {label} | {' | '.join(cell(side) for side in sides.values())} |"

    def ttft(side: Sampled) -> str:
        value = side.load["ttft_p50_s"]
        return "-" if value is None else f"{value * 1e3:,.1f} ms"

    def saturation(side: Sampled) -> str:
        share = side.cpu_s / side.wall_s
        return f"{share:.2f}" + (" (saturated)" if share > SATURATED else "")

    front, behind = sides["front"], sides["backend behind the front"]
    both = (front.cpu_s + behind.cpu_s) / front.wall_s
    return [
        f"{args.concurrency} clients, {'streamed' if args.stream else 'whole'} completions of 16 "
        f"tokens, {args.replicas} replicas on each server, {args.duration:g} s sampled at "
        f"{RATE_HZ} Hz; CPU per request of each process (the load on the front for the first "
        "two columns, on the backend for the third).",
        "",
        *_table(sides),
        row("**CPU per request (/proc)**", lambda s: f"{s.cpu_s / s.requests * 1e6:,.0f} us"),
        row("CPU s / wall s (~1.0: saturated)", saturation),
        row("requests/s (load generator)", lambda s: f"{s.requests / s.wall_s:,.0f}"),
        row("TTFT p50 (load generator)", ttft),
        row("load generator CPU share", lambda s: f"{s.load['client_cpu_share']:.2f}"),
        "",
        f"Front + backend: {both:.2f} CPU s per wall s of {os.cpu_count()} cores "
        f"(plus the load generator's {front.load['client_cpu_share']:.2f}).",
    ]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_http", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=int, default=4, help="whole seconds sampled")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--no-stream", dest="stream", action="store_false")
    parser.add_argument(
        "--front", action="store_true", help="a RemoteRunner front and its backend instead"
    )
    args = parser.parse_args(argv)
    if args.front:
        lines = _front_report(args, profile_front(args))
    else:
        sides = {kind: profile(kind, args) for kind in ("ours", "hypercorn")}
        lines = [
            f"{args.concurrency} clients, {'streamed' if args.stream else 'whole'} completions "
            f"of 16 tokens, {args.duration:g} s sampled at {RATE_HZ} Hz; server CPU per request "
            f"(ours: {sides['ours'].requests:,.0f} requests, minimal app: "
            f"{sides['hypercorn'].requests:,.0f}).",
            "",
            *_table({"ours": sides["ours"], "minimal hypercorn app": sides["hypercorn"]}),
        ]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
