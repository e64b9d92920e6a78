"""A load generator for the HTTP benchmarks, run in a process of its own (never the server's).

``python -m benchmarks.loadgen URL --concurrency 32 --duration 2 [--stream] [--max-tokens 16]``
opens ``concurrency`` keep-alive HTTP/1.1 connections, each sending completions one after
another for ``duration`` seconds after a ``warmup``, and prints one JSON object: requests per
second, time to first token (the first body bytes: the first SSE event, or the whole body
without streaming) and latency percentiles, the statuses seen, and the client's own CPU share.

It is a thin client so that it is not what is measured: Trio sockets, and httptools (the C
parser uvicorn uses) for the responses. A 429 or 503 with ``Retry-After`` is counted as a
refusal the server said it would make; any other 5xx, a 429/503 without ``Retry-After``, or a
broken connection counts as ``bad``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httptools
import trio

__all__ = ["Load", "main", "run_load"]


class _Response:
    """httptools callbacks for one response at a time on one connection."""

    def __init__(self) -> None:
        self.reset()

    parser: Any = None  # set once the parser exists (its state is valid only in callbacks)

    def reset(self) -> None:
        self.first_body: float | None = None
        self.retry_after = False
        self.complete = False
        self.keep_alive = True
        self.status = 0
        self.events = 0

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = True

    def on_body(self, body: bytes) -> None:
        if self.first_body is None:
            self.first_body = time.perf_counter()
        self.events += body.count(b"data: ")

    def on_message_complete(self) -> None:
        self.complete = True


class Load:
    """What every connection saw, added up."""

    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.latency: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.bad = 0
        self.errors: Counter[str] = Counter()
        self.connections = 0
        self.events = 0  # SSE events in the bodies of successful responses

    def record(
        self, status: int, retry_after: bool, sent: float, first: float, done: float, events: int
    ) -> None:
        self.statuses[status] += 1
        refused_with_a_hint = status in (429, 503) and retry_after
        if (status >= 500 and not refused_with_a_hint) or (status == 429 and not retry_after):
            self.bad += 1
        if status == 200:
            self.ttft.append(first - sent)
            self.latency.append(done - sent)
            self.events += events


def _request_bytes(url: urllib.parse.SplitResult, body: bytes) -> bytes:
    return (
        f"POST {url.path or '/'} HTTP/1.1\r\nhost: {url.netloc}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _connection(
    url: urllib.parse.SplitResult, request: bytes, start: float, end: float, load: Load
) -> None:
    """Send requests back to back on one connection until ``end``; record those sent after
    ``start`` that finished by ``end``."""
    assert url.hostname is not None and url.port is not None
    while time.perf_counter() < end:
        try:
            stream = await trio.open_tcp_stream(url.hostname, url.port)
        except OSError as exc:
            load.errors[f"connect: {type(exc).__name__}"] += 1
            load.bad += 1
            await trio.sleep(0.01)
            continue
        load.connections += 1
        response = _Response()
        parser = response.parser = httptools.HttpResponseParser(response)
        try:
            async with stream:
                while time.perf_counter() < end:
                    response.reset()
                    sent = time.perf_counter()
                    await stream.send_all(request)
                    while not response.complete:
                        data = await stream.receive_some(65536)
                        if not data:
                            raise ConnectionResetError("the server closed the connection")
                        parser.feed_data(data)
                    done = time.perf_counter()
                    if sent >= start:
                        first = response.first_body or done
                        load.record(response.status, response.retry_after, sent, first, done,
                                    response.events)  # fmt: skip
                    if not response.keep_alive:
                        break
        except (OSError, trio.BrokenResourceError, httptools.HttpParserError) as exc:
            if time.perf_counter() < end:
                load.errors[type(exc).__name__] += 1
                load.bad += 1


async def run_load(
    target: str,
    body: dict[str, Any],
    *,
    concurrency: int,
    duration: float,
    warmup: float = 0.3,
) -> dict[str, Any]:
    """Drive the load and summarise it (see the module docstring)."""
    url = urllib.parse.urlsplit(target)
    request = _request_bytes(url, json.dumps(body).encode())
    load = Load()
    cpu = time.process_time()
    begin = time.perf_counter()
    start, end = begin + warmup, begin + warmup + duration
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(_connection, url, request, start, end, load)
    cpu = time.process_time() - cpu

    def percentile(values: list[float], q: int) -> float | None:
        if len(values) < 2:
            return values[0] if values else None
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    ok = len(load.latency)
    return {
        "concurrency": concurrency,
        "duration_s": duration,
        "requests": sum(load.statuses.values()),
        "ok": ok,
        "requests_per_s": ok / duration,
        "ttft_p50_s": percentile(load.ttft, 50),
        "ttft_p99_s": percentile(load.ttft, 99),
        "latency_p50_s": percentile(load.latency, 50),
        "latency_p99_s": percentile(load.latency, 99),
        "statuses": {str(status): count for status, count in sorted(load.statuses.items())},
        "bad": load.bad,
        "errors": dict(load.errors),
        "connections": load.connections,
        "events_per_response": load.events / ok if ok else 0.0,
        "client_cpu_share": cpu / (warmup + duration),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument(
        "url", help="the completions URL, e.g. http://127.0.0.1:8000/v1/completions"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds before measuring")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="ask for server-sent events")
    args = parser.parse_args(argv)
    body = {"prompt": "hello", "max_tokens": args.max_tokens, "stream": args.stream}
    result = trio.run(
        lambda: run_load(
            args.url,
            body,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
