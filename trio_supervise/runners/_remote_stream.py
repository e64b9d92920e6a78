"""One request of a :class:`~.remote.RemoteRunner`'s batch, over HTTP: its POST, an answer
that is not a 200 as its typed error, the stream's events as chunks; and the cancel scopes of a
batch's streams, each cancelled once its consumer leaves, even while the server is silent.

The wire (bodies, events, errors for statuses) is the OpenAI codec's; this is the I/O around it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import cast, final

import httpx
import trio

from .._errors import NetworkError, RequestTimeout, Unrecoverable
from .._types import Batch, Chunk, FinishReason, Usage
from ..openai import (
    DONE_DATA,
    decode_event,
    error_detail,
    error_for_status,
    retry_after_seconds,
    sse_data,
)

__all__ = ["CANCEL_POLL", "Streams", "stream_completion", "watch_cancels"]

CANCEL_POLL = 0.1
"""Seconds between two looks at which requests of a batch their consumers left."""


@final
class Streams:
    """The streams of one batch: each request's cancel scope, and whether the batch is halted."""

    __slots__ = ("halted", "scopes")

    def __init__(self) -> None:
        self.scopes: dict[str, trio.CancelScope] = {}
        self.halted = False

    def halt(self) -> None:
        """Stop every stream of the batch, and those that have not started yet."""
        self.halted = True
        for scope in self.scopes.values():
            scope.cancel()


DRAIN = 1.0
"""Seconds a backend has to end a stream's body after its ``[DONE]``."""


async def _read_to_the_end(lines: AsyncGenerator[str, None]) -> None:
    """Read what follows ``[DONE]`` (nothing, and the body's end), so that httpx puts the
    connection back in its pool: a response left before its end closes its connection, and the
    next request pays a new one (a connect here, an accept there). A backend that keeps the body
    open past :data:`DRAIN` is left, as before."""
    with trio.move_on_after(DRAIN):
        async for _ in lines:
            pass


async def watch_cancels(batch: Batch, scopes: dict[str, trio.CancelScope]) -> None:
    """Cancel the stream of each request whose consumer left, even while the server is silent
    (no event would otherwise wake it): its connection closes, and the server stops."""
    while True:
        await trio.sleep(CANCEL_POLL)
        for request_id, scope in list(scopes.items()):
            if batch.is_cancelled(request_id):
                scope.cancel()


async def stream_completion(
    client: httpx.AsyncClient,
    base_url: str,
    path: str,
    body: dict[str, object],
    request_id: str,
    batch: Batch,
    send: trio.MemorySendChannel[Chunk],
    *,
    answered: Callable[[], None],
    scrub: Callable[[str], str],
    model: str,
) -> Chunk | None:
    """POST ``body`` to ``path`` (on ``base_url``, the client's) and send the stream's chunks;
    return its last chunk (``None`` if its consumer left). ``answered`` is called once the
    server answers 200; ``scrub`` takes the key out of what the server says; ``model`` is named
    when the server answers 404.

    Raises:
        InferenceError: the typed error of the answer's status, of an error event, of a
            malformed event, a cut stream (:class:`NetworkError`) or a timeout.
    """
    url = f"{base_url}{path}"
    finish: FinishReason | None = None
    usage: Usage | None = None
    try:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                detail = scrub(error_detail(await r.aread()))
                message = f"POST {url} answered {r.status_code}: {detail}"
                if r.status_code == 404:  # the model went away, or the path is wrong
                    raise Unrecoverable(f"{message} (does it serve model {model!r}?)")
                raise error_for_status(
                    r.status_code, message, retry_after_seconds(r.headers.get("retry-after"))
                )
            answered()
            lines = cast(AsyncGenerator[str, None], r.aiter_lines())
            async with contextlib.aclosing(lines):
                async for line in lines:
                    if batch.is_cancelled(request_id):
                        return None  # leaving closes the connection: the server stops
                    data = sse_data(line)
                    if data is None:
                        continue
                    if data == DONE_DATA:
                        await _read_to_the_end(lines)
                        break
                    event = decode_event(data, url)
                    usage = event.usage or usage
                    for choice in event.choices:
                        if choice.finish_reason is not None:
                            finish = choice.finish_reason
                        if choice.text or choice.token_ids:
                            await send.send(Chunk(request_id, choice.token_ids, choice.text))
                else:
                    if finish is None:
                        raise NetworkError(f"{url}: the stream ended before the completion did")
    except httpx.TimeoutException as exc:
        raise RequestTimeout(f"POST {url} timed out ({type(exc).__name__})") from None
    except httpx.RequestError as exc:  # refused, reset, cut halfway, undecodable
        raise NetworkError(f"POST {url} failed: {type(exc).__name__}: {exc}") from None
    return Chunk(request_id, finish_reason=finish or FinishReason.STOP, usage=usage)
