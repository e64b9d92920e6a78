"""The Ray tier: the runner lives in a Ray actor, placed by Ray on any node of a cluster.

The parent side of :mod:`._ray_actor`. As with :mod:`.process`, a :class:`RayTier` is a
:class:`~.._tier.Tier` whose runner is a :class:`~.process.ChildRunner` (the same proxy: batches
and rebuilds become frames, frames become chunks), so dispatch, routing, the hang watchdog and
the decisions about batch errors are the inline tier's own. Ray only places, runs and reports
the death of the actor; the Trio parent decides (Ray's restarts and retries are off).

* :class:`RayActors` joins or starts Ray (:func:`ray_runtime`), runs the bridge to Ray's
  futures, owns the nursery where actors are retired (it outlives every tier incarnation, so a
  standby spare can wait for the next one) and that spare;
* each incarnation takes the spare, or makes a fresh actor and sends it ``Init``; on the way out
  the actor is asked to stop, given :data:`~._child_process.STOP_GRACE`, then ``ray.kill``\\ ed.

The bridge (:class:`Bridge`): a call's ``ObjectRef`` is resolved by Ray's own thread
(``ref.future()``), a batch's streaming generator is read by one thread per worker that runs an
asyncio loop; each result reaches Trio through ``TrioToken.run_sync_soon``. No Trio task blocks,
and no thread is spent per call or per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._errors import ChildDied, ConfigError, HungWorker
from ..tier._port import TierPort
from ..tier._tier import Tier
from . import _frames as frames
from ._child_process import STOP_GRACE
from ._host import HEARTBEAT_INTERVAL
from .process import ChildRunner, ProcessSpec

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "Bridge",
    "RayActor",
    "RayActors",
    "RaySpec",
    "RayTier",
    "import_ray",
    "ray_runtime",
]

logger = logging.getLogger("trio_supervise")

RAY_EXTRA = "pip install 'trio-supervise[ray]'"


def import_ray() -> ModuleType:
    """``import ray``, or a ConfigError that names the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"isolation='ray' needs Ray: {RAY_EXTRA} ({exc})") from exc
    return ray


_runtime_lock = threading.Lock()
_runtime_users = 0
_started_here = False


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to ``0`` before Ray is imported, Ray's switch for a one-node instance: it then binds and
advertises 127.0.0.1 (``_node_ip_address="127.0.0.1"`` alone is resolved to the machine's
address by Ray 2.x)."""


def _join(address: str | None) -> None:
    global _runtime_users, _started_here
    local = address is None and not os.environ.get("RAY_ADDRESS")
    imported = "ray" in sys.modules
    if local and not imported:
        os.environ.setdefault(LOOPBACK_ENV, "0")  # read by Ray at import, here and in its nodes
    ray = import_ray()
    with _runtime_lock:
        if not ray.is_initialized():
            if local:
                if imported and os.environ.get(LOOPBACK_ENV) != "0":
                    logger.warning(
                        "Ray was imported before a worker started a local Ray: it listens on "
                        "this machine's address, not only on loopback (set %s=0 before "
                        "importing Ray, or call ray.init yourself)", LOOPBACK_ENV,
                    )  # fmt: skip
                # A local Ray of our own: on loopback, no dashboard, nothing reachable from away.
                ray.init(_node_ip_address="127.0.0.1", include_dashboard=False)
            else:
                try:
                    ray.init(address=address)
                except ConnectionError as exc:
                    where = address or os.environ.get("RAY_ADDRESS")
                    raise ConfigError(
                        f"cannot join the Ray cluster at {where!r}: {exc}. Expected a running "
                        "cluster there (`ray start --head`); if it uses token authentication, "
                        "this process needs the cluster's token (RAY_AUTH_MODE=token with "
                        "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
                    ) from exc
            _started_here = True
        _runtime_users += 1


def _leave() -> None:
    global _runtime_users, _started_here
    ray = import_ray()
    with _runtime_lock:
        _runtime_users -= 1
        if _runtime_users == 0 and _started_here:
            _started_here = False
            ray.shutdown()


def _reclaim_termination_signals() -> None:
    """Give SIGTERM and SIGINT back to the handlers Python had for them.

    ``ray.init`` starts Ray's C++ core, which installs abseil's failure signal handler for
    SIGTERM and SIGINT whatever thread it runs in: on a SIGTERM it prints a stack dump ("***
    SIGTERM received ...") and arms a 3-second alarm that aborts the process (SIGABRT) before
    it chains to the handler that was there, so a server that drains for longer dies mid-drain.
    Setting Python's own handler again (a ``trio.open_signal_receiver``'s, or the default)
    restores it at the OS level. Only the main thread may set handlers: elsewhere, nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if handler is not None:  # None: not set from Python; leave it
            signal.signal(signum, handler)


@contextlib.asynccontextmanager
async def ray_runtime(address: str | None) -> AsyncIterator[None]:
    """Ray for the body: the one this process joined already (an app's own ``ray.init``, kept
    as it is), else the cluster at ``address`` or ``RAY_ADDRESS``, else a local one on loopback.

    What it started is shut down when its last user leaves. ``ray.init`` runs in a thread: it
    takes seconds, and there it installs no Python signal handler over the application's; the
    handlers Ray's C++ core installs for SIGTERM and SIGINT are taken back after it.
    """
    try:
        await trio.to_thread.run_sync(_join, address)
    finally:  # a failed join may have started Ray's core, and its handlers, all the same
        _reclaim_termination_signals()
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_leave)


class Bridge:
    """Ray's results into Trio (see the module docstring): calls through ``ref.future()``,
    streaming generators read on an asyncio loop in one thread."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="trio-supervise-ray-bridge",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def aclose(self) -> None:
        """Stop the loop (what it still awaits is dropped) and join its thread."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)

    def _to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the run is over: nobody to tell
            self._token.run_sync_soon(fn, *args)

    def submit(self, coroutine: Coroutine[Any, Any, None]) -> Future[None]:
        """Run a coroutine on the bridge's loop."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def get(self, ref: Any) -> Any:
        """Await one ``ObjectRef`` from Trio; its value, or the error Ray raised."""
        send, receive = trio.open_memory_channel[Future[Any]](1)
        future = ref.future()  # resolved by Ray's own thread: no hop through the loop
        future.add_done_callback(lambda done: self._to_trio(_send_quietly, send, done))
        # Not cancelled when we are: the call runs on in Ray, and its result is dropped.
        done = await receive.receive()
        return done.result()

    def then(self, ref: Any, on_value: Callable[[Any], None],
             on_error: Callable[[Exception], None]) -> None:  # fmt: skip
        """Call ``on_value(value)`` (or ``on_error``) in Trio once ``ref`` resolves."""

        def done(future: Future[Any]) -> None:
            try:
                value = future.result()
            except Exception as exc:
                self._to_trio(on_error, exc)
            else:
                self._to_trio(on_value, value)

        ref.future().add_done_callback(done)

    def stream(self, generator: Any, on_item: Callable[[Any], None],
               on_error: Callable[[Exception], None],
               on_end: Callable[[], None]) -> Future[None]:  # fmt: skip
        """Call ``on_item`` in Trio for each item of a Ray streaming generator, in order, then
        ``on_end`` (or ``on_error``)."""

        async def read() -> None:
            try:
                async for ref in generator:
                    self._to_trio(on_item, await ref)
            except Exception as exc:
                self._to_trio(on_error, exc)
            else:
                self._to_trio(on_end)

        return self.submit(read())


def _send_quietly(send: trio.MemorySendChannel[Any], value: Any) -> None:
    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        send.send_nowait(value)


@attrs.frozen
class RaySpec:
    """What every actor of one worker is made with."""

    process: ProcessSpec
    """The runner, its arguments and device, readiness and standby, as for a child process."""
    options: Mapping[str, Any] = attrs.field(factory=dict)
    """``ray_options``, for the actor's ``.options()`` (checked by the worker's options)."""
    address: str | None = None
    """The cluster to join (``None``: ``RAY_ADDRESS``, else a local Ray)."""


class RayActor:
    """One actor, from the parent's side: its handle, where it runs, whether it died."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle
        self.name = name  # the worker's, for errors
        self.identity: dict[str, Any] = {}  # name; actor_id, node_id, node_ip, pid once started
        self.dead: BaseException | None = None
        self.retired = False
        self.on_death: Callable[[BaseException], None] = lambda error: None

    def __repr__(self) -> str:
        return f"<RayActor {self.identity.get('actor_id')} node={self.identity.get('node_ip')}>"

    def died(self, exc: Exception) -> None:
        """Its ``watch`` (or another call) failed: Ray says it is gone."""
        if self.dead is None and not self.retired:
            self.dead = _child_died(self.name, exc)
            self.on_death(self.dead)


def _child_died(name: str, exc: BaseException) -> ChildDied:
    if isinstance(exc, ChildDied):
        return exc
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    error = ChildDied(f"the Ray actor of {name!r} died: {type(exc).__name__}: {first}")
    error.__cause__ = exc
    return error


class RayActors:
    """Ray, the bridge, the actors being retired and a standby spare, for one worker.

    Use ``async with RayActors.open(spec) as actors``: leaving it kills every actor still
    alive (a parked spare included) and leaves Ray as :func:`ray_runtime` says.
    """

    def __init__(self, spec: RaySpec, nursery: trio.Nursery, bridge: Bridge) -> None:
        self.spec = spec
        self.bridge = bridge
        self._nursery = nursery
        self._ray = import_ray()
        from ._ray_actor import RayChildActor

        # Ray's restarts and retries are off: the Trio policy decides. The actor's methods are
        # async; a thousand may wait at once (batches, watch, cancels).
        self._actor_class = self._ray.remote(RayChildActor)
        self._options = {"num_cpus": 0, **spec.options, "max_restarts": 0,
                         "max_task_retries": 0, "max_concurrency": 1000}  # fmt: skip
        self._made = 0
        self._alive: set[RayActor] = set()
        self.spare: RayActor | None = None
        self.spare_parked = trio.Event()  # set (and replaced) each time a spare is parked
        self._parking = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, spec: RaySpec) -> AsyncIterator[RayActors]:
        failure: BaseException | None = None
        async with ray_runtime(spec.address):
            bridge = Bridge()
            try:
                actors: RayActors | None = None
                async with trio.open_nursery() as nursery:
                    actors = cls(spec, nursery, bridge)
                    try:
                        yield actors
                    finally:
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                if len(group.exceptions) != 1:
                    raise
                failure = group.exceptions[0]  # raised plainly below, not chained to the group
            finally:
                with trio.CancelScope(shield=True):
                    if actors is not None:  # what the nursery's tasks left (a spare, ...)
                        await trio.to_thread.run_sync(actors._kill_all)
                    await bridge.aclose()
        if failure is not None:
            raise failure

    async def make(self) -> RayActor:
        """A fresh actor (Ray places it; it answers once ``start`` is called)."""
        self._made += 1
        options = dict(self._options)
        if "name" in options:  # one actor per incarnation: the name is a prefix
            options["name"] = f"{options['name']}-{self.spec.process.name}-{self._made}"
        # In a thread: the first creation exports the class, a named actor registers with the
        # cluster, a runtime_env may upload files. Shielded: no handle may get lost on the way.
        with trio.CancelScope(shield=True):
            try:
                handle = await trio.to_thread.run_sync(
                    lambda: self._actor_class.options(**options).remote()
                )
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"ray_options were refused by Ray: {exc}") from exc
        actor = RayActor(handle, self.spec.process.name)
        actor.identity["name"] = options.get("name")
        self._alive.add(actor)
        self.bridge.then(handle.watch.remote(), lambda value: None, actor.died)
        return actor

    async def request(self, actor: RayActor, call: Any, within: float | None) -> Any:
        """Wait for a control call's reply frame (``Ready`` or ``Parked``).

        Raises:
            HungWorker: no reply within ``within`` seconds.
            ChildDied: Ray says the actor died first.
            Exception: what the actor reported (``Fatal``), e.g. a ConfigError.
        """
        with trio.move_on_after(float("inf") if within is None else within) as scope:
            try:
                reply = await self.bridge.get(call)
            except Exception as exc:
                raise actor.dead or _child_died(actor.name, exc) from exc
        if scope.cancelled_caught:
            raise HungWorker(f"the Ray actor did not answer within {within:g}s")
        if isinstance(reply, tuple):  # start(): the frame and where the actor runs
            data, where = reply
            actor.identity.update(where)
        else:
            data = reply
        (message,) = frames.FrameReader(from_child=True).feed(data)
        if isinstance(message, frames.Fatal):
            raise frames.error_from_data(message.error)
        return message

    def retire(self, actor: RayActor) -> None:
        """Stop it in the background: ask, give it STOP_GRACE, then ``ray.kill``."""
        actor.retired = True
        self._nursery.start_soon(self._retire, actor)

    async def _retire(self, actor: RayActor) -> None:
        try:
            if actor.dead is None:
                with trio.move_on_after(STOP_GRACE), contextlib.suppress(Exception):
                    await self.bridge.get(actor.handle.stop.remote())
        finally:
            self._alive.discard(actor)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._kill, actor)

    def _kill(self, actor: RayActor) -> None:
        """``ray.kill`` (in a thread: it may wait for the actor's registration)."""
        actor.retired = True
        try:
            self._ray.kill(actor.handle, no_restart=True)
        except Exception as exc:  # gone already, or Ray is going away
            logger.debug("%s: ray.kill: %r", actor.name, exc)

    def _kill_all(self) -> None:
        """Kill every actor still alive (in a thread, once the nursery has ended)."""
        for actor in list(self._alive):
            self._kill(actor)
        self._alive.clear()
        self.spare = None

    def take_spare(self) -> RayActor | None:
        """The parked spare, if a live one is ready (with standby)."""
        spare, self.spare = self.spare, None
        if spare is not None and spare.dead is not None:
            self.retire(spare)
            return None
        return spare

    def replenish_spare(self) -> None:
        """With standby, start parking the next spare in the background."""
        if self.spec.process.standby and self.spare is None and not self._parking:
            self._parking = True
            self._nursery.start_soon(self._park_spare)

    async def _park_spare(self) -> None:
        spec = self.spec.process
        try:
            actor = await self.make()
            init = spec.init(0, park=True, preload=spec.standby_load)
            try:
                await self.request(actor, actor.handle.start.remote(frames.encode(init)),
                                   spec.readiness_timeout)  # fmt: skip
            except Exception:
                logger.exception("%s: a standby actor could not be parked", spec.name)
                self.retire(actor)
                return
            self.spare = actor
            self.spare_parked.set()
            self.spare_parked = trio.Event()
        finally:
            self._parking = False

    async def probe(self) -> frames.Ready:
        """The runner's class-level attributes (its default_policy), from a Ray task that
        imports the factory where the actors will run, so that the parent never imports it.

        Raises:
            ConfigError: the import path or the runner's attributes are bad (as reported).
            ChildDied: the task could not run.
        """
        from ._ray_actor import probe_task

        spec = self.spec.process
        options: dict[str, Any] = {"num_cpus": 0, "max_retries": 0}
        if "runtime_env" in self.spec.options:
            options["runtime_env"] = self.spec.options["runtime_env"]
        task = self._ray.remote(probe_task).options(**options)
        init = frames.Init(spec.factory_path, {}, spec.device, list(sys.path), 0, probe=True)
        with trio.move_on_after(spec.readiness_timeout or 60.0) as scope:
            try:
                # The first .remote() exports the function: in a thread, off the event loop.
                ref = await trio.to_thread.run_sync(task.remote, frames.encode(init))
                data = await self.bridge.get(ref)
            except Exception as exc:
                raise _child_died(spec.name, exc) from exc
        if scope.cancelled_caught:
            raise HungWorker("the Ray probe task did not answer")
        (message,) = frames.FrameReader(from_child=True).feed(data)
        if isinstance(message, frames.Fatal):
            raise frames.error_from_data(message.error)
        assert isinstance(message, frames.Ready)
        return message

    def tier(self, port: TierPort) -> RayTier:
        """A tier incarnation whose runner runs in one of these actors."""
        return RayTier(port, self)


class RayTier(Tier):
    """A tier whose runner runs in a Ray actor (see the module docstring)."""

    actor: RayActor | None = None

    def __init__(self, port: TierPort, actors: RayActors) -> None:
        super().__init__(port)
        self.actors = actors
        self._reader = frames.FrameReader(from_child=True)
        self._streaming: set[int] = set()  # batches whose stream has not sent its end yet

    @property
    def process(self) -> None:
        """No local process: the actor's pid is in :attr:`where`."""
        return None

    @property
    def where(self) -> dict[str, Any]:
        """Where the actor runs: ``actor_id``, ``node_id``, ``node_ip``, ``pid``, and its Ray
        ``name`` (``ray_options`` name, worker name, a count; None when unnamed)."""
        return {} if self.actor is None else dict(self.actor.identity)

    def placement(self) -> dict[str, Any]:
        """Where the actor runs (:attr:`where`)."""
        return self.where

    async def _load(self) -> None:
        actors, spec = self.actors, self.actors.spec.process
        timeout = self.port.readiness_timeout
        actor = actors.take_spare()
        if actor is not None:  # a standby spare: probe its device, load if it has not, go
            self.actor = actor
            actor.on_death = self.fail
            call = actor.handle.activate.remote(self.generation)
        else:
            actor = self.actor = await actors.make()
            actor.on_death = self.fail
            call = actor.handle.start.remote(frames.encode(spec.init(self.generation)))
        reply = await actors.request(actor, call, timeout)
        assert isinstance(reply, frames.Ready)
        self.concurrency = reply.max_concurrency
        self.deterministic = reply.deterministic
        self.runner = ChildRunner(self, reply.max_concurrency)
        assert self.nursery is not None
        self.nursery.start_soon(self._heartbeats, actor, spec.heartbeat_timeout)
        actors.replenish_spare()

    async def _heartbeats(self, actor: RayActor, silence: float) -> None:
        """A runner that blocks the actor's Trio loop for ``silence`` seconds (Ray still
        answers for the actor) is taken for dead, as a silent child process is."""
        while True:
            with trio.move_on_after(silence) as scope:
                try:
                    await self.actors.bridge.get(actor.handle.heartbeat.remote())
                except Exception as exc:
                    self._on_lost(exc)
                    return
            if scope.cancelled_caught:
                self.fail(ChildDied(f"no heartbeat from the Ray actor's runner loop for "
                                    f"{silence:g}s"))  # fmt: skip
                return
            await trio.sleep(HEARTBEAT_INTERVAL)

    async def send(self, message: Any) -> None:
        """A frame to the actor, as the call it stands for."""
        actor = self.actor
        assert actor is not None
        if actor.dead is not None:
            raise actor.dead
        handle, bridge = actor.handle, self.actors.bridge
        if isinstance(message, frames.Execute):
            stream = handle.execute.remote(frames.encode(message))
            seq = message.seq
            self._streaming.add(seq)
            bridge.stream(stream, self._on_frames, self._on_lost,
                          lambda: self._on_stream_end(seq))  # fmt: skip
        elif isinstance(message, frames.Cancel):
            handle.cancel.remote(message.seq, message.request_id)
        elif isinstance(message, frames.Rebuild):
            bridge.then(handle.rebuild.remote(message.token, message.cause), self._on_frames,
                        self._on_lost)  # fmt: skip
        # Stop: the actor is stopped by RayActors.retire, after the runner's tier is torn down.

    async def send_quietly(self, message: Any) -> None:
        """Send, ignoring an actor that is gone already."""
        with contextlib.suppress(ChildDied):
            await self.send(message)

    def _on_frames(self, data: bytes) -> None:
        """Frames from the actor (in Trio, from the bridge): to the batch or rebuild waiting."""
        runner = self.runner
        try:
            messages = self._reader.feed(data)
        except frames.MalformedFrame as exc:
            self.fail(ChildDied(f"the Ray actor sent a malformed frame: {exc}"))
            return
        if not isinstance(runner, ChildRunner):
            return
        for message in messages:
            runner.deliver(message)
            if isinstance(message, frames.BatchEnd | frames.BatchFailed):
                self._streaming.discard(message.seq)
                if isinstance(message, frames.BatchFailed) and message.sticky:
                    # The actor's device context is poisoned for good, or its runner's loop
                    # ended: whatever the policy says of the batch, this actor ends (a fresh
                    # one takes over), as a child process exits after a sticky error.
                    error = frames.error_from_data(message.error)
                    self.fail(error if isinstance(error, ChildDied) else ChildDied(
                        f"the Ray actor's device context is poisoned: {message.error.message}"
                    ))  # fmt: skip

    def _on_stream_end(self, seq: int) -> None:
        """A batch's stream ended: it must have sent its BatchEnd or BatchFailed."""
        if seq in self._streaming:
            self._streaming.discard(seq)
            self.fail(ChildDied(f"the Ray actor ended batch {seq}'s stream without its end"))

    def _on_lost(self, exc: Exception) -> None:
        """A batch's stream or a call failed in Ray: the actor is gone (or unreachable)."""
        if self.actor is not None:
            self.actor.died(exc)
        self.fail(_child_died(self.name, exc))

    async def _teardown(self) -> None:
        await super()._teardown()
        if self.actor is not None:
            self.actors.retire(self.actor)  # not awaited: the next incarnation need not wait
