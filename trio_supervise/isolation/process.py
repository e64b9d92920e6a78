"""The process tier: the runner lives in a child process that the worker can always replace.

The parent side of :mod:`trio_supervise.isolation._host`. A :class:`ProcessTier` is a :class:`Tier`
whose runner is a :class:`ChildRunner`, a proxy that turns ``execute`` into frames and frames
back into chunks, so dispatch, routing, the hang watchdog and the decisions about batch errors
are the inline tier's own. What this module adds is the processes' life:

* :class:`ChildProcesses` owns the nursery where a worker's child processes run (it outlives
  every tier incarnation, so that a standby spare can wait for the next one) and that spare;
* each incarnation takes the spare, or starts a fresh :class:`~._child_process.ChildProcess`,
  initialises it, and stops it on the way out without waiting for it to exit.

The parent never imports the runner and never touches CUDA: the factory crosses as an import
path, its arguments as msgspec data.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, final

import attrs
import trio

from .._errors import BadRequest
from .._types import Batch, Chunk, RebuildCause
from ..tier._port import TierPort
from ..tier._tier import Tier
from . import _frames as frames
from ._child_process import ChildProcess

__all__ = [
    "ChildProcesses",
    "ChildRunner",
    "FrameSender",
    "ProcessSpec",
    "ProcessTier",
    "probe_runner",
]

logger = logging.getLogger("trio_supervise")


@final
@attrs.frozen
class ProcessSpec:
    """What every child process of one worker is started with."""

    name: str
    """The worker's name, for logs and errors."""
    factory_path: str
    """The runner factory's import path, ``"module:factory"``."""
    runner_args: Mapping[str, Any]
    """The factory's keyword arguments, plain data."""
    device: str
    """``"auto"``, ``"cpu"`` or ``"cuda:N"``, opened in the child."""
    readiness_timeout: float | None
    """Seconds a child may take to answer its ``Init`` (and a spare its ``Activate``)."""
    heartbeat_timeout: float
    """Seconds without any frame before a child counts as dead."""
    standby: bool = False
    """Keep a spare process parked (runner built, device opened)."""
    standby_load: bool = False
    """Load the runner in the spare too."""

    def init(self, generation: int, **flags: bool) -> frames.Init:
        """The ``Init`` frame for a child of this worker."""
        return frames.Init(
            self.factory_path, dict(self.runner_args), self.device, list(sys.path), generation,
            **flags,
        )  # fmt: skip


class ChildProcesses:
    """Where a worker's child processes run, and its standby spare (see the module docstring).

    Use ``async with ChildProcesses.open(spec) as children``: leaving the block stops every
    child still running (a parked spare included) and raises what the body raised, plainly.
    """

    def __init__(self, spec: ProcessSpec, nursery: trio.Nursery) -> None:
        self.spec = spec
        self._nursery = nursery
        self.spare: ChildProcess | None = None
        self.spare_parked = trio.Event()  # set (and replaced) each time a spare is parked
        self._parking = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, spec: ProcessSpec) -> AsyncIterator[ChildProcesses]:
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    yield cls(spec, nursery)
                finally:
                    nursery.cancel_scope.cancel()  # a spare goes with us
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            failure = group.exceptions[0]  # raised plainly below, not chained to the group
        if failure is not None:
            raise failure

    async def start(self) -> ChildProcess:
        """Start a child process here (it is stopped by whoever uses it)."""
        child: ChildProcess = await self._nursery.start(ChildProcess(self.spec.name).run)
        return child

    def take_spare(self) -> ChildProcess | None:
        """The parked spare, if a live one is ready (with standby)."""
        spare, self.spare = self.spare, None
        if spare is not None and (spare.dead is not None or spare.done.is_set()):
            return None
        return spare

    def replenish_spare(self) -> None:
        """With standby, start parking the next spare in the background."""
        if self.spec.standby and self.spare is None and not self._parking:
            self._parking = True
            self._nursery.start_soon(self._park_spare)

    async def _park_spare(self) -> None:
        spec = self.spec
        try:
            child = await self.start()
            try:
                await child.request(spec.init(0, park=True, preload=spec.standby_load),
                                    spec.readiness_timeout)  # fmt: skip
            except Exception:
                logger.exception("%s: a standby process could not be parked", spec.name)
                with trio.CancelScope(shield=True):
                    await child.stop()
                return
            self.spare = child
            self.spare_parked.set()
            self.spare_parked = trio.Event()
        finally:
            self._parking = False

    async def probe(self) -> frames.Ready:
        """The runner's class-level attributes, from a short-lived child (see probe_runner)."""
        return await probe_runner(self)

    def tier(self, port: TierPort) -> ProcessTier:
        """A tier incarnation whose runner runs in one of these processes."""
        return ProcessTier(port, self)


class FrameSender(Protocol):
    """Where a :class:`ChildRunner` sends its frames: a process tier, or a Ray tier."""

    async def send(self, message: Any) -> None: ...

    async def send_quietly(self, message: Any) -> None: ...


class ChildRunner:
    """What the tier sees as its runner: batches and rebuilds travel to the child as frames."""

    needs_device = False
    default_policy = None

    def __init__(self, tier: FrameSender, max_concurrency: int) -> None:
        self.tier = tier
        self.max_concurrency = max_concurrency
        self._batches: dict[int, trio.MemorySendChannel[Any]] = {}
        self._rebuilds: dict[int, trio.MemorySendChannel[Any]] = {}
        self._token = 0

    async def load(self, device: Any) -> None:
        """Loaded by the child before it said Ready."""

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
                await self.tier.send(frames.Execute(batch.seq, requests))
            except frames.UNENCODABLE:
                # Nothing was sent. A request that no frame can carry fails alone (BadRequest,
                # never retried); the tier goes on, and so do the batch's other requests.
                requests, refused = _sendable(batch, requests)
                for chunk in refused:
                    yield chunk
                if not requests:
                    return
                await self.tier.send(frames.Execute(batch.seq, requests))
            async for message in receive:
                for request in batch.requests:  # consumers that left: tell the child's runner
                    if request.id not in told and batch.is_cancelled(request.id):
                        told.add(request.id)
                        await self.tier.send(frames.Cancel(batch.seq, request.id))
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
            await self.tier.send(frames.Rebuild(token, cause.value))
            done = await receive.receive()
        finally:
            self._rebuilds.pop(token, None)
        if done.error is not None:
            raise frames.error_from_data(done.error)

    async def aclose(self) -> None:
        """Ask the child to stop (the process itself is ended by the tier)."""
        await self.tier.send_quietly(frames.Stop())

    def deliver(self, message: Any) -> None:
        """Route a frame from the child to the batch or rebuild waiting for it."""
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
        problem = frames.encoding_problem(data)
        if problem is None:
            sendable.append(data)
        else:
            error = BadRequest(f"request {data.id!r} cannot be sent to its tier: {problem}")
            refused.append(Chunk(data.id, error=error))
    problem = frames.encoding_problem(frames.Execute(batch.seq, sendable))
    if problem is not None:
        message = f"batch {batch.seq} cannot be sent to its tier: {problem}"
        refused += [Chunk(d.id, error=BadRequest(message)) for d in sendable]
        sendable = []
    return sendable, refused


class ProcessTier(Tier):
    """A tier whose runner runs in a child process (see the module docstring)."""

    child: ChildProcess | None = None

    def __init__(self, port: TierPort, children: ChildProcesses) -> None:
        super().__init__(port)
        self.children = children

    @property
    def process(self) -> trio.Process | None:
        """The child process."""
        return None if self.child is None else self.child.process

    def placement(self) -> dict[str, Any]:
        """The child process's ``pid``."""
        process = self.process
        return {} if process is None else {"pid": process.pid}

    async def send(self, message: Any) -> None:
        """Send a frame to the child."""
        assert self.child is not None
        await self.child.send(message)

    async def send_quietly(self, message: Any) -> None:
        """Send, ignoring a child that is gone already."""
        if self.child is not None:
            await self.child.send_quietly(message)

    async def _load(self) -> None:
        children, spec = self.children, self.children.spec
        timeout = self.port.readiness_timeout
        child = children.take_spare()
        if child is not None:  # a standby spare: probe its device, load if it has not, go
            self.child = child
            child.generation = self.generation
            child.on_death = self.fail
            reply = await child.request(frames.Activate(self.generation), timeout)
        else:
            child = self.child = await children.start()
            child.generation = self.generation
            child.on_death = self.fail
            reply = await child.request(spec.init(self.generation), timeout)
        assert isinstance(reply, frames.Ready)
        self.concurrency = reply.max_concurrency
        self.deterministic = reply.deterministic
        runner = self.runner = ChildRunner(self, reply.max_concurrency)
        child.on_frame = runner.deliver
        assert self.nursery is not None
        self.nursery.start_soon(child.watch_heartbeats, spec.heartbeat_timeout)
        children.replenish_spare()

    async def _teardown(self) -> None:
        await super()._teardown()
        if self.child is not None:
            # Not awaited: the next incarnation need not wait for this process to exit. It is
            # reaped by its own task in the nursery of ChildProcesses, which outlives every tier.
            self.child.stop_soon()


async def probe_runner(children: ChildProcesses) -> frames.Ready:
    """Ask a short-lived child for the runner's class-level attributes (its default_policy),
    so that the parent never imports the runner.

    Raises:
        ConfigError: the import path or the runner's attributes are bad (as reported).
        ChildDied: the child ended without answering.
    """
    spec = children.spec
    child = await children.start()
    try:
        init = frames.Init(spec.factory_path, {}, spec.device, list(sys.path), 0, probe=True)
        reply = await child.request(init, spec.readiness_timeout or 60.0)
    finally:
        with trio.CancelScope(shield=True):
            await child.stop()
    assert isinstance(reply, frames.Ready)
    return reply
