"""What runs where the runner lives: in a child process, and (its :class:`RunnerHost`) in a
Ray actor.

:class:`RunnerHost` is the runner's side of the frames (:mod:`._frames`), whatever carries them:
it builds the runner, parks and activates a standby spare, loads, runs batches and rebuilds, and
says each result as a frame. A Ray actor (:mod:`.ray._actor`) drives it through calls.

The child process: ``python -m trio_supervise.isolation._host FD``. It speaks frames on the
socket ``FD`` that its parent passed it (:func:`serve`): an ``Init`` builds and loads the runner
(a failure is reported as ``Fatal``, then the child exits), then it answers ``Ready`` and runs
``Execute`` batches (up to the runner's ``max_concurrency``, the parent's dispatch sees to
that), streaming chunks back. A batch error is classified and reported as data; after a sticky
one (a poisoned CUDA context) the child ``os._exit``s, since nothing in this process can use the
device again. Heartbeats every second carry a progress counter, so the parent can tell a dead
child from a busy one, and a busy one from a hung one.

The child dies with its parent: the socket's end of file, and a thread that watches the
parent's pid (device work may block this event loop; ``PR_SET_PDEATHSIG`` would fire when the
spawning *thread* exits, see :func:`_die_with_parent`).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._errors import ConfigError
from .._types import Batch, RebuildCause
from ..devices import CpuDevice, open_device
from ..devices._cuda_errors import classify_cuda_error, is_sticky_cuda_error
from ..tier._home import CLOSE_TIMEOUT
from ..tier._runner import (
    open_chunks,
    resolve_factory,
    runner_attributes,
    runner_deterministic,
    runner_sampling_fields,
    tell_generation,
)
from . import _codec as codec
from . import _frames as frames

__all__ = ["CHILD_ENV", "HEARTBEAT_INTERVAL", "STICKY_EXIT_CODE", "RunnerHost", "main", "serve"]

HEARTBEAT_INTERVAL = 1.0
"""Seconds between a child's heartbeats (and between a Ray actor's heartbeat calls)."""
CHILD_ENV = "TRIO_SUPERVISE_CHILD"
"""Set in a child process or Ray actor: faults that kill the process are allowed only there."""
STICKY_EXIT_CODE = 70
"""A child process's exit code after a sticky CUDA error."""


def _die_with_parent() -> None:
    """Exit when the parent dies, even if this process's event loop is blocked.

    Not PR_SET_PDEATHSIG: Linux sends it when the *thread* that forked us exits, and Trio
    starts processes from a worker thread that its thread cache retires after 10 idle seconds,
    which would kill every healthy child 10 s after it started. A thread that watches the
    parent's pid (re-parenting changes it) does the job, beside end of file on the socket.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="trio-supervise-parent-watch", daemon=True).start()


class RunnerHost:
    """The runner's side of the frames: it builds, parks, activates and loads the runner, runs
    batches and rebuilds, and says each result with ``send`` (a frame on the child process's
    socket, or, in a Ray actor, to the actor's asyncio side).

    ``on_sticky`` is called after a sticky CUDA error has been reported: nothing in this process
    can use the device again (a child process exits; a Ray actor refuses every batch until the
    parent kills it).
    """

    def __init__(
        self,
        send: Callable[[Any], Awaitable[None]],
        on_sticky: Callable[[], None] = lambda: os._exit(STICKY_EXIT_CODE),
    ) -> None:
        self.send = send
        self.on_sticky = on_sticky
        self.progress = 0  # chunks sent so far: a heartbeat tells busy from hung
        self.busy = 0  # batches running
        self.runner: Any = None
        self.device: Any = None
        self.concurrency = 1
        self.deterministic = False
        self.sampling_fields: list[str] = []
        self.loaded = False
        self._cancelled: dict[int, set[str]] = {}

    # --- an Init, and a spare's Activate: each says Ready, Parked or Fatal ------------------

    async def probe(self, init: frames.Init) -> None:
        """Import the factory and report its class-level attributes, nothing more."""
        _extend_path(init.sys_path)
        try:
            factory = resolve_factory(init.factory)
            concurrency, policy, _ = runner_attributes(factory)
            data = None if policy is None else frames.policy_to_data(policy)
        except Exception as exc:
            await self.send(frames.Fatal(frames.error_to_data(exc)))
            return
        await self.send(frames.Ready(os.getpid(), concurrency, data))

    async def start(self, init: frames.Init) -> bool:
        """Build and load the runner, then say Ready; False once a failure was said (Fatal)."""
        if not (await self._construct(init) and await self._load()):
            return False
        await self._ready()
        return True

    async def park(self, init: frames.Init) -> bool:
        """A standby spare: build the runner and open its device (load it too, with
        ``preload``), then say Parked; False once a failure was said (Fatal)."""
        if not await self._construct(init) or (init.preload and not await self._load()):
            return False
        await self.send(frames.Parked(os.getpid()))
        return True

    async def activate(self, generation: int) -> bool:
        """A parked spare takes over as incarnation ``generation``: probe its device (a sticky
        error since it parked fails the probe), load if it has not, then say Ready; False once
        a failure was said (Fatal)."""
        tell_generation(self.runner, generation)
        try:
            await self.device.probe()
        except Exception as exc:
            await self.send(frames.Fatal(frames.error_to_data(classify_cuda_error(exc))))
            return False
        if not self.loaded and not await self._load():
            return False
        await self._ready()
        return True

    async def _ready(self) -> None:
        await self.send(frames.Ready(os.getpid(), self.concurrency, None, self.deterministic,
                                     self.sampling_fields))  # fmt: skip

    async def _construct(self, init: frames.Init) -> bool:
        """Build the runner and open its device; a failure is reported as Fatal."""
        _extend_path(init.sys_path)
        try:
            try:
                factory = resolve_factory(init.factory)
                self.runner = factory(**init.runner_args)
                tell_generation(self.runner, init.generation)
                self.concurrency, _, needs_device = runner_attributes(self.runner)
                self.deterministic = runner_deterministic(self.runner)
                self.sampling_fields = sorted(runner_sampling_fields(self.runner))
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"building the runner {init.factory!r} failed: {exc!r}") from exc
            self.device = open_device(init.device) if needs_device else CpuDevice()
        except Exception as exc:
            await self.send(frames.Fatal(frames.error_to_data(classify_cuda_error(exc))))
            return False
        return True

    async def _load(self) -> bool:
        """Load the runner onto its device; a failure is reported as Fatal."""
        try:
            await self.runner.load(self.device)
        except Exception as exc:
            await self.send(frames.Fatal(frames.error_to_data(classify_cuda_error(exc))))
            return False
        self.loaded = True
        return True

    # --- a ready runner's work ---------------------------------------------------------------

    def handle(self, message: Any, nursery: trio.Nursery) -> None:
        """``Execute`` and ``Rebuild`` start a task in ``nursery``; ``Cancel`` marks a request
        of a running batch (its runner sees it through ``batch.is_cancelled``)."""
        if isinstance(message, frames.Execute):
            self._cancelled[message.seq] = set()
            nursery.start_soon(self._execute, message)
        elif isinstance(message, frames.Cancel):
            self._cancelled.get(message.seq, set()).add(message.request_id)
        elif isinstance(message, frames.Rebuild):
            nursery.start_soon(self._rebuild, message)

    async def close(self) -> None:
        """Close the runner, if there is one, within CLOSE_TIMEOUT (also when cancelled)."""
        if self.runner is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await self.runner.aclose()

    async def _execute(self, message: frames.Execute) -> None:
        seq = message.seq
        cancelled = self._cancelled[seq]
        batch = Batch(
            [frames.request_from_data(r) for r in message.requests], seq, cancelled=cancelled
        )
        self.busy += 1
        try:
            async with open_chunks(self.runner.execute(batch)) as chunks:
                async for chunk in chunks:
                    self.progress += 1
                    await self.send(frames.chunk_to_frame(seq, chunk))
        except Exception as exc:
            error = classify_cuda_error(exc)
            sticky = is_sticky_cuda_error(error)  # CupyDevice.run_sync classified it already
            await self.send(frames.BatchFailed(seq, frames.error_to_data(error), sticky))
            if sticky:  # the context is poisoned for this whole process
                self.on_sticky()
        else:
            await self.send(frames.BatchEnd(seq))
        finally:
            self.busy -= 1
            self._cancelled.pop(seq, None)

    async def _rebuild(self, message: frames.Rebuild) -> None:
        try:
            await self.runner.rebuild_session(RebuildCause(message.cause))
        except Exception as exc:
            error = frames.error_to_data(classify_cuda_error(exc))
            await self.send(frames.RebuildDone(message.token, error))
        else:
            await self.send(frames.RebuildDone(message.token))


async def serve(stream: trio.SocketStream) -> None:
    """A child process's life: frames from its parent on ``stream``, answers back on it."""
    send_lock = trio.Lock()

    async def send(message: Any) -> None:
        async with send_lock:
            await stream.send_all(codec.encode(message))

    host = RunnerHost(send)
    reader = codec.FrameReader(from_child=False)
    messages: list[Any] = []

    async def receive() -> bool:
        """More messages from the parent; False at end of file (the parent went away)."""
        data = await stream.receive_some()
        messages.extend(reader.feed(data))
        return bool(data)

    while not messages:
        if not await receive():
            return
    init = messages.pop(0)
    if not isinstance(init, frames.Init):
        raise codec.MalformedFrame(f"expected Init first, got {init!r}")
    if init.probe:
        await host.probe(init)
        return
    if init.park:  # a standby spare: build now, take over later
        if not await host.park(init):
            return
        while not any(isinstance(m, frames.Activate) for m in messages):
            if not await receive():
                return
        index = next(i for i, m in enumerate(messages) if isinstance(m, frames.Activate))
        generation = messages[index].generation
        del messages[: index + 1]
        if not await host.activate(generation):
            return
    elif not await host.start(init):
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_heartbeats, host)
        nursery.start_soon(_on_sigterm, nursery.cancel_scope)
        while True:
            for message in messages:
                if isinstance(message, frames.Stop):
                    nursery.cancel_scope.cancel()
                    break
                host.handle(message, nursery)
            messages.clear()
            if not await receive():  # the parent went away
                nursery.cancel_scope.cancel()
                break
    await host.close()


async def _heartbeats(host: RunnerHost) -> None:
    while True:
        await host.send(frames.Heartbeat(host.progress, host.busy))
        await trio.sleep(HEARTBEAT_INTERVAL)


async def _on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()  # drain: the runner is closed on the way out
            return


def _extend_path(paths: list[str]) -> None:
    """The parent's sys.path, so the runner imports here as it would there."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


async def _main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    await serve(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m trio_supervise.isolation._host FD``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.exit(
            "usage: python -m trio_supervise.isolation._host FD (started by a worker, not by hand)"
        )
    _die_with_parent()
    os.environ[CHILD_ENV] = "1"  # faults that kill the process are allowed only here
    trio.run(_main, int(args[0]))


if __name__ == "__main__":
    main()
