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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import trio

from .._errors import ChildDied, HungWorker
from .._tier import Tier
from .._types import Batch, Chunk, RebuildCause
from . import _frames as frames

if TYPE_CHECKING:
    from .._worker import Worker

__all__ = ["ChildRunner", "ProcessTier", "probe_runner"]

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


class ProcessTier(Tier):
    """A tier whose runner runs in a child process (see the module docstring)."""

    process: trio.Process | None = None
    _socket: trio.SocketStream | None = None

    async def send(self, message: Any) -> None:
        """Send a frame to the child; a broken socket means the child died."""
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
            pass

    async def _load(self) -> None:
        worker = self.worker
        nursery = self.nursery
        assert nursery is not None
        self._send_lock = trio.Lock()
        parent_end, child_end = socket.socketpair()
        self._socket = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
        command = [sys.executable, "-m", "trio_supervise._child", str(child_end.fileno())]
        try:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    command,
                    check=False,
                    start_new_session=True,  # a Ctrl-C to our group must not kill it mid-drain
                    pass_fds=(child_end.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    deliver_cancel=self._stop_process,
                )
            )
        finally:
            child_end.close()  # the child has its own copy now
        self.process = process
        for stream, level in ((process.stdout, logging.INFO), (process.stderr, logging.WARNING)):
            assert stream is not None
            nursery.start_soon(self._drain, stream, level, process.pid)
        nursery.start_soon(self._watch_exit, process)
        ready = trio.Event()
        self._ready: frames.Ready | frames.Fatal | None = None
        nursery.start_soon(self._read_frames, ready)
        init = frames.Init(
            worker.factory_path,
            worker.runner_args,
            worker.device_spec,
            list(sys.path),
            self.generation,
        )
        timeout = worker.readiness_timeout
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            await self.send(init)
            await ready.wait()
        if scope.cancelled_caught:
            raise HungWorker(f"the child was not ready within readiness_timeout={timeout:g}s")
        # Set by the reader task meanwhile (mypy cannot see that across the await).
        reply = cast("frames.Ready | frames.Fatal | None", self._ready)
        if isinstance(reply, frames.Fatal):
            raise frames.error_from_data(reply.error)
        if reply is None:
            raise self.fatal or ChildDied("the child process ended before it was ready")
        self.concurrency = reply.max_concurrency
        self.runner = ChildRunner(self, reply.max_concurrency)
        nursery.start_soon(self._watch_heartbeats)

    async def _watch_exit(self, process: trio.Process) -> None:
        await process.wait()
        if not self._stopping:
            self.fail(
                ChildDied(f"the child process {process.pid} exited with code {process.returncode}")
            )

    _stopping = False

    async def _stop_process(self, process: trio.Process) -> None:
        """Ask, wait a grace period, SIGTERM the group, wait again, then SIGKILL it."""
        self._stopping = True
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

    async def _teardown(self) -> None:
        await super()._teardown()
        if self._socket is not None:
            await self._socket.aclose()

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

    async def _read_frames(self, ready: trio.Event) -> None:
        assert self._socket is not None
        reader = frames.FrameReader(from_child=True)
        self._last_frame = trio.current_time()
        try:
            while True:
                data = await self._socket.receive_some()
                if not data:
                    raise ChildDied(f"the child process of {self.worker.name!r} closed its socket")
                self._last_frame = trio.current_time()
                for message in reader.feed(data):
                    if isinstance(message, frames.Ready | frames.Fatal) and not ready.is_set():
                        self._ready = message
                        ready.set()
                    elif isinstance(message, frames.Fatal):
                        self.fail(frames.error_from_data(message.error))
                    elif isinstance(message, frames.Heartbeat):
                        pass
                    elif isinstance(self.runner, ChildRunner):
                        self.runner.deliver(message)
        except frames.MalformedFrame as exc:
            logger.error("%s: malformed frame from the child: %s", self.worker.name, exc)
            self.fail(ChildDied(f"the child process sent a malformed frame: {exc}"))
        except (ChildDied, trio.BrokenResourceError) as exc:
            self.fail(exc if isinstance(exc, ChildDied) else ChildDied(str(exc)))
        finally:
            ready.set()

    async def _watch_heartbeats(self) -> None:
        timeout = self.worker.heartbeat_timeout
        assert timeout is not None
        while True:
            await trio.sleep_until(self._last_frame + timeout)
            if trio.current_time() >= self._last_frame + timeout:
                self.fail(ChildDied(f"no frame from the child process for {timeout:g}s"))
                return


async def probe_runner(worker: Worker) -> frames.Ready:
    """Ask a short-lived child for the runner's class-level attributes (its default_policy),
    so that the parent never imports the runner.

    Raises:
        ConfigError: the import path or the runner's attributes are bad (as reported).
        ChildDied: the child ended without answering.
    """
    parent_end, child_end = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
    command = [sys.executable, "-m", "trio_supervise._child", str(child_end.fileno())]
    reply: Any = None
    async with stream, trio.open_nursery() as nursery:
        try:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    command,
                    check=False,
                    start_new_session=True,
                    pass_fds=(child_end.fileno(),),
                    stdin=subprocess.DEVNULL,
                )
            )
        finally:
            child_end.close()
        init = frames.Init(
            worker.factory_path, {}, worker.device_spec, list(sys.path), 0, probe=True
        )
        await stream.send_all(frames.encode(init))
        reader = frames.FrameReader(from_child=True)
        timeout = worker.readiness_timeout or 60.0
        with trio.move_on_after(timeout):
            while reply is None:
                data = await stream.receive_some()
                if not data:
                    break
                replies = [m for m in reader.feed(data) if not isinstance(m, frames.Heartbeat)]
                reply = replies[0] if replies else None
        with trio.move_on_after(STOP_GRACE) as waiting:
            await process.wait()
        if waiting.cancelled_caught:
            nursery.cancel_scope.cancel()  # run_process kills it
    if isinstance(reply, frames.Fatal):
        raise frames.error_from_data(reply.error)
    if not isinstance(reply, frames.Ready):
        raise ChildDied(f"the probe of {worker.factory_path!r} ended without an answer")
    return reply
