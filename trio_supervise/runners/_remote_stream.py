"""One request of a :class:`~.remote.RemoteRunner`'s batch, over HTTP: its POST, an answer
that is not a 200 as its typed error, the stream's events as chunks; and the cancel scopes of a
batch's streams, each cancelled once its consumer leaves, even while the server is silent.

The wire (bodies, events, errors for statuses) is the OpenAI codec's; this is the I/O around it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import cast, final

import httpx
import trio

from .._errors import NetworkError, RequestTimeout, ServerError, Unauthorized, Unrecoverable
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

    __slots__ = ("halted", "refused", "scopes")

    def __init__(self) -> None:
        self.scopes: dict[str, trio.CancelScope] = {}
        self.halted = False
        self.refused: Unauthorized | None = None
        """The first ``Unauthorized`` a stream got: the session's key is refused."""

    def refuse(self, error: Unauthorized) -> None:
        """A stream's key was refused: halt the batch (its other streams share the key)."""
        if self.refused is None:
            self.refused = error
        self.halt()

    def halt(self) -> None:
        """Stop every stream of the batch, and those that have not started yet."""
        self.halted = True
        for scope in self.scopes.values():
            scope.cancel()


DRAIN = 1.0
"""Seconds a backend has to end a stream's body after its ``[DONE]``."""


MAX_LINE = 8 * 1024 * 1024
"""Bytes one line of a stream may have: a backend that sends more without a newline is broken."""


async def _read_to_the_end(body: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]`` (nothing, and the body's end), so that httpx puts the
    connection back in its pool: a response left before its end closes its connection, and the
    next request pays a new one (a connect here, an accept there). A backend that keeps the body
    open past :data:`DRAIN` is left, as before."""
    with trio.move_on_after(DRAIN):
        async for _ in body:
            pass


@final
class _Read:
    """What the events of one network read add to a stream: its new token ids and text (sent
    as one chunk, so a stream costs a chunk per read, not per event), its finish and usage."""

    __slots__ = ("done", "finish", "ids", "texts", "usage")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.texts: list[str] = []
        self.finish: FinishReason | None = None
        self.usage: Usage | None = None
        self.done = False

    def take(self, line: bytes, url: str) -> None:
        """One line of the stream: an event's data is decoded and added; others are skipped."""
        data = sse_data(line.decode("utf-8", "replace"))
        if data is None:
            return
        if data == DONE_DATA:
            self.done = True
            return
        event = decode_event(data, url)
        self.usage = event.usage or self.usage
        for choice in event.choices:
            if choice.finish_reason is not None:
                self.finish = choice.finish_reason
            self.ids.extend(choice.token_ids)
            if choice.text:
                self.texts.append(choice.text)


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
            raw = cast(AsyncGenerator[bytes, None], r.aiter_bytes())

            async def forward(lines: list[bytes]) -> bool:
                """The lines of one read, as one chunk; whether ``[DONE]`` was among them."""
                nonlocal finish, usage
                read = _Read()
                for line in lines:
                    read.take(line, url)
                    if read.done:
                        break
                finish = read.finish or finish
                usage = read.usage or usage
                if read.ids or read.texts:
                    await send.send(Chunk(request_id, tuple(read.ids), "".join(read.texts)))
                return read.done

            async with contextlib.aclosing(raw):
                pending = b""
                async for data in raw:
                    if batch.is_cancelled(request_id):
                        return None  # leaving closes the connection: the server stops
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    if len(pending) > MAX_LINE:
                        raise ServerError(f"{url} sent a line of more than {MAX_LINE} bytes")
                    if await forward(lines):
                        await _read_to_the_end(raw)
                        break
                else:
                    if pending:  # a last line with no newline after it
                        await forward([pending])
                    if finish is None:
                        raise NetworkError(f"{url}: the stream ended before the completion did")
    except httpx.TimeoutException as exc:
        raise RequestTimeout(f"POST {url} timed out ({type(exc).__name__})") from None
    except httpx.RequestError as exc:  # refused, reset, cut halfway, undecodable
        raise NetworkError(f"POST {url} failed: {type(exc).__name__}: {exc}") from None
    return Chunk(request_id, finish_reason=finish or FinishReason.STOP, usage=usage)
