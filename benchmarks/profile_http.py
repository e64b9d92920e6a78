"""Where a streamed completion's server time goes: ours against the minimal app, per request.

``python -m benchmarks.profile_http [--concurrency 32] [--duration 4] [--stream/--no-stream]``
starts each server in its own process (our ``serve`` with the mock runner, and the minimal
hypercorn app of :mod:`benchmarks.http_servers`), drives it with the load generator from another
process, and samples the server with py-spy (``pip install py-spy``; it reads the process from
outside, so the server runs at full speed) for the measured seconds. Each sample is charged to
the code it was in: its innermost frame, or for a frame of the standard library (a
``contextlib`` helper, ``socket``) the innermost caller outside it. It prints one markdown table:
for each part of the stack, microseconds of server CPU per request on both sides.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a script: ``benchmarks`` is a package of the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _processes

RATE_HZ = 250

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
    ("trio_supervise/", "our worker: admission, tier, request buffers"),
    ("benchmarks/http_servers.py", "the minimal app"),
    ("hypercorn/", "hypercorn (ASGI server)"),
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


def profile(kind: str, args: argparse.Namespace) -> tuple[collections.Counter[str], int, float]:
    """Sample one server under load: (samples per part, total samples, requests served)."""
    with (
        _processes.running_server(kind, "--replicas", str(args.replicas)) as (port, server),
        tempfile.TemporaryDirectory() as tmp,
    ):
        load = {"concurrency": args.concurrency, "stream": args.stream, "max_tokens": 16}
        _processes.load(port, duration=1.0, **load)  # warm up
        out = Path(tmp) / "raw.txt"
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(server.pid), "--rate", str(RATE_HZ),
             "--duration", str(round(args.duration)), "--format", "raw", "--output", str(out),
             "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        measured = _processes.load(port, duration=args.duration, extra=["--warmup", "0"], **load)
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err[-2000:]}")
        parts, total = charge(out.read_text())
    return parts, total, float(measured["ok"])


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_http", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=int, default=4, help="whole seconds sampled")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--no-stream", dest="stream", action="store_false")
    args = parser.parse_args(argv)
    sides = {kind: profile(kind, args) for kind in ("ours", "hypercorn")}
    names = sorted({p for parts, _, _ in sides.values() for p in parts},
                   key=lambda p: -sides["ours"][0][p])  # fmt: skip

    def per_request(kind: str, part: str | None) -> str:
        parts, total, requests = sides[kind]
        samples = total if part is None else parts[part]
        return f"{samples / RATE_HZ / requests * 1e6:,.0f} us" if samples else "-"

    lines = [
        f"{args.concurrency} clients, {'streamed' if args.stream else 'whole'} completions of 16 "
        f"tokens, {args.duration:g} s sampled at {RATE_HZ} Hz; server CPU per request "
        f"(ours: {sides['ours'][2]:,.0f} requests, minimal app: {sides['hypercorn'][2]:,.0f}).",
        "",
        "| part of the stack | ours | minimal hypercorn app |",
        "|---|--:|--:|",
        *(f"| {name} | {per_request('ours', name)} | {per_request('hypercorn', name)} |"
          for name in names),
        f"| **all** | {per_request('ours', None)} | {per_request('hypercorn', None)} |",
    ]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
