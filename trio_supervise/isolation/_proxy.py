"""The parent's stand-in for a runner that lives elsewhere (a child process, a Ray actor).

The tier dispatches batches to a :class:`RunnerProxy` as it would to an inline runner, so
routing, the hang watchdog and the decisions about batch errors are the tier's own. The proxy
turns ``execute`` and ``rebuild_session`` into frames that its :class:`FrameSender` (the home of
the runner: :mod:`.process`, :mod:`.ray`) carries there, and each frame that comes back into the
chunk, end or error of the call waiting for it. A request that no frame can carry fails alone
with :class:`BadRequest` before anything is sent.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from .._errors import BadRequest
from .._types import Batch, Chunk, RebuildCause
from . import _codec as codec
from . import _frames as frames

__all__ = ["FrameSender", "RunnerProxy"]


class FrameSender(Protocol):
    """Where a :class:`RunnerProxy` sends its frames: a child process's home, or a Ray actor's."""

    async def send(self, message: Any) -> None: ...

    async def send_quietly(self, message: Any) -> None: ...


class RunnerProxy:
    """What the tier sees as its runner: batches and rebuilds travel to the runner as frames,
    and each frame that comes back is delivered (:meth:`deliver`) to the call waiting for it."""

    needs_device = False
    default_policy = None

    def __init__(self, sender: FrameSender, max_concurrency: int) -> None:
        self.sender = sender
        self.max_concurrency = max_concurrency
        self._batches: dict[int, trio.MemorySendChannel[Any]] = {}
        self._rebuilds: dict[int, trio.MemorySendChannel[Any]] = {}
        self._token = 0

    async def load(self, device: Any) -> None:
        """Loaded where it lives, before that side said Ready."""

    async def execute(self, batch: Batch) -> AsyncIterator[Chunk]:
        """Send the batch; yield its chunks as their frames arrive."""
        # Unbounded, but bounded in practice: the parent's routing fails a batch whose runner
        # sends more than its requests' max_tokens, and the reader never waits on a consumer.
        send, receive = trio.open_memory_channel[Any](math.inf)
        self._batches[batch.seq] = send
        told: set[str] = set()
        try:
            requests = [frames.request_to_data(r) for r in batch.requests]
            try:
                await self.sender.send(frames.Execute(batch.seq, requests))
            except codec.UNENCODABLE:
                # Nothing was sent. A request that no frame can carry fails alone (BadRequest,
                # never retried); the tier goes on, and so do the batch's other requests.
                requests, refused = _sendable(batch, requests)
                for chunk in refused:
                    yield chunk
                if not requests:
                    return
                await self.sender.send(frames.Execute(batch.seq, requests))
            async for message in receive:
                for request in batch.requests:  # consumers that left: tell the child's runner
                    if request.id not in told and batch.is_cancelled(request.id):
                        told.add(request.id)
                        await self.sender.send(frames.Cancel(batch.seq, request.id))
                if isinstance(message, frames.ChunkFrame):
                    yield frames.chunk_from_frame(message)
                elif isinstance(message, frames.BatchEnd):
                    return
                else:
                    assert isinstance(message, frames.BatchFailed)
                    raise frames.error_from_data(message.error)
        finally:
            self._batches.pop(batch.seq, None)

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Rebuild in the child; its error, if any, is raised here."""
        self._token += 1
        token = self._token
        send, receive = trio.open_memory_channel[Any](1)
        self._rebuilds[token] = send
        try:
            await self.sender.send(frames.Rebuild(token, cause.value))
            done = await receive.receive()
        finally:
            self._rebuilds.pop(token, None)
        if done.error is not None:
            raise frames.error_from_data(done.error)

    async def aclose(self) -> None:
        """Ask the runner's side to stop (its process is ended by the home)."""
        await self.sender.send_quietly(frames.Stop())

    def deliver(self, message: Any) -> None:
        """Route a frame from the runner's side to the batch or rebuild waiting for it."""
        if isinstance(message, frames.RebuildDone):
            target = self._rebuilds.get(message.token)
        else:
            target = self._batches.get(message.seq)
        if target is not None:
            target.send_nowait(message)


def _sendable(
    batch: Batch, requests: list[frames.RequestData]
) -> tuple[list[frames.RequestData], list[Chunk]]:
    """The requests a frame can carry, and an error chunk for each other one; when each can
    travel alone but not all together (over :data:`~._frames.MAX_FRAME`), every request fails."""
    sendable: list[frames.RequestData] = []
    refused: list[Chunk] = []
    for data in requests:
        problem = codec.encoding_problem(data)
        if problem is None:
            sendable.append(data)
        else:
            error = BadRequest(f"request {data.id!r} cannot be sent to its tier: {problem}")
            refused.append(Chunk(data.id, error=error))
    problem = codec.encoding_problem(frames.Execute(batch.seq, sendable))
    if problem is not None:
        message = f"batch {batch.seq} cannot be sent to its tier: {problem}"
        refused += [Chunk(d.id, error=BadRequest(message)) for d in sendable]
        sendable = []
    return sendable, refused
