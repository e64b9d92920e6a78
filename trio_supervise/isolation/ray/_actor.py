"""The actor of a Ray-isolated worker: the runner's side, in a Ray worker process.

The parent (:mod:`._home`) makes one :class:`RayChildActor` per tier incarnation (and one per
standby spare). It is an *async* actor: Ray runs its methods on an asyncio loop. The runner is a
Trio runner, so the actor runs a Trio loop of its own in one thread, and the runner lives there,
built, parked, activated, loaded and driven by the same code as a child process's
(:class:`~.._host.RunnerHost`): the frames that a child writes to its socket are handed to this
actor's asyncio side instead.

* ``start(init)`` builds and loads the runner (or parks it, for a spare) and returns the reply
  frame (``Ready``, ``Parked`` or ``Fatal``, packed) with where the actor runs;
* ``execute(frame)`` is a streaming generator: each item is one payload of every frame that was
  waiting when Ray asked for the next item (one item per chunk would cost one Ray object per
  token), decoded at once by the parent, ending with ``BatchEnd`` or ``BatchFailed``;
* ``cancel``, ``rebuild``, ``activate`` and ``stop`` are the other frames, as calls;
* ``watch()`` never returns: the parent learns of the actor's death, busy or idle, from it;
* ``heartbeat()`` is answered from the runner's Trio loop, so a runner that blocks that loop
  goes silent, as a child process's heartbeats do.

After a sticky CUDA error the actor refuses every batch (the parent, told so by the batch's
``BatchFailed``, ends the tier and kills the actor: the next one is a new process with a new
CUDA context). If the runner's loop ends unasked (a runner that raised ``SystemExit``), every
open batch gets the chunks its runner sent and then a sticky ``BatchFailed`` carrying
:class:`~.._errors.ChildDied`, in order, as a child process's chunks reach the parent before its
death; an idle actor exits at once (the parent's ``watch`` learns it). Ray's own restarts and
retries are off.
"""

from __future__ import annotations

import asyncio
import os
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import trio

from ..._errors import ChildDied, ContextPoisoned
from .. import _codec as codec
from .. import _frames as frames
from .._host import CHILD_ENV, STICKY_EXIT_CODE, RunnerHost

__all__ = ["RayChildActor", "probe_task"]

#: With batches open when the runner's loop ended, the parent kills the actor once it has their
#: ends; should it not (a parent gone), the actor exits after this many seconds.
EXIT_BACKSTOP = 30.0


def _decode(data: bytes) -> Any:
    return codec.unpack(data, from_child=False)


class RayChildActor:
    """One incarnation's runner, in a Ray actor (see the module docstring)."""

    def __init__(self) -> None:
        os.environ[CHILD_ENV] = "1"  # a process of our own: faults that kill it are allowed
        self._host = RunnerHost(self._send, on_sticky=self._poisoned)
        self._is_poisoned = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._thread: threading.Thread | None = None
        self._streams: dict[int, asyncio.Queue[Any]] = {}
        self._rebuilds: dict[int, asyncio.Future[Any]] = {}
        self._control: asyncio.Future[Any] | None = None
        self._stopping = False
        self._ended: ChildDied | None = None  # the runner's loop ended unasked

    # --- the Trio side ----------------------------------------------------------------------

    async def _ensure_trio(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run_trio, args=(started,), name="trio-supervise-runner", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(started)

    def _run_trio(self, started: Future[None]) -> None:
        """The runner's thread. If its loop ends unasked (a runner that raised SystemExit, a
        bug), :meth:`_loop_ended` ends the open batches and then the actor, so nothing waits on
        a dead loop."""
        how = "returned"
        try:
            trio.run(self._trio_main, started)
        except BaseException as exc:
            traceback.print_exc()
            how = f"raised {_describe(exc)}"
        finally:
            if not self._stopping:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._loop_ended, how)

    def _loop_ended(self, how: str) -> None:
        """On the asyncio side, after every frame the loop sent (``call_soon_threadsafe`` keeps
        their order): end the open batches with the death, or exit now if there are none."""
        code = STICKY_EXIT_CODE if self._is_poisoned else 1
        self._ended = ChildDied(f"the runner's event loop in the Ray actor {how}")
        if not self._streams:
            os._exit(code)
        data = frames.error_to_data(self._ended)
        for seq, queue in self._streams.items():
            queue.put_nowait(frames.BatchFailed(seq, data, True))
        assert self._loop is not None
        self._loop.call_later(EXIT_BACKSTOP, os._exit, code)

    async def _trio_main(self, started: Future[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            started.set_result(None)
            await trio.sleep_forever()  # until stop() cancels it

    async def _send(self, message: Any) -> None:
        """A frame from the runner's side (in the Trio thread): to the asyncio side."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._route, message)

    def _poisoned(self) -> None:
        """After a sticky error: the parent kills this actor; until then, no batch runs here."""
        self._is_poisoned = True

    def _route(self, message: Any) -> None:
        if isinstance(message, frames.ChunkFrame | frames.BatchEnd | frames.BatchFailed):
            queue = self._streams.get(message.seq)
            if queue is not None:
                queue.put_nowait(message)
        elif isinstance(message, frames.RebuildDone):
            future = self._rebuilds.pop(message.token, None)
            if future is not None and not future.done():
                future.set_result(message)
        elif self._control is not None and not self._control.done():
            self._control.set_result(message)  # Ready, Parked or Fatal

    def _soon(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._token is not None
        self._token.run_sync_soon(fn, *args)

    async def _control_call(self, fn: Callable[..., Awaitable[object]], *args: Any) -> bytes:
        """Run ``fn`` in the Trio thread; return the control frame it sent, encoded."""
        await self._ensure_trio()
        assert self._loop is not None and self._nursery is not None
        self._control = self._loop.create_future()
        self._soon(self._nursery.start_soon, fn, *args)
        return codec.pack(await self._control)

    # --- the calls the parent makes ---------------------------------------------------------

    async def start(self, data: bytes) -> tuple[bytes, dict[str, Any]]:
        """Build and load (or park) the runner from an ``Init``; the reply and where we run."""
        init: frames.Init = _decode(data)
        host = self._host
        reply = await self._control_call(host.park if init.park else host.start, init)
        return reply, _identity()

    async def activate(self, generation: int) -> bytes:
        """A parked spare takes over: probe its device, load if it has not, say Ready."""
        return await self._control_call(self._host.activate, generation)

    async def execute(self, data: bytes) -> AsyncIterator[bytes]:
        """Run one ``Execute``; stream its frames back, as many as are waiting per item."""
        message: frames.Execute = _decode(data)
        seq = message.seq
        if self._is_poisoned or self._nursery is None or self._ended is not None:
            error: ContextPoisoned = self._ended or ContextPoisoned(
                "this actor's device context is poisoned by a sticky error"
            )
            yield codec.pack_all([frames.BatchFailed(seq, frames.error_to_data(error), True)])
            return
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[seq] = queue
        try:
            self._soon(self._host.handle, message, self._nursery)
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                yield codec.pack_all(items)
                if isinstance(items[-1], frames.BatchEnd | frames.BatchFailed):
                    return
        finally:
            self._streams.pop(seq, None)

    async def cancel(self, seq: int, request_id: str) -> None:
        """A consumer left: tell the runner (through the batch's cancelled set)."""
        if self._nursery is not None:
            self._soon(self._host.handle, frames.Cancel(seq, request_id), self._nursery)

    async def rebuild(self, token: int, cause: str) -> bytes:
        """Rebuild the runner's session; the ``RebuildDone`` frame, packed as a stream item."""
        assert self._loop is not None and self._nursery is not None
        future = self._rebuilds[token] = self._loop.create_future()
        self._soon(self._host.handle, frames.Rebuild(token, cause), self._nursery)
        return codec.pack_all([await future])

    async def heartbeat(self) -> int:
        """Answered from the runner's Trio loop (a loop that a runner blocks goes silent): the
        chunks sent so far."""
        assert self._loop is not None
        loop, future = self._loop, self._loop.create_future()

        def answer() -> None:
            loop.call_soon_threadsafe(_settle, future, self._host.progress)

        self._soon(answer)
        result: int = await future
        return result

    async def watch(self) -> None:
        """Never returns: the parent's call fails when this actor dies."""
        await asyncio.Event().wait()

    async def stop(self) -> None:
        """Close the runner (within 5 s) and end the Trio thread; the parent then kills us."""
        self._stopping = True
        if self._nursery is None or self._thread is None or self._ended is not None:
            return
        done: Future[None] = Future()

        async def close() -> None:
            try:
                await self._host.close()
            finally:
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
                done.set_result(None)

        self._soon(self._nursery.start_soon, close)
        await asyncio.wrap_future(done)
        await asyncio.to_thread(self._thread.join, 5)


def _describe(exc: BaseException) -> str:
    """``SystemExit(3)``; a group by its first leaf, as the runner raised it."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}({', '.join(map(repr, exc.args))})"


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _identity() -> dict[str, Any]:
    """Where this actor runs: its actor id, node id, node address and pid."""
    import ray

    context = ray.get_runtime_context()
    return {
        "actor_id": context.get_actor_id(),
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
        "pid": os.getpid(),
    }


def probe_task(data: bytes) -> bytes:
    """A Ray task: import the factory of an ``Init(probe=True)``; its ``Ready`` or ``Fatal``."""
    replies: list[Any] = []

    async def send(message: Any) -> None:
        replies.append(message)

    trio.run(RunnerHost(send).probe, _decode(data))
    return codec.pack(replies[0])
