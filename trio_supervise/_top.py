"""``trio-supervise top URL``: a live view of a served instance, for incidents.

It polls ``GET URL/v1/workers`` and shows one row per replica (state, restarts, queue, tokens/s,
recent TTFT) and the latest supervision events. :func:`frame` draws one view from two polls and
the seconds between them, a pure function (tests call it without a server); :func:`run_top`
polls and draws, until Ctrl-C or, with ``--once``, for one frame.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .serve._keys import ENV_VAR

__all__ = ["API_KEY_ENV", "TopError", "add_top_parser", "frame", "poll", "run_top"]

API_KEY_ENV = ENV_VAR
"""The key sent without ``--api-key``: the variable the server reads a key from."""

WIDTH = 110
"""Columns of a frame printed where there is no terminal to measure."""

EVENTS_SHOWN = 10
"""Supervision events a frame shows, newest last."""

TIMEOUT = 5.0
"""Seconds a poll may take."""

STATE_STYLES = {
    "ready": "green",
    "starting": "yellow",
    "rebuilding": "yellow",
    "stopped": "red",
    "failed": "red",
}
EVENT_STYLES = {
    "ready": "green",
    "resumed": "yellow",
    "restarting": "yellow",
    "failed": "red",
    "stopped": "red",
    "escalated": "red",
    "gave_up": "red",
}

Poll = Mapping[str, Any]
"""One answer of ``/v1/workers``: ``{"workers": [...], "events": [...]}``."""


class TopError(Exception):
    """A poll that got no listing; its message is one line for the user."""


def add_top_parser(commands: Any) -> None:
    """Add the ``top`` subcommand to the CLI."""
    top = commands.add_parser(
        "top",
        help="a live view of a served instance: its replicas and supervision events",
        description="Poll GET URL/v1/workers and show one row per replica (state, generation, "
        "restarts and their last cause, resumes, queue, in flight, tokens/s, TTFT p50/p99 in "
        "ms, breaker) and the latest supervision events, until Ctrl-C. Exit code 2 when the "
        "server cannot be reached or refuses the key.",
    )
    top.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    top.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"send 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, if set)",
    )
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="between polls (1.0)"
    )
    top.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit: it polls twice, --interval apart, for tokens/s "
        "(with --interval 0, once, and tokens/s shows '-')",
    )


def run_top(
    args: argparse.Namespace, *, console: Console | None = None, errors: Console | None = None
) -> int:
    """Run ``top``: 0 after ``--once`` or Ctrl-C, 2 (and one line on ``errors``) when the
    server cannot be reached, refuses the key, or the arguments are wrong."""
    # Into a pipe or a file, rich would wrap at 80 columns and cut the headers: a frame is ~100.
    out = console if console is not None else Console()
    if console is None and not out.is_terminal:
        out = Console(width=max(out.width, WIDTH))
    err = errors if errors is not None else Console(stderr=True, soft_wrap=True)
    url = args.url.rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    interval = args.interval
    problem = None
    if not (math.isfinite(interval) and interval >= 0):
        problem = f"--interval must be a number of seconds >= 0, got {interval}"
    elif interval == 0 and not args.once:
        problem = "--interval 0 is for --once (one poll); a live view needs an interval > 0"
    elif key is not None and not (key.isascii() and key.isprintable()):
        problem = "the API key must be printable ASCII (it is not shown)"
    if problem is not None:
        err.print(problem, style="red", markup=False, highlight=False)
        return 2
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(headers=headers, timeout=TIMEOUT) as client:
            if args.once:
                _once(client, url, interval, out)
            else:
                _live(client, url, interval, out)
    except TopError as exc:
        err.print(str(exc), style="red", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def _once(client: httpx.Client, url: str, interval: float, out: Console) -> None:
    first = poll(client, url)
    if interval == 0:
        out.print(frame(None, first, 0.0, source=url, at=time.time()))
        return
    then = time.monotonic()
    time.sleep(interval)
    second = poll(client, url)
    out.print(frame(first, second, time.monotonic() - then, source=url, at=time.time()))


def _live(client: httpx.Client, url: str, interval: float, out: Console) -> None:
    previous = poll(client, url)  # the first poll fails loudly; later ones are shown, and retried
    then = time.monotonic()
    view = frame(None, previous, 0.0, source=url, at=time.time())
    with contextlib.ExitStack() as stack:
        if not out.is_terminal:  # Live leaves its last frame without a line end there
            stack.callback(out.line)
        live = stack.enter_context(Live(view, console=out, auto_refresh=False))
        while True:
            time.sleep(interval)
            try:
                current = poll(client, url)
            except TopError as exc:
                stamp = time.strftime("%H:%M:%S")
                failed = Text(f"{stamp} {exc}; polling again", style="red")
                live.update(Group(view, failed), refresh=True)
                continue
            now = time.monotonic()
            view = frame(previous, current, now - then, source=url, at=time.time())
            previous, then = current, now
            live.update(view, refresh=True)


def poll(client: httpx.Client, url: str) -> dict[str, Any]:
    """``GET url/v1/workers``, as JSON.

    Raises:
        TopError: no connection, a 401 (a key is needed, or the one sent is refused), another
            status, or an answer that is not a worker listing.
    """
    where = f"{url}/v1/workers"
    try:
        reply = client.get(where)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise TopError(f"cannot reach {where}: {_cause(exc)}") from None
    if reply.status_code == 401:
        if "authorization" in client.headers:
            raise TopError(f"{where} refused the API key (401): check --api-key or ${API_KEY_ENV}")
        raise TopError(f"{where} needs an API key (401): give --api-key KEY or set ${API_KEY_ENV}")
    if reply.status_code != 200:
        raise TopError(f"{where} answered {reply.status_code}: {_error_message(reply)}")
    try:
        body = reply.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("workers"), list):
        raise TopError(f"{where} answered no worker listing: is it a trio-supervise server?")
    return body


def _cause(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_message(reply: httpx.Response) -> str:
    """The message of the server's error body, else the status's reason, on one line."""
    try:
        message = reply.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = reply.reason_phrase
    return " ".join(str(message).split())[:200]


def frame(
    previous: Poll | None,
    current: Poll,
    elapsed: float,
    *,
    source: str = "",
    at: float | None = None,
) -> RenderableType:
    """One view: a row per replica of ``current`` and its latest events (newest last).

    A replica's tokens/s is the growth of its ``tokens`` since ``previous`` over ``elapsed``
    seconds: ``"-"`` without a previous poll (or one without that replica), or when its count
    went down (a new server). ``source`` and ``at`` (Unix seconds) go in the title.
    """
    workers = [w for w in current.get("workers") or [] if isinstance(w, Mapping)]
    before = {
        w.get("name"): w
        for w in (previous.get("workers") or [] if previous is not None else [])
        if isinstance(w, Mapping)
    }
    breakers = any(w.get("breaker") is not None for w in workers)
    title = " ".join(
        part
        for part in (source, f"{len(workers)} replica(s)", "" if at is None else _clock(at))
        if part
    )
    table = Table(title=Text(title, style="bold"), title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, padding=0)  # fmt: skip
    table.add_column("replica", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for header in ("gen", "restarts", "resumes", "queue", "in flight", "tok/s", "TTFT p50",
                   "TTFT p99"):  # fmt: skip
        table.add_column(header, justify="right")  # a narrow terminal wraps the headers
    if breakers:
        table.add_column("breaker", no_wrap=True)
    table.add_column("last cause", overflow="ellipsis")  # what shrinks in a narrow terminal
    for w in workers:
        state = str(w.get("state"))
        rate = tokens_per_second(before.get(w.get("name")), w, elapsed)
        row = [
            Text(str(w.get("name"))),
            Text(state, style=STATE_STYLES.get(state, "")),
            _text(w.get("generation")),
            _text(w.get("restarts")),
            _text(w.get("resumes")),
            _text(w.get("pending")),
            _text(w.get("in_flight")),
            Text("-" if rate is None else f"{rate:.1f}"),
            _milliseconds(w.get("ttft_p50")),
            _milliseconds(w.get("ttft_p99")),
        ]
        if breakers:
            breaker = w.get("breaker")
            style = "green" if breaker == "closed" else "red" if breaker == "open" else "yellow"
            row.append(Text("" if breaker is None else str(breaker), style=style))
        cause = w.get("last_restart_cause")
        row.append(Text("" if cause is None else str(cause)))
        table.add_row(*row)
    return Group(table, Text(""), _events(current.get("events") or []))


def tokens_per_second(before: Poll | None, now: Poll, elapsed: float) -> float | None:
    """Tokens a second between two records of one replica; None when it cannot be told."""
    if before is None or not elapsed > 0:
        return None
    first, last = before.get("tokens"), now.get("tokens")
    if not isinstance(first, int) or not isinstance(last, int) or last < first:
        return None
    return (last - first) / elapsed


def _echo(event: Mapping[str, Any]) -> bool:
    """The root supervisor's start or ready of a slot: the worker's own event says the same."""
    worker = event.get("worker")
    return event.get("supervisor") != worker and event.get("kind") in ("started", "ready")


def _events(events: list[Any]) -> RenderableType:
    shown = [e for e in events if isinstance(e, Mapping) and not _echo(e)][-EVENTS_SHOWN:]
    if not shown:
        return Text("no supervision events yet", style="dim")
    table = Table(title=Text("latest supervision events", style="bold"), title_justify="left",
                  box=None, show_header=False, pad_edge=False)  # fmt: skip
    for _ in range(4):
        table.add_column()
    for e in shown:
        kind = str(e.get("kind"))
        when = e.get("time")
        table.add_row(
            Text(_clock(when) if isinstance(when, int | float) else "?", style="dim"),
            Text(str(e.get("worker"))),
            Text(kind, style=EVENT_STYLES.get(kind, "")),
            Text(str(e.get("text") or "")),
        )
    return table


def _clock(unix: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix))


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


def _text(value: Any) -> Text:
    return Text(_shown(value))


def _milliseconds(seconds: Any) -> Text:
    if not isinstance(seconds, int | float):
        return Text("-")
    return Text(f"{seconds * 1000:.1f}ms")
