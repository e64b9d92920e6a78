"""The process home: the runner lives in a child process that the worker can always replace.

The parent side of :mod:`trio_supervise.isolation._host`. A tier whose home is a
:class:`ProcessHome` runs a :class:`~._proxy.RunnerProxy` that turns ``execute`` into frames and
frames back into chunks, so dispatch, routing, the hang watchdog and the decisions about batch
errors are the tier's own. What this module adds is the processes' life:

* :class:`ChildProcesses` owns the nursery where a worker's child processes run (it outlives
  every tier incarnation, so that a standby spare (:mod:`._spares`) can wait for the next one);
* each incarnation's :class:`ProcessHome` takes the spare, or starts a fresh
  :class:`~._child_process.ChildProcess`, initialises it, and stops it on the way out without
  waiting for it to exit.

The parent never imports the runner and never touches CUDA: the factory crosses as an import
path, its arguments as msgspec data.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, final

import attrs
import trio

from ..tier._home import LoadedRunner, close_runner
from ..tier._port import TierPort
from ..tier._tier import Tier
from . import _frames as frames
from ._child_process import ChildProcess
from ._proxy import RunnerProxy
from ._spares import Spares

__all__ = ["ChildProcesses", "ProcessHome", "ProcessSpec", "probe_runner"]


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


@final
class ChildProcesses:
    """Where a worker's child processes run, and its standby spare (see the module docstring).

    Use ``async with ChildProcesses.open(spec) as children``: leaving the block stops every
    child still running (a parked spare included) and raises what the body raised, plainly.
    """

    def __init__(self, spec: ProcessSpec, nursery: trio.Nursery) -> None:
        self.spec = spec
        self._nursery = nursery
        self._spares = Spares[ChildProcess](
            spec.name, "process", nursery, make=self.start, park=self._park,
            alive=lambda child: child.dead is None and not child.done.is_set(),
            retire=lambda child: child.stop(),
        )  # fmt: skip

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

    @property
    def spare(self) -> ChildProcess | None:
        """The parked spare process, if any (with standby)."""
        return self._spares.spare

    @property
    def spare_parked(self) -> trio.Event:
        """Set (and replaced) each time a spare is parked."""
        return self._spares.parked

    async def start(self) -> ChildProcess:
        """Start a child process here (it is stopped by whoever uses it)."""
        child: ChildProcess = await self._nursery.start(ChildProcess(self.spec.name).run)
        return child

    def take_spare(self) -> ChildProcess | None:
        """The parked spare, if a live one is ready (with standby)."""
        return self._spares.take()

    def replenish_spare(self) -> None:
        """With standby, start parking the next spare in the background."""
        if self.spec.standby:
            self._spares.replenish()

    async def _park(self, child: ChildProcess) -> None:
        spec = self.spec
        await child.request(spec.init(0, park=True, preload=spec.standby_load),
                            spec.readiness_timeout)  # fmt: skip

    async def probe(self) -> frames.Ready:
        """The runner's class-level attributes, from a short-lived child (see probe_runner)."""
        return await probe_runner(self)

    def tier(self, port: TierPort) -> Tier:
        """A tier incarnation whose runner runs in one of these processes."""
        return Tier(port, ProcessHome(self))


@final
class ProcessHome:
    """A tier's runner in a child process (see the module docstring)."""

    def __init__(self, children: ChildProcesses) -> None:
        self.children = children
        self.child: ChildProcess | None = None
        self.runner: RunnerProxy | None = None

    @property
    def process(self) -> trio.Process | None:
        """The child process."""
        return None if self.child is None else self.child.process

    def placement(self) -> dict[str, Any]:
        """The child process's ``pid``."""
        process = self.process
        return {} if process is None else {"pid": process.pid}

    async def load(
        self, port: TierPort, nursery: trio.Nursery, fail: Callable[[BaseException], None]
    ) -> LoadedRunner:
        """Take the spare, or start a fresh child; its Ready tells the runner's attributes."""
        children, spec = self.children, self.children.spec
        timeout = port.readiness_timeout
        child = children.take_spare()
        if child is not None:  # a standby spare: probe its device, load if it has not, go
            message: Any = frames.Activate(port.generation)
        else:
            child = await children.start()
            message = spec.init(port.generation)
        self.child = child
        child.generation = port.generation
        child.on_death = fail
        reply = await child.request(message, timeout)
        assert isinstance(reply, frames.Ready)
        runner = self.runner = RunnerProxy(self, reply.max_concurrency)
        child.on_frame = runner.deliver
        nursery.start_soon(child.watch_heartbeats, spec.heartbeat_timeout)
        children.replenish_spare()
        return LoadedRunner(runner, reply.max_concurrency, reply.deterministic,
                            frozenset(reply.sampling_fields))  # fmt: skip

    async def send(self, message: Any) -> None:
        """Send a frame to the child."""
        assert self.child is not None
        await self.child.send(message)

    async def send_quietly(self, message: Any) -> None:
        """Send, ignoring a child that is gone already."""
        if self.child is not None:
            await self.child.send_quietly(message)

    async def teardown(self, fatal: BaseException | None) -> BaseException | None:
        """Ask the child to stop, then stop its process (not awaited)."""
        if self.runner is not None:
            await close_runner(self.runner, self.children.spec.name)
        if self.child is not None:
            # Not awaited: the next incarnation need not wait for this process to exit. It is
            # reaped by its own task in the nursery of ChildProcesses, which outlives every tier.
            self.child.stop_soon()
        return fatal


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
