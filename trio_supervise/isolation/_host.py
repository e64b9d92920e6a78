"""The child process of a process-isolated worker: ``python -m trio_supervise.isolation._host FD``.

It speaks frames (:mod:`.isolation._frames`) on the socket ``FD`` that its parent passed it:
an ``Init`` builds and loads the runner (a failure is reported as ``Fatal``, then the child
exits), then it answers ``Ready`` and runs ``Execute`` batches (up to the runner's
``max_concurrency``, the parent's dispatch sees to that), streaming chunks back. A batch error
is classified and reported as data; after a sticky one (a poisoned CUDA context) the child
``os._exit``s, since nothing in this process can use the device again. Heartbeats every
second carry a progress counter, so the parent can tell a dead child from a busy one, and a
busy one from a hung one.

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
from typing import Any

import trio

from .._errors import ConfigError
from .._types import Batch, RebuildCause
from ..devices import CpuDevice, open_device
from ..devices._cuda_errors import classify_cuda_error, is_sticky_cuda_error
from ..tier._runner import (
    open_chunks,
    resolve_factory,
    runner_attributes,
    runner_deterministic,
    tell_generation,
)
from . import _frames as frames

HEARTBEAT_INTERVAL = 1.0
CHILD_ENV = "TRIO_SUPERVISE_CHILD"
STICKY_EXIT_CODE = 70


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


class _Child:
    """The runner's side of the frames (the Ray actor of :mod:`.isolation._ray_actor` reuses it
    with another ``send``)."""

    def __init__(self, stream: trio.SocketStream | None) -> None:
        self.stream = stream
        self.send_lock = trio.Lock()
        self.progress = 0
        self.busy = 0
        self.runner: Any = None
        self.device: Any = None
        self.concurrency = 1
        self.deterministic = False
        self.loaded = False
        self.cancelled: dict[int, set[str]] = {}

    async def send(self, message: Any) -> None:
        assert self.stream is not None
        async with self.send_lock:
            await self.stream.send_all(frames.encode(message))

    async def serve(self) -> None:
        assert self.stream is not None
        reader = frames.FrameReader(from_child=False)
        messages: list[Any] = []
        init = None
        while init is None:
            data = await self.stream.receive_some()
            if not data:
                return
            messages = reader.feed(data)
            if messages:
                init, messages = messages[0], messages[1:]
        if not isinstance(init, frames.Init):
            raise frames.MalformedFrame(f"expected Init first, got {init!r}")
        if init.probe:
            await self._probe(init)
            return
        if init.park:  # a standby spare: build now, take over later
            if not await self._construct(init) or (init.preload and not await self._load()):
                return
            await self.send(frames.Parked(os.getpid()))
            while not any(isinstance(m, frames.Activate) for m in messages):
                data = await self.stream.receive_some()
                if not data:
                    return
                messages += reader.feed(data)
            index = next(i for i, m in enumerate(messages) if isinstance(m, frames.Activate))
            tell_generation(self.runner, messages[index].generation)
            messages = messages[index + 1 :]
            try:
                await self.device.probe()
            except Exception as exc:
                await self.send(frames.Fatal(frames.error_to_data(classify_cuda_error(exc))))
                return
            if not self.loaded and not await self._load():
                return
        elif not (await self._construct(init) and await self._load()):
            return
        await self.send(frames.Ready(os.getpid(), self.concurrency, None, self.deterministic))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats)
            nursery.start_soon(self._on_sigterm, nursery.cancel_scope)
            while True:
                for message in messages:
                    if isinstance(message, frames.Stop):
                        nursery.cancel_scope.cancel()
                        break
                    self._handle(message, nursery)
                data = await self.stream.receive_some()
                if not data:  # the parent went away
                    nursery.cancel_scope.cancel()
                    break
                messages = reader.feed(data)
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.runner.aclose()

    async def _probe(self, init: frames.Init) -> None:
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

    def _handle(self, message: Any, nursery: trio.Nursery) -> None:
        if isinstance(message, frames.Execute):
            self.cancelled[message.seq] = set()
            nursery.start_soon(self._execute, message)
        elif isinstance(message, frames.Cancel):
            self.cancelled.get(message.seq, set()).add(message.request_id)
        elif isinstance(message, frames.Rebuild):
            nursery.start_soon(self._rebuild, message)

    async def _execute(self, message: frames.Execute) -> None:
        seq = message.seq
        cancelled = self.cancelled[seq]
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
                self._poisoned()
        else:
            await self.send(frames.BatchEnd(seq))
        finally:
            self.busy -= 1
            self.cancelled.pop(seq, None)

    def _poisoned(self) -> None:
        """After a sticky CUDA error: nothing in this process can use the device again."""
        os._exit(STICKY_EXIT_CODE)

    async def _rebuild(self, message: frames.Rebuild) -> None:
        try:
            await self.runner.rebuild_session(RebuildCause(message.cause))
        except Exception as exc:
            error = frames.error_to_data(classify_cuda_error(exc))
            await self.send(frames.RebuildDone(message.token, error))
        else:
            await self.send(frames.RebuildDone(message.token))

    async def _heartbeats(self) -> None:
        while True:
            await self.send(frames.Heartbeat(self.progress, self.busy))
            await trio.sleep(HEARTBEAT_INTERVAL)

    async def _on_sigterm(self, scope: trio.CancelScope) -> None:
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
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    await _Child(stream).serve()


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
