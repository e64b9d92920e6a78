"""The process tier: the runner lives in a child process that the worker can always replace.

The parent side of :mod:`trio_supervise._child`. A :class:`ProcessTier` is a :class:`Tier`
whose runner is a :class:`ChildRunner`, a proxy that turns ``execute`` into frames and frames
back into chunks, so dispatch, routing, the hang watchdog and the decisions about batch errors
are the inline tier's own. What this module adds is the process's life:

* start ``python -m trio_supervise._child FD`` with ``trio.run_process`` in the tier's nursery
  (``start_new_session=True``, never forked), with one end of a ``socketpair`` as ``FD``;
* drain the child's stdout and stderr into logging, with its pid and generation;
* read frames: an exit of the process (code 0 included), end of file, a malformed frame, or no
  frame for ``heartbeat_timeout`` is :class:`ChildDied` (a ContextPoisoned);
* on the way out, ask the child to stop, give it a grace period, then kill its process group;
  ``run_process`` reaps it in every case.

The parent never imports the runner and never touches CUDA: the factory crosses as an import
path, its arguments as msgspec data.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import trio

from .._errors import ChildDied, HungWorker
from .._tier import Tier
from .._types import Batch, Chunk, RebuildCause
from . import _frames as frames

if TYPE_CHECKING:
    from .._worker import Worker

__all__ = ["ChildProcess", "ChildRunner", "ProcessTier", "probe_runner"]

logger = logging.getLogger("trio_supervise")

STOP_GRACE = 2.0
"""Seconds a child gets to stop after it was asked (and after SIGTERM) before SIGKILL."""


class ChildRunner:
    """What the tier sees as its runner: batches and rebuilds travel to the child as frames."""

    needs_device = False
    default_policy = None

    def __init__(self, tier: ProcessTier, max_concurrency: int) -> None:
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


class ChildProcess:
    """One child process: started, spoken to in frames, watched, stopped and always reaped.

    It runs (``await nursery.start(child.run)``) in the worker's nursery, so that a standby
    spare can outlive the tier incarnation that started it. ``request`` sends a control frame
    and waits for the control reply (``Ready``, ``Parked`` or ``Fatal``); other frames go to
    ``on_frame``; an exit, end of file, a malformed frame or silence goes to ``on_death``.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.generation = 0
        self.process: trio.Process | None = None
        self.on_frame: Callable[[Any], None] = lambda message: None
        self.on_death: Callable[[BaseException], None] = lambda error: None
        self.stopping = False
        self.dead: BaseException | None = None
        self.done = trio.Event()
        self.last_frame = 0.0
        self._scope = trio.CancelScope()
        self._send_lock = trio.Lock()
        self._replies, self._reply_inbox = trio.open_memory_channel[Any](math.inf)
        self._socket: trio.SocketStream | None = None

    def __repr__(self) -> str:
        pid = None if self.process is None else self.process.pid
        return f"<ChildProcess pid={pid} generation={self.generation}>"

    async def run(self, *, task_status: trio.TaskStatus[ChildProcess]) -> None:
        parent_end, child_end = socket.socketpair()
        self._socket = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
        command = [sys.executable, "-m", "trio_supervise._child", str(child_end.fileno())]
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    try:
                        process: trio.Process = await nursery.start(
                            functools.partial(
                                trio.run_process,
                                command,
                                check=False,
                                start_new_session=True,  # a Ctrl-C to our group must not kill
                                pass_fds=(child_end.fileno(),),  # it mid-drain
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                deliver_cancel=self._stop_process,
                            )
                        )
                    finally:
                        child_end.close()  # the child has its own copy now
                    self.process = process
                    self.last_frame = trio.current_time()
                    for stream, level in (
                        (process.stdout, logging.INFO),
                        (process.stderr, logging.WARNING),
                    ):
                        assert stream is not None
                        nursery.start_soon(self._drain, stream, level, process.pid)
                    nursery.start_soon(self._read_frames)
                    task_status.started(self)
                    await process.wait()
                    if not self.stopping:
                        self._died(
                            ChildDied(
                                f"the child process {process.pid} exited with code "
                                f"{process.returncode}"
                            )
                        )
        finally:
            child_end.close()
            with trio.CancelScope(shield=True):
                await self._socket.aclose()
            self._replies.close()
            self.done.set()

    def stop_soon(self) -> None:
        """Begin stopping: ask it to stop, then SIGTERM, then SIGKILL its process group. Its
        task in the worker's nursery reaps it; :meth:`stop` also waits for that."""
        self.stopping = True
        self._scope.cancel()

    async def stop(self) -> None:
        """Stop it (see :meth:`stop_soon`) and wait until it is reaped."""
        self.stop_soon()
        await self.done.wait()

    async def send(self, message: Any) -> None:
        """Send a frame; a broken socket means the child died."""
        assert self._socket is not None
        try:
            async with self._send_lock:
                await self._socket.send_all(frames.encode(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ChildDied(f"the child process of {self.worker.name!r} went away: {exc}") from exc

    async def send_quietly(self, message: Any) -> None:
        """Send, ignoring a child that is gone already."""
        try:
            with trio.move_on_after(1):
                await self.send(message)
        except ChildDied:
            return  # gone already: there is nobody left to tell

    async def request(self, message: Any, within: float | None) -> frames.Ready | frames.Parked:
        """Send a control frame and wait for its reply.

        Raises:
            HungWorker: no reply within ``within`` seconds.
            ChildDied: the child died first.
            Exception: what the child reported (``Fatal``), e.g. a ConfigError.
        """
        with trio.move_on_after(math.inf if within is None else within) as scope:
            await self.send(message)
            self._awaiting = True
            try:
                reply = await self._reply_inbox.receive()
            except trio.EndOfChannel:
                raise self.dead or ChildDied("the child process ended before it answered") from None
            finally:
                self._awaiting = False
        if scope.cancelled_caught:
            raise HungWorker(f"the child process did not answer within {within:g}s")
        if isinstance(reply, frames.Fatal):
            raise frames.error_from_data(reply.error)
        result: frames.Ready | frames.Parked = reply
        return result

    async def watch_heartbeats(self, silence: float) -> None:
        """Report death when no frame at all arrives for ``silence`` seconds."""
        while True:
            with trio.move_on_at(self.last_frame + silence) as scope:
                await self.done.wait()
            if not scope.cancelled_caught:
                return  # it ended anyway
            if trio.current_time() >= self.last_frame + silence:
                self._died(ChildDied(f"no frame from the child process for {silence:g}s"))
                return

    def _died(self, error: BaseException) -> None:
        if self.dead is None and not self.stopping:
            self.dead = error
            self._replies.close()
            self.on_death(error)

    async def _stop_process(self, process: trio.Process) -> None:
        """Ask, wait a grace period, SIGTERM the group, wait again, then SIGKILL it."""
        self.stopping = True
        with trio.move_on_after(STOP_GRACE):
            await self.send_quietly(frames.Stop())
            await process.wait()
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            with trio.move_on_after(STOP_GRACE):
                await process.wait()
                return

    async def _drain(self, stream: trio.abc.ReceiveStream, level: int, pid: int) -> None:
        buffer = b""
        async for data in stream:
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                logger.log(
                    level,
                    "%s child pid %d generation %d: %s",
                    self.worker.name,
                    pid,
                    self.generation,
                    line.decode(errors="replace"),
                )

    async def _read_frames(self) -> None:
        assert self._socket is not None
        reader = frames.FrameReader(from_child=True)
        try:
            while True:
                data = await self._socket.receive_some()
                if not data:
                    raise ChildDied(f"the child process of {self.worker.name!r} closed its socket")
                self.last_frame = trio.current_time()
                for message in reader.feed(data):
                    if isinstance(message, frames.Ready | frames.Parked):
                        self._replies.send_nowait(message)
                    elif isinstance(message, frames.Fatal):
                        if self._awaiting:  # the answer to a request, which raises it
                            # The child exits after a Fatal: its end of file (or exit code)
                            # must not replace the error it reported as the cause.
                            if self.dead is None:
                                self.dead = frames.error_from_data(message.error)
                            self._replies.send_nowait(message)
                        else:
                            self._died(frames.error_from_data(message.error))
                    elif not isinstance(message, frames.Heartbeat):
                        self.on_frame(message)
        except frames.MalformedFrame as exc:
            logger.error("%s: malformed frame from the child: %s", self.worker.name, exc)
            self._died(ChildDied(f"the child process sent a malformed frame: {exc}"))
        except (ChildDied, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._died(exc if isinstance(exc, ChildDied) else ChildDied(str(exc)))

    _awaiting = False


class ProcessTier(Tier):
    """A tier whose runner runs in a child process (see the module docstring)."""

    child: ChildProcess | None = None

    @property
    def process(self) -> trio.Process | None:
        """The child process."""
        return None if self.child is None else self.child.process

    async def send(self, message: Any) -> None:
        """Send a frame to the child."""
        assert self.child is not None
        await self.child.send(message)

    async def send_quietly(self, message: Any) -> None:
        """Send, ignoring a child that is gone already."""
        if self.child is not None:
            await self.child.send_quietly(message)

    async def _load(self) -> None:
        worker = self.worker
        timeout = worker.readiness_timeout
        child = worker._take_spare()
        if child is not None:  # a standby spare: probe its device, load if it has not, go
            self.child = child
            child.generation = self.generation
            child.on_death = self.fail
            reply = await child.request(frames.Activate(self.generation), timeout)
        else:
            child = self.child = await worker._start_child()
            child.generation = self.generation
            child.on_death = self.fail
            init = frames.Init(
                worker.factory_path,
                worker.runner_args,
                worker.device_spec,
                list(sys.path),
                self.generation,
            )
            reply = await child.request(init, timeout)
        assert isinstance(reply, frames.Ready)
        self.concurrency = reply.max_concurrency
        runner = self.runner = ChildRunner(self, reply.max_concurrency)
        child.on_frame = runner.deliver
        assert self.nursery is not None
        assert worker.heartbeat_timeout is not None
        self.nursery.start_soon(child.watch_heartbeats, worker.heartbeat_timeout)
        worker._replenish_spare()

    async def _teardown(self) -> None:
        await super()._teardown()
        if self.child is not None:
            # Not awaited: the next incarnation need not wait for this process to exit. It is
            # reaped by its own task in the worker's nursery, which outlives every tier.
            self.child.stop_soon()


async def probe_runner(worker: Worker) -> frames.Ready:
    """Ask a short-lived child for the runner's class-level attributes (its default_policy),
    so that the parent never imports the runner.

    Raises:
        ConfigError: the import path or the runner's attributes are bad (as reported).
        ChildDied: the child ended without answering.
    """
    child = await worker._start_child()
    try:
        init = frames.Init(
            worker.factory_path, {}, worker.device_spec, list(sys.path), 0, probe=True
        )
        reply = await child.request(init, worker.readiness_timeout or 60.0)
    finally:
        with trio.CancelScope(shield=True):
            await child.stop()
    assert isinstance(reply, frames.Ready)
    return reply
