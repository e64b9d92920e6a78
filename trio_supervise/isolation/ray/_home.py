"""The Ray home: a tier's runner in a Ray actor, placed by Ray on any node of a cluster.

The parent side of :mod:`._actor`. As with a child process, the tier's runner is a
:class:`~.._proxy.RunnerProxy` (batches and rebuilds become frames, frames become chunks), so
dispatch, routing, the hang watchdog and the decisions about batch errors are the tier's own.
Ray only places, runs and reports the death of the actor; the Trio parent decides (Ray's
restarts and retries are off).

* :class:`RayActors` joins or starts Ray (:func:`~._runtime.ray_runtime`), runs the
  :class:`~._bridge.Bridge` to Ray's futures, owns the nursery where actors are retired (it
  outlives every tier incarnation, so a standby spare (:mod:`.._spares`) can wait for the next
  one) and that spare;
* each incarnation's :class:`RayHome` takes the spare, or makes a fresh actor and sends it
  ``Init``; on the way out the actor is asked to stop, given
  :data:`~.._child_process.STOP_GRACE`, then ``ray.kill``\\ ed.

With ``frames="direct"`` (the default) the parent then connects to the actor's frame
listener (:mod:`._actor`) and every batch, cancel and rebuild travels on that TCP connection, as
on a child process's socket: no Ray object, no other event loop, per chunk; its end is the
actor's death, once Ray confirms it (within ``heartbeat_timeout``). Where it cannot be
made (a parent outside the cluster's network), or with ``frames="ray"``, a batch is a streaming
call, each item of its stream one payload of frames, decoded as it comes (no re-framing).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, final

import attrs
import trio

from ..._errors import ChildDied, ConfigError, HungWorker
from ...tier._home import LoadedRunner, close_runner
from ...tier._port import TierPort
from ...tier._tier import Tier
from .. import _codec as codec
from .. import _frames as frames
from .._child_process import STOP_GRACE
from .._host import HEARTBEAT_INTERVAL
from .._proxy import RunnerProxy
from .._spares import Spares
from ..process import ProcessSpec
from ._actor import ACCEPTED
from ._bridge import Bridge
from ._handle import RayActor, child_died
from ._runtime import import_ray, ray_runtime

__all__ = ["RayActors", "RayHome", "RaySpec"]

CONNECT_TIMEOUT = 5.0
"""Seconds to make the frame connection to an actor before its frames go through Ray."""

logger = logging.getLogger("trio_supervise")


@final
@attrs.frozen
class RaySpec:
    """What every actor of one worker is made with."""

    process: ProcessSpec
    """The runner, its arguments and device, readiness and standby, as for a child process."""
    options: Mapping[str, Any] = attrs.field(factory=dict)
    """``ray_options``, for the actor's ``.options()`` (checked by the worker's options)."""
    address: str | None = None
    """The cluster to join (``None``: ``RAY_ADDRESS``, else a local Ray)."""
    frames: str = "direct"
    """How a batch's frames travel: ``"direct"``, on a TCP connection from the parent to the
    actor (through Ray when it cannot be made), or ``"ray"``, through Ray's streaming calls."""

    @property
    def direct(self) -> bool:
        return self.frames == "direct"


@final
class RayActors:
    """Ray, the bridge, the actors being retired and a standby spare, for one worker.

    Use ``async with RayActors.open(spec) as actors``: leaving it kills every actor still
    alive (a parked spare included) and leaves Ray as :func:`~._runtime.ray_runtime` says.
    """

    def __init__(self, spec: RaySpec, nursery: trio.Nursery, bridge: Bridge) -> None:
        self.spec = spec
        self.bridge = bridge
        self._nursery = nursery
        self._ray = import_ray()
        from ._actor import RayChildActor

        # Ray's restarts and retries are off: the Trio policy decides. The actor's methods are
        # async; a thousand may wait at once (batches, watch, cancels).
        self._actor_class = self._ray.remote(RayChildActor)
        self._options = {"num_cpus": 0, **spec.options, "max_restarts": 0,
                         "max_task_retries": 0, "max_concurrency": 1000}  # fmt: skip
        self._made = 0
        self._alive: set[RayActor] = set()
        self._spares = Spares[RayActor](
            spec.process.name, "actor", nursery, make=self.make, park=self._park,
            alive=lambda actor: actor.dead is None, retire=self._retire,
        )  # fmt: skip

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

    @property
    def spare(self) -> RayActor | None:
        """The parked spare actor, if any (with standby)."""
        return self._spares.spare

    @property
    def spare_parked(self) -> trio.Event:
        """Set (and replaced) each time a spare is parked."""
        return self._spares.parked

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
        self.bridge.then(handle.watch.remote(), lambda value: None, actor.reported_dead)
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
                raise actor.dead or child_died(actor.name, exc) from exc
        if scope.cancelled_caught:
            raise HungWorker(f"the Ray actor did not answer within {within:g}s")
        if isinstance(reply, tuple):  # start(): the frame, where the actor runs, its listener
            data, where, actor.frames_at = reply
            actor.identity.update(where)
        else:
            data = reply
        message = codec.unpack(data, from_child=True)
        if isinstance(message, frames.Fatal):
            raise frames.error_from_data(message.error)
        return message

    def retire(self, actor: RayActor) -> None:
        """Stop it in the background: ask, give it STOP_GRACE, then ``ray.kill``."""
        actor.retired = True
        self._nursery.start_soon(self._retire, actor)

    async def _retire(self, actor: RayActor) -> None:
        actor.retired = True
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

    def take_spare(self) -> RayActor | None:
        """The parked spare, if a live one is ready (with standby)."""
        return self._spares.take()

    def replenish_spare(self) -> None:
        """With standby, start parking the next spare in the background."""
        if self.spec.process.standby:
            self._spares.replenish()

    async def _park(self, actor: RayActor) -> None:
        spec = self.spec.process
        init = spec.init(0, park=True, preload=spec.standby_load)
        call = actor.handle.start.remote(codec.pack(init), self.spec.direct)
        await self.request(actor, call, spec.readiness_timeout)

    async def probe(self) -> frames.Ready:
        """The runner's class-level attributes (its default_policy), from a Ray task that
        imports the factory where the actors will run, so that the parent never imports it.

        Raises:
            ConfigError: the import path or the runner's attributes are bad (as reported).
            ChildDied: the task could not run.
        """
        from ._actor import probe_task

        spec = self.spec.process
        options: dict[str, Any] = {"num_cpus": 0, "max_retries": 0}
        if "runtime_env" in self.spec.options:
            options["runtime_env"] = self.spec.options["runtime_env"]
        task = self._ray.remote(probe_task).options(**options)
        init = frames.Init(spec.factory_path, {}, spec.device, list(sys.path), 0, probe=True)
        with trio.move_on_after(spec.readiness_timeout or 60.0) as scope:
            try:
                # The first .remote() exports the function: in a thread, off the event loop.
                ref = await trio.to_thread.run_sync(task.remote, codec.pack(init))
                data = await self.bridge.get(ref)
            except Exception as exc:
                raise child_died(spec.name, exc) from exc
        if scope.cancelled_caught:
            raise HungWorker("the Ray probe task did not answer")
        message = codec.unpack(data, from_child=True)
        if isinstance(message, frames.Fatal):
            raise frames.error_from_data(message.error)
        assert isinstance(message, frames.Ready)
        return message

    def tier(self, port: TierPort) -> Tier:
        """A tier incarnation whose runner runs in one of these actors."""
        return Tier(port, RayHome(self))


@final
class RayHome:
    """A tier's runner in a Ray actor (see the module docstring)."""

    def __init__(self, actors: RayActors) -> None:
        self.actors = actors
        self.actor: RayActor | None = None
        self.runner: RunnerProxy | None = None
        self._fail: Callable[[BaseException], None] = lambda error: None
        self._streaming: set[int] = set()  # batches whose stream has not sent its end yet
        self._stream: trio.SocketStream | None = None  # the frame connection, if made
        self._send_lock = trio.Lock()

    def placement(self) -> dict[str, Any]:
        """Where the actor runs: ``actor_id``, ``node_id``, ``node_ip``, ``pid``, and its Ray
        ``name`` (``ray_options`` name, worker name, a count; None when unnamed)."""
        return {} if self.actor is None else dict(self.actor.identity)

    async def load(
        self, port: TierPort, nursery: trio.Nursery, fail: Callable[[BaseException], None]
    ) -> LoadedRunner:
        """Take the spare, or make a fresh actor; its Ready tells the runner's attributes."""
        actors, spec = self.actors, self.actors.spec.process
        self._fail = fail
        reply = None
        actor = actors.take_spare()
        if actor is not None:  # a standby spare: probe its device, load if it has not, go
            self.actor = actor
            try:
                call = actor.handle.activate.remote(port.generation)
                reply = await actors.request(actor, call, port.readiness_timeout)
            except ChildDied:
                # It died while parked, before Ray said so (its node was lost with the actor it
                # replaces): a fresh actor takes over in this same load.
                actors.retire(actor)
                self.actor = None
            else:
                actor.on_death = fail
        if reply is None:
            actor = self.actor = await actors.make()
            actor.on_death = fail
            init = codec.pack(spec.init(port.generation))
            call = actor.handle.start.remote(init, actors.spec.direct)
            reply = await actors.request(actor, call, port.readiness_timeout)
        assert actor is not None and isinstance(reply, frames.Ready)
        self.runner = RunnerProxy(self, reply.max_concurrency)
        actor.identity["frames"] = "ray"
        if actor.frames_at is not None:
            await self._connect(actor, actor.frames_at, nursery)
        nursery.start_soon(self._heartbeats, actor, spec.heartbeat_timeout)
        actors.replenish_spare()
        return LoadedRunner(self.runner, reply.max_concurrency, reply.deterministic,
                            frozenset(reply.sampling_fields))  # fmt: skip

    async def _connect(
        self, actor: RayActor, at: tuple[str, int, bytes], nursery: trio.Nursery
    ) -> None:
        """Make the frame connection to the actor's listener (the key out, the actor's
        :data:`ACCEPTED` back) and read it in ``nursery``; one that cannot be made within
        :data:`CONNECT_TIMEOUT` leaves the frames to Ray."""
        host, port, key = at
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(host, port)
                try:
                    await stream.send_all(key)
                    answer = await stream.receive_some(len(ACCEPTED))
                    if answer != ACCEPTED:
                        raise OSError(f"the actor answered {answer!r} to the key, expected "
                                      f"{ACCEPTED!r}")  # fmt: skip
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            logger.warning(
                "%s: no frame connection to its Ray actor at %s:%d (%s: %s); its frames go "
                "through Ray", actor.name, host, port, type(exc).__name__, exc,
            )  # fmt: skip
            return
        self._stream = stream
        actor.identity["frames"] = "direct"
        nursery.start_soon(self._read_frames, actor, stream)

    async def _read_frames(self, actor: RayActor, stream: trio.SocketStream) -> None:
        """The actor's frames on the frame connection. Its end is the actor's death, which Ray
        is given ``heartbeat_timeout`` to confirm: a process that exited is reported at once,
        a lost node once Ray's connection to its raylet drops; meanwhile the node's other
        processes (a standby spare) die too, so that no restart lands on a node going down."""
        reader = codec.FrameReader(from_child=True)
        try:
            while True:
                data = await stream.receive_some()
                if not data:
                    raise ChildDied("the Ray actor closed its frame connection")
                if not self._take(reader.feed, data):
                    return
        except (ChildDied, trio.BrokenResourceError) as exc:
            with trio.move_on_after(self.actors.spec.process.heartbeat_timeout):
                await actor.reported.wait()
            self._on_lost(actor.ray_says or exc)

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
                self._fail(ChildDied(f"no heartbeat from the Ray actor's runner loop for "
                                     f"{silence:g}s"))  # fmt: skip
                return
            await trio.sleep(HEARTBEAT_INTERVAL)

    async def send(self, message: Any) -> None:
        """A frame to the actor, as the call it stands for."""
        actor = self.actor
        assert actor is not None
        if actor.dead is not None:
            raise actor.dead
        if not isinstance(message, frames.Execute | frames.Cancel | frames.Rebuild):
            return  # Stop: the actor is stopped by RayActors.retire, after the tier is torn down
        stream = self._stream
        if stream is not None:  # on the frame connection
            try:
                async with self._send_lock:
                    await stream.send_all(codec.encode(message))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise actor.dead or ChildDied(
                    f"the frame connection to the Ray actor of {actor.name!r} broke: {exc}"
                ) from exc
            return
        handle, bridge = actor.handle, self.actors.bridge
        if isinstance(message, frames.Execute):
            stream = handle.execute.remote(codec.pack(message))
            seq = message.seq
            self._streaming.add(seq)
            bridge.stream(stream, self._on_frames, self._on_lost,
                          lambda: self._on_stream_end(seq))  # fmt: skip
        elif isinstance(message, frames.Cancel):
            handle.cancel.remote(message.seq, message.request_id)
        elif isinstance(message, frames.Rebuild):
            bridge.then(handle.rebuild.remote(message.token, message.cause), self._on_frames,
                        self._on_lost)  # fmt: skip

    async def send_quietly(self, message: Any) -> None:
        """Send, ignoring an actor that is gone already."""
        with contextlib.suppress(ChildDied):
            await self.send(message)

    def _on_frames(self, data: bytes) -> None:
        """One item from the actor (in Trio, from the bridge): its frames, to the batch or
        rebuild waiting for each."""
        self._take(codec.unpack_all, data)

    def _take(self, decode: Callable[[bytes], list[Any]], data: bytes) -> bool:
        """Decode ``data`` and deliver its frames; ``False`` when one is malformed (the tier
        fails: the actor is broken)."""
        try:
            messages = decode(data)
        except codec.MalformedFrame as exc:
            self._fail(ChildDied(f"the Ray actor sent a malformed frame: {exc}"))
            return False
        self._deliver(messages)
        return True

    def _deliver(self, messages: list[Any]) -> None:
        """Frames from the actor, to the batch or rebuild waiting for each."""
        runner = self.runner
        if runner is None:
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
                    self._fail(error if isinstance(error, ChildDied) else ChildDied(
                        f"the Ray actor's device context is poisoned: {message.error.message}"
                    ))  # fmt: skip

    def _on_stream_end(self, seq: int) -> None:
        """A batch's stream ended: it must have sent its BatchEnd or BatchFailed."""
        if seq in self._streaming:
            self._streaming.discard(seq)
            self._fail(ChildDied(f"the Ray actor ended batch {seq}'s stream without its end"))

    def _on_lost(self, exc: Exception) -> None:
        """A batch's stream or a call failed in Ray: the actor is gone (or unreachable)."""
        if self.actor is not None:
            self.actor.died(exc)
        self._fail(child_died(self.actors.spec.process.name, exc))

    async def teardown(self, fatal: BaseException | None) -> BaseException | None:
        """Close the runner's proxy, then retire the actor (not awaited: the next incarnation
        need not wait for it)."""
        if self.runner is not None:
            await close_runner(self.runner, self.actors.spec.process.name)
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)
        if self.actor is not None:
            self.actors.retire(self.actor)
        return fatal
