"""Admission: which requests a worker accepts, and the bounded queue they wait in for a tier.

A submitted batch is accepted whole or not at all: ``BadRequest`` (an id already open here),
``Backpressure`` (``max_pending`` batches wait already) or ``WorkerStopped`` (stopped, failed or
draining) refuse it before anything is registered. An accepted batch becomes one
:class:`~._port.Job` on the :class:`JobQueue`, a memory channel whose receive end the running
tier incarnation holds, and one :class:`~._requests.RequestState` per request, registered here
until its one outcome.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

import trio

from .._errors import Backpressure, BadRequest, ContinuationMismatch, WorkerStopped
from .._types import Request
from ..tier._continuation import Continuation, check_continuation
from ..tier._port import Job
from ..tier._requests import RequestState, RequestStream

__all__ = ["Admission", "JobQueue"]


class JobQueue:
    """Jobs waiting for a tier, first in first out, at most ``max_pending`` of them.

    The channel's own bound is ``max_pending``, so a full queue is ``send_nowait``'s
    ``WouldBlock``. Jobs re-queued after a restart go ahead of everything waiting
    (:meth:`put_first`): the next incarnation gets a fresh channel that holds them first. Only
    re-queued jobs may take the queue past ``max_pending``; new ones wait for room.
    """

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._send, self.receive = trio.open_memory_channel[Job](max_pending)
        self._oversized = False  # holds more than max_pending, after re-queueing into a full one

    def __len__(self) -> int:
        return self._send.statistics().current_buffer_used

    def put(self, job: Job) -> None:
        """Queue a new job, or hand it to a tier waiting for one.

        Raises:
            trio.WouldBlock: ``max_pending`` jobs wait already.
        """
        if self._oversized and len(self) >= self.max_pending:
            raise trio.WouldBlock
        self._send.send_nowait(job)

    def put_first(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` ahead of every waiting job, on a fresh channel (no tier runs now)."""
        waiting = [*jobs, *self.clear()]
        self._send.close()
        self.receive.close()
        size = max(self.max_pending, len(waiting))
        self._oversized = size > self.max_pending
        self._send, self.receive = trio.open_memory_channel[Job](size)
        for job in waiting:
            self._send.send_nowait(job)

    def clear(self) -> list[Job]:
        """Take every waiting job out, in order."""
        taken: list[Job] = []
        while True:
            try:
                taken.append(self.receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return taken


class Admission:
    """The requests a worker accepted and that have not ended yet, and the queue of their jobs."""

    def __init__(self, name: str, max_pending: int, max_attempts: int) -> None:
        self.name = name
        self.max_attempts = max_attempts
        self.deterministic: bool | None = None  # the runner's promise, once a tier has loaded
        self.queue = JobQueue(max_pending)
        self.open: dict[str, RequestState] = {}
        self.counts = collections.Counter[str]()  # accepted, finished, failed, cancelled, ...
        self.idle = trio.Event()  # set while no accepted request is open
        self.idle.set()
        self.accepting = True
        self.stopped_reason: str | None = None

    def check_accepting(self) -> None:
        """Raises ``WorkerStopped`` once the worker is stopped, failed or draining."""
        if not self.accepting:
            raise WorkerStopped(f"worker {self.name!r} is {self.stopped_reason or 'stopped'}")

    def submit(
        self,
        requests: tuple[Request, ...],
        continuing: Mapping[str, Continuation] | None = None,
    ) -> tuple[RequestStream, ...]:
        """Accept these requests as one batch, or none of them (see the module docstring).

        ``continuing``: for a request whose stream began on another worker, what it delivered
        there; its first run here continues it.
        """
        self.check_accepting()
        open_ = self.open
        for request in requests:
            if request.id in open_:
                raise BadRequest(f"request id {request.id!r} is already in flight on {self.name!r}")
            check_continuation(request, self.deterministic, f"the runner of {self.name!r}")
        continuing = continuing or {}
        states = [
            RequestState(request, self._ended, continuing.get(request.id)) for request in requests
        ]
        for state in states:
            here = state.id in continuing
            if here and not state.run_again(self.deterministic, self.max_attempts):
                raise BadRequest(f"request {state.id!r} cannot be continued on {self.name!r}")
            if state.continuation is not None and self.deterministic is not None:
                state.continuation.deterministic = self.deterministic
        try:
            self.queue.put(Job(states))
        except trio.WouldBlock:
            raise Backpressure(
                f"{self.name!r} has max_pending={self.queue.max_pending} batches waiting already"
            ) from None
        for state in states:
            open_[state.id] = state
        self.counts["accepted"] += len(states)
        for state in states:
            if state.id in continuing:
                self.count_continued(state)
        if self.idle.is_set():
            self.idle = trio.Event()
        return tuple(RequestStream(state) for state in states)

    def count_continued(self, state: RequestState) -> None:
        """One more run of ``state`` continues its stream (it delivered output)."""
        self.counts["continued"] += 1
        continuation = state.continuation
        if continuation is not None and continuation.mode is not None:
            self.counts[f"continued {continuation.mode}"] += 1

    def _ended(self, state: RequestState) -> None:
        self.open.pop(state.id, None)
        self.counts[state.outcome or "?"] += 1
        if isinstance(state.error, ContinuationMismatch):
            self.counts["mismatched"] += 1
        if not self.open:
            self.idle.set()
