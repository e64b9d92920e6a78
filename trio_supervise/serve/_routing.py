"""A request's way through the pool: its :class:`PoolStream`, and the route of its model.

A :class:`ModelRoute` holds one model's replicas and its queue, and sends a batch (or one
request again) to the least-loaded READY replica. A :class:`PoolStream` reads the request's
output from the replica it was sent to; when that replica stops or fails it, the stream asks the
route to send it again, to another replica: before its first chunk when it is idempotent (and
after a remote backend's error, to each other ready replica at most once), after output when it
may be continued (``Request.continuation``, within ``max_attempts`` runs in all). Its consumer
sees one unbroken stream; otherwise its error is the worker's.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any, final

import attrs
import trio

from .._errors import (
    CircuitOpen,
    InferenceError,
    NetworkError,
    RateLimited,
    RequestTimeout,
    ServerError,
    WorkerStopped,
)
from .._types import Batch, Chunk, Request
from ..tier._continuation import Continuation, continuation_mode
from ..tier._requests import Collected, RequestStream, collect, error_for_request
from ..worker._worker import WorkerState
from ._replica import Replica

__all__ = ["ModelRoute", "PoolStream", "Waiting"]


_BACKEND_ERRORS = (CircuitOpen, NetworkError, RateLimited, ServerError)
"""A remote backend's failures: an idempotent request with no output yet tries another replica."""


@attrs.define(eq=False)
class Waiting:
    """A request in a model's queue, and what continues it (one that streamed elsewhere)."""

    request: Request
    stream: PoolStream
    continuing: Continuation | None = None


@final
class PoolStream:
    """A request's output through the pool: an async iterator and async context manager, like
    :class:`RequestStream`; an idempotent request that a replica dropped before its first chunk
    is sent again, to another replica, and one that streamed already goes on there when it may
    be continued."""

    def __init__(self, route: ModelRoute, request: Request) -> None:
        self._route = route
        self.request = request
        self.admitted_at = trio.current_time()
        """When the pool admitted it (trio's clock)."""
        self.dispatches: list[tuple[float, str, int]] = []
        """Each time it was sent to a replica: ``(when, replica, the worker's generation)``."""
        self._moves: list[tuple[float, str]] = []  # sent to another replica: when, how
        self._earlier: list[tuple[RequestStream, Replica | None]] = []  # read before a move
        self._inner: RequestStream | None = None
        self._assigned = trio.Event()
        self._error: InferenceError | None = None
        self._got_chunk = False
        self._replica: Replica | None = None
        self._tried: set[Replica] = set()
        self._closed = False
        self._whole = False  # collect(): the reader wants the answer at the end only

    def _assign(self, inner: RequestStream | None, replica: Replica | None,
                error: InferenceError | None = None) -> None:  # fmt: skip
        self._inner, self._replica, self._error = inner, replica, error
        if inner is not None:
            if self._whole:
                inner.wake_at_the_end_only()
            if replica is not None and replica.worker is not None:
                generation = replica.worker.generation
                self.dispatches.append((trio.current_time(), replica.name, generation))
        self._assigned.set()

    def __aiter__(self) -> PoolStream:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            if not self._assigned.is_set():
                await self._wait_for_a_replica()
            try:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                assert self._inner is not None
                chunk = await self._inner.__anext__()
            except InferenceError as exc:
                moved = isinstance(exc, WorkerStopped) or self._replica_ended()
                backend = isinstance(exc, _BACKEND_ERRORS) and self._another_ready()
                may, continuing = self._may_move()
                if not ((moved or backend) and may):
                    self._closed = True
                    raise
                # Its replica stopped, or its backend failed, before it produced anything (or it
                # may be continued): another replica may serve it (each replica is tried once
                # for a backend error).
                if self._replica is not None:
                    self._tried.add(self._replica)
                if self._inner is not None:
                    self._earlier.append((self._inner, self._replica))
                    self._inner = None
                self._moves.append((trio.current_time(), "continued" if continuing else "again"))
                self._assigned = trio.Event()
                self._route.resubmit(self, avoid=self._tried, continuing=continuing)
                continue
            self._got_chunk = True
            return chunk

    @property
    def replica(self) -> Replica | None:
        """The replica it was sent to last (None: none yet)."""
        return self._replica

    @property
    def generation(self) -> int:
        """The generation of the tier that ran it last on its replica (0: none yet)."""
        inner = self._inner
        if inner is not None and inner.generation:
            return inner.generation
        return self.dispatches[-1][2] if self.dispatches else 0

    @property
    def first_chunk(self) -> tuple[float, Replica | None] | None:
        """When its first output arrived (trio's clock), and from which replica; None: none
        yet."""
        for stream, replica in self._streams():  # in the order it ran
            if stream.first_chunk_at is not None:
                return stream.first_chunk_at, replica
        return None

    @property
    def reruns(self) -> list[tuple[float, str]]:
        """Its runs after the first, in order: ``(when, "continued" or "again")`` each, on the
        same worker after a restart or on another replica."""
        runs = [run for stream, _ in self._streams() for run in stream.reruns]
        return sorted([*runs, *self._moves])

    def _streams(self) -> list[tuple[RequestStream, Replica | None]]:
        inner = self._inner
        return self._earlier if inner is None else [*self._earlier, (inner, self._replica)]

    async def _wait_for_a_replica(self) -> None:
        """Wait to be sent to a replica, within the request's deadline: a request that waits in
        the pool's queue (no replica READY, or every one of them gone) still ends on time."""
        deadline = self.request.deadline
        with trio.move_on_at(math.inf if deadline is None else deadline):
            await self._assigned.wait()
        if self._assigned.is_set():  # sent as the deadline passed: its worker times it out
            return
        self._route.forget(self)
        self._closed = True
        raise RequestTimeout(
            f"request {self.request.id!r} passed its deadline waiting for a replica of "
            f"{self._route.model!r} (none was ready)"
        )

    def _replica_ended(self) -> bool:
        """Whether the replica it ran on stopped or failed (its error is the worker's end)."""
        replica = self._replica
        worker = None if replica is None else replica.worker
        return worker is None or worker.state.value in (WorkerState.STOPPED, WorkerState.FAILED)

    def _another_ready(self) -> bool:
        return any(
            r.ready and r is not self._replica and r not in self._tried
            for r in self._route.replicas
        )

    def _may_move(self) -> tuple[bool, Continuation | None]:
        """Whether it may go to another replica, and what continues it there (after output)."""
        if self._closed or self._route.closed or self._route.all_stopped():
            return False, None
        if not self._got_chunk:
            return self.request.idempotent, None
        inner, replica = self._inner, self._replica
        carried = None if inner is None else inner.carry()
        if carried is None or replica is None:
            return False, None
        mode = continuation_mode(self.request, carried.deterministic)
        if mode is None or carried.attempts >= replica.options.max_attempts:
            return False, None
        return True, carried

    async def __aenter__(self) -> PoolStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Leave: the request is cancelled where it runs (or dropped from the queue)."""
        self._closed = True
        self._route.forget(self)
        if self._inner is not None:
            await self._inner.aclose()
        else:
            await trio.lowlevel.checkpoint()

    async def collect(self) -> Collected:
        """Read to the end: ``(token_ids, text, finish_reason, usage)``."""
        self.wake_at_the_end_only()
        return await collect(self)

    def wake_at_the_end_only(self) -> None:
        """A reader that wants the whole answer: its output coalesces until the end (see
        ``RequestStream.wake_at_the_end_only``)."""
        self._whole = True
        if self._inner is not None:
            self._inner.wake_at_the_end_only()


@final
class ModelRoute:
    """One model's replicas and queue: where each of its requests is sent."""

    def __init__(
        self,
        model: str,
        replicas: list[Replica],
        queue: collections.deque[Waiting],
        closed: Callable[[], bool],
    ) -> None:
        self.model = model
        self.replicas = replicas
        self.queue = queue
        """What waits for a replica, in order (a request sent again goes first)."""
        self.wake = trio.Event()
        """Set when the queue grows (the batcher replaces it once woken)."""
        self._closed = closed

    @property
    def closed(self) -> bool:
        """The pool drains or has stopped: no request moves to another replica."""
        return self._closed()

    def all_stopped(self) -> bool:
        """Every replica was stopped for good by its policy."""
        return all(r.stopped for r in self.replicas)

    def admit(self, request: Request) -> PoolStream:
        """Queue ``request``; its output comes through the returned stream."""
        stream = PoolStream(self, request)
        self.queue.append(Waiting(request, stream))
        self.wake.set()
        return stream

    def forget(self, stream: PoolStream) -> None:
        """Take ``stream``'s request out of the queue, if it waits there."""
        for waiting in self.queue:
            if waiting.stream is stream:
                self.queue.remove(waiting)
                break

    def resubmit(
        self, stream: PoolStream, avoid: set[Replica], continuing: Continuation | None
    ) -> None:
        """Send a request again, alone, to another ready replica (or queue it first)."""
        waiting = Waiting(stream.request, stream, continuing)
        replica = self.least_loaded(avoid=avoid)
        if replica is None:
            self.queue.appendleft(waiting)
            self.wake.set()
            return
        self.submit(replica, [waiting])

    def least_loaded(self, avoid: set[Replica] | None = None) -> Replica | None:
        """The READY replica with the least load, not one in ``avoid`` where another is ready
        (ties: the one sent fewer batches)."""
        ready = [r for r in self.replicas if r.ready and r not in (avoid or ())]
        if not ready:
            ready = [r for r in self.replicas if r.ready]
        return min(ready, key=lambda r: (r.load, r.dispatched), default=None)

    def submit(self, replica: Replica, group: list[Waiting]) -> None:
        """Send ``group`` to ``replica`` as one batch; a refusal is each request's error."""
        assert replica.worker is not None
        replica.dispatched += 1
        try:
            continuing = {w.request.id: w.continuing for w in group if w.continuing is not None}
            streams = replica.worker.submit(
                Batch([w.request for w in group]), continuing=continuing or None
            )
        except InferenceError as exc:
            for waiting in group:
                waiting.stream._assign(None, replica, error_for_request(exc))
            return
        for waiting, inner in zip(group, streams, strict=True):
            waiting.stream._assign(inner, replica)

    def fail_waiting(self, error: InferenceError) -> None:
        """End everything in the queue with (a copy of) ``error``."""
        while self.queue:
            self.queue.popleft().stream._assign(None, None, error_for_request(error))
