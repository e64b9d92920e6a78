"""Raw ASGI, as the app writes it: the callables' types, a JSON answer, an event stream's start
and events, and a cancel scope that the client's leaving cancels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..openai import encode_json

__all__ = [
    "CLOSE",
    "Handler",
    "Receive",
    "Scope",
    "Send",
    "send_event",
    "send_events_start",
    "send_json",
    "until_disconnect",
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

CLOSE = [(b"connection", b"close")]
"""The header of an answer after which the connection closes."""

_EVENT_STREAM = ((b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"))


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole answer: ``body`` as JSON, with ``headers`` besides its content type."""
    payload = encode_json(body)
    all_headers = [(b"content-type", b"application/json"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": payload})


async def send_events_start(send: Send) -> None:
    """The start of a 200 whose body is server-sent events."""
    await send({"type": "http.response.start", "status": 200, "headers": [*_EVENT_STREAM]})


async def send_event(send: Send, data: bytes) -> None:
    """One event of a stream (``data``: the event, framed)."""
    await send({"type": "http.response.body", "body": data, "more_body": True})


@asynccontextmanager
async def until_disconnect(receive: Receive) -> AsyncIterator[trio.CancelScope]:
    """A cancel scope for a response's work that the client's leaving cancels; what runs
    outside it (the response's end) is not cancelled by a disconnect."""
    work = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                continue  # more body, or nothing: only a disconnect matters here
            work.cancel()

        nursery.start_soon(watch)
        yield work
        nursery.cancel_scope.cancel()
