"""One child process of a process-isolated worker, from the parent's side.

Started as ``python -m trio_supervise.isolation._host FD`` with ``trio.run_process``
(``start_new_session=True``, never forked), with one end of a ``socketpair`` as ``FD``; its
stdout and stderr drained into logging, with its pid and generation; its frames read. An exit
of the process (code 0 included), end of file, a malformed frame, or no frame for the heartbeat
timeout is :class:`ChildDied` (a ContextPoisoned). On the way out it is asked to stop, given a
grace period, then its process group is killed; ``run_process`` reaps it in every case.
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
from collections.abc import Callable
from typing import Any

import trio

from .._errors import ChildDied, HungWorker
from . import _codec as codec
from . import _frames as frames

__all__ = ["STOP_GRACE", "ChildProcess"]

logger = logging.getLogger("trio_supervise")

STOP_GRACE = 2.0
"""Seconds a child gets to stop after it was asked (and after SIGTERM) before SIGKILL."""


class ChildProcess:
    """One child process: started, spoken to in frames, watched, stopped and always reaped.

    It runs (``await nursery.start(child.run)``) in the nursery of its worker's
    :class:`~.process.ChildProcesses`, so that a standby spare can outlive the tier incarnation
    that started it. ``request`` sends a control frame
    and waits for the control reply (``Ready``, ``Parked`` or ``Fatal``); other frames go to
    ``on_frame``; an exit, end of file, a malformed frame or silence goes to ``on_death``.
    """

    def __init__(self, name: str) -> None:
        self.name = name  # the worker's, for logs and errors
        self.generation = 0
        self.process: trio.Process | None = None
        self.on_frame: Callable[[Any], None] = lambda message: None
        self.on_death: Callable[[BaseException], None] = lambda error: None
        self.stopping = False
        self.dead: BaseException | None = None
        self.done = trio.Event()
        self.last_frame = 0.0
        self._awaiting = False  # a request waits for its reply (a Fatal is its answer)
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
        command = [sys.executable, "-m", "trio_supervise.isolation._host", str(child_end.fileno())]
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
                await self._socket.send_all(codec.encode(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ChildDied(f"the child process of {self.name!r} went away: {exc}") from exc

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
                    self.name,
                    pid,
                    self.generation,
                    line.decode(errors="replace"),
                )

    async def _read_frames(self) -> None:
        assert self._socket is not None
        reader = codec.FrameReader(from_child=True)
        try:
            while True:
                data = await self._socket.receive_some()
                if not data:
                    raise ChildDied(f"the child process of {self.name!r} closed its socket")
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
        except codec.MalformedFrame as exc:
            logger.error("%s: malformed frame from the child: %s", self.name, exc)
            self._died(ChildDied(f"the child process sent a malformed frame: {exc}"))
        except (ChildDied, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._died(exc if isinstance(exc, ChildDied) else ChildDied(str(exc)))
