"""The actor of a Ray-isolated worker: the runner's side, in a Ray worker process.

The parent (:mod:`._home`) makes one :class:`RayChildActor` per tier incarnation (and one per
standby spare). It is an *async* actor: Ray runs its methods on an asyncio loop. The runner is a
Trio runner, so the actor runs a Trio loop of its own in one thread, and the runner lives there,
built, parked, activated, loaded and driven by the same code as a child process's
(:class:`~.._host.RunnerHost`): the frames that a child writes to its socket are handed to this
actor's asyncio side instead.

* ``start(init, direct)`` builds and loads the runner (or parks it, for a spare) and returns the
  reply frame (``Ready``, ``Parked`` or ``Fatal``, packed), where the actor runs and, with
  ``direct``, the address and key of its frame connection (below);
* the frame connection (``ray_frames="direct"``, the default): the actor listens on its node's
  address for one TCP connection from its parent, which proves itself with a random key that
  only the parent got (in ``start``'s reply, through Ray); the actor closes the listener and
  answers with one byte, after which nothing else can connect. Then ``Execute``, ``Cancel`` and
  ``Rebuild`` frames come in on it and every chunk, end and ``RebuildDone`` goes back on it,
  written by the runner's Trio loop and read by the parent's: a chunk crosses no other event
  loop and no Ray object, as a child process's frames on its socket;
* ``execute(frame)`` is the other way (``ray_frames="ray"``, or a parent that cannot reach the
  node): a streaming generator, each item one payload of every frame that was waiting when Ray
  asked for the next item (one item per chunk would cost one Ray object per token), decoded at
  once by the parent, ending with ``BatchEnd`` or ``BatchFailed``;
* ``cancel``, ``rebuild``, ``activate`` and ``stop`` are the other frames, as calls;
* ``watch()`` never returns: the parent learns of the actor's death, busy or idle, from it;
* ``heartbeat()`` is answered from the runner's Trio loop, so a runner that blocks that loop
  goes silent, as a child process's heartbeats do.

After a sticky CUDA error the actor refuses every batch (the parent, told so by the batch's
``BatchFailed``, ends the tier and kills the actor: the next one is a new process with a new
CUDA context). If the runner's loop ends unasked (a runner that raised ``SystemExit``), every
open batch gets the chunks its runner sent and then a sticky ``BatchFailed`` carrying
:class:`~.._errors.ChildDied`, in order, as a child process's chunks reach the parent before its
death; an idle actor exits at once (the parent's ``watch`` learns it). On the frame connection
the chunks sent are ahead of its end of file, which the parent takes as the death. Ray's own
restarts and retries are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any, final

import trio

from ..._errors import ChildDied, ContextPoisoned
from .. import _codec as codec
from .. import _frames as frames
from .._host import CHILD_ENV, STICKY_EXIT_CODE, RunnerHost

__all__ = ["RayChildActor", "probe_task"]

KEY_BYTES = 32
"""The frame connection's key: random bytes the parent sends first."""
ACCEPTED = b"\x01"
"""The actor's answer to the key, sent once its listener is closed: the connection is the
parent's, and nothing else can connect."""
KEY_TIMEOUT = 5.0
"""Seconds a connection to the frame listener has to send the key before it is closed."""
OUTBOX_LIMIT = 1 << 20
"""Bytes of frames that may wait for the frame connection before the runner's sends wait."""
_CONTROL_REPLIES = (frames.Ready, frames.Parked, frames.Fatal)
"""Answers to the control calls (``start``, ``activate``): always through Ray."""

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
        self._frames: trio.SocketStream | None = None  # the frame connection, once the parent's
        self._outbox: Outbox | None = None  # what waits to be written on it
        self._open_batches: set[int] = set()  # sent on the frame connection, not ended yet

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
                told = self._tell_death_directly(how)
                self._loop.call_soon_threadsafe(self._loop_ended, how, told)

    def _tell_death_directly(self, how: str) -> bool:
        """After the loop ended unasked, with a frame connection: the end of each open batch
        (a sticky ``BatchFailed`` carrying the death) on it, written here, Trio being gone;
        whether there were any."""
        stream, outbox, open_batches = self._frames, self._outbox, sorted(self._open_batches)
        if stream is None or outbox is None or not open_batches:
            return False
        data = frames.error_to_data(self._death(how))
        payload = outbox.take() + b"".join(
            codec.encode(frames.BatchFailed(seq, data, True)) for seq in open_batches
        )
        with (
            contextlib.suppress(OSError),
            socket.socket(fileno=os.dup(stream.socket.fileno())) as sock,
        ):
            sock.settimeout(EXIT_BACKSTOP)
            sock.sendall(payload)
        return True

    def _death(self, how: str) -> ChildDied:
        return ChildDied(f"the runner's event loop in the Ray actor {how}")

    def _loop_ended(self, how: str, told: bool) -> None:
        """On the asyncio side, after every frame the loop sent (``call_soon_threadsafe`` keeps
        their order): end the open batches with the death, or exit now if there are none."""
        code = STICKY_EXIT_CODE if self._is_poisoned else 1
        self._ended = self._death(how)
        if not self._streams and not told:
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
        """A frame from the runner's side (in the Trio thread): on the frame connection, if the
        parent made one (replies to control calls excepted), else to the asyncio side."""
        outbox = self._outbox
        if outbox is not None and not isinstance(message, _CONTROL_REPLIES):
            if isinstance(message, frames.BatchEnd | frames.BatchFailed):
                self._open_batches.discard(message.seq)
            await outbox.put(codec.encode(message))
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._route, message)

    async def _serve_frames(self, sock: socket.socket, key: bytes) -> None:
        """Accept the parent's frame connection on ``sock``: the first connection that sends
        ``key`` is the parent's (any other is closed, and so is the listener once it is in);
        the frames it sends go to the runner until it ends."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            found: list[trio.SocketStream] = []

            async def vet(stream: trio.SocketStream) -> None:
                """A connection that sends the key is the parent's; any other (silent, short,
                wrong, reset) is closed, and the listener goes on."""
                with (
                    trio.move_on_after(KEY_TIMEOUT),
                    contextlib.suppress(OSError, trio.BrokenResourceError),
                ):
                    got = b""
                    while len(got) < len(key):
                        more = await stream.receive_some(len(key) - len(got))
                        if not more:
                            break
                        got += more
                    if secrets.compare_digest(got, key):
                        found.append(stream)
                        nursery.cancel_scope.cancel()
                        return
                await trio.aclose_forcefully(stream)

            async def accept() -> None:
                async with listener:
                    while True:
                        nursery.start_soon(vet, await listener.accept())

            nursery.start_soon(accept)
        stream = found[0]  # the listener is closed: answer the parent
        try:
            await stream.send_all(ACCEPTED)
        except (OSError, trio.BrokenResourceError):
            await trio.aclose_forcefully(stream)  # it went away: its frames go through Ray
            return
        assert self._nursery is not None
        outbox = self._outbox = Outbox(stream.socket)
        writer = trio.CancelScope()

        async def write() -> None:
            with writer:
                await outbox.run()

        self._nursery.start_soon(write)
        self._frames = stream
        reader = codec.FrameReader(from_child=False)
        while True:  # cancelled with the loop, the connection stays for the batches' ends
            try:
                data = await stream.receive_some()
                messages = reader.feed(data)
            except (trio.BrokenResourceError, codec.MalformedFrame):
                break
            if not data:
                break
            for message in messages:
                if isinstance(message, frames.Execute):
                    self._open_batches.add(message.seq)
                self._host.handle(message, self._nursery)
        # The parent went away (or broke the protocol): it kills this actor.
        self._frames = self._outbox = None
        writer.cancel()
        await trio.aclose_forcefully(stream)

    async def _open_frames(self) -> tuple[str, int, bytes] | None:
        """Listen for the frame connection: ``(host, port, key)``; ``None`` where no port can
        be had on the node's address (the frames then go through Ray)."""
        await self._ensure_trio()
        host, key = _node_address(), secrets.token_bytes(KEY_BYTES)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, 0), family=family)
        except OSError as exc:
            print(f"trio-supervise: no frame listener on {host} ({exc}); the frames go "
                  "through Ray", file=sys.stderr, flush=True)  # fmt: skip
            return None
        assert self._nursery is not None
        self._soon(self._nursery.start_soon, self._serve_frames, sock, key)
        return host, sock.getsockname()[1], key

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

    async def _control_call(self, fn: Callable[..., Awaitable[object]], *args: Any) -> Any:
        """Run ``fn`` in the Trio thread; return the control frame it sent."""
        await self._ensure_trio()
        assert self._loop is not None and self._nursery is not None
        self._control = self._loop.create_future()
        self._soon(self._nursery.start_soon, fn, *args)
        return await self._control

    # --- the calls the parent makes ---------------------------------------------------------

    async def start(
        self, data: bytes, direct: bool = False
    ) -> tuple[bytes, dict[str, Any], tuple[str, int, bytes] | None]:
        """Build and load (or park) the runner from an ``Init``: the reply, where we run, and
        with ``direct`` where the frame connection listens and its key."""
        init: frames.Init = _decode(data)
        host = self._host
        reply = await self._control_call(host.park if init.park else host.start, init)
        # A runner that failed to build gets no listener: the parent retires this actor.
        direct = direct and not isinstance(reply, frames.Fatal)
        address = await self._open_frames() if direct else None
        return codec.pack(reply), _identity(), address

    async def activate(self, generation: int) -> bytes:
        """A parked spare takes over: probe its device, load if it has not, say Ready."""
        return codec.pack(await self._control_call(self._host.activate, generation))

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


@final
class Outbox:
    """The frames waiting to go on a frame connection, and the task that writes them: each
    write takes every frame that waits, so a fast runner's chunks go many to a write (and to a
    read on the other side) while one alone goes at once. A producer waits while more than
    ``limit`` bytes wait; after the connection broke, frames are dropped (the parent is gone).
    Cancelled mid-write, the writer puts back what it had not written (:meth:`take` then has
    every frame not written yet, in order)."""

    def __init__(self, sock: trio.socket.SocketType, limit: int = OUTBOX_LIMIT) -> None:
        self._socket = sock
        self._limit = limit
        self._waiting: list[bytes] = []
        self._size = 0
        self._wake = trio.Event()
        self._room = trio.Event()
        self._broken = False

    async def put(self, data: bytes) -> None:
        """Queue one encoded frame (waits while the queue is over its limit)."""
        if self._broken:
            return
        self._waiting.append(data)
        self._size += len(data)
        self._wake.set()
        if self._size > self._limit:
            await self._room.wait()

    def take(self) -> bytes:
        """Every waiting frame, taken out of the queue."""
        data = b"".join(self._waiting)
        self._waiting.clear()
        self._size = 0
        self._room.set()
        self._room = trio.Event()
        return data

    async def run(self) -> None:
        """Write what waits, as it comes, until cancelled or the connection breaks."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._waiting:
                left = memoryview(self.take())
                try:
                    while left:
                        left = left[await self._socket.send(left) :]
                except OSError:  # a parent gone: it kills this actor, or its node's death does
                    self._broken = True
                    self._room.set()  # a producer waiting for room goes on (its frames dropped)
                    return
                except BaseException:  # cancelled: what is left goes first, written by take()
                    self._waiting.insert(0, bytes(left))
                    self._size += len(left)
                    raise


def _node_address() -> str:
    """The address of this actor's node, which the other nodes reach."""
    import ray

    address: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return address


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
        "node_ip": _node_address(),
        "pid": os.getpid(),
    }


def probe_task(data: bytes) -> bytes:
    """A Ray task: import the factory of an ``Init(probe=True)``; its ``Ready`` or ``Fatal``."""
    replies: list[Any] = []

    async def send(message: Any) -> None:
        replies.append(message)

    trio.run(RunnerHost(send).probe, _decode(data))
    return codec.pack(replies[0])
