"""Where a tier's runner lives: its home, which builds it, loads it and tears it down.

A :class:`~._tier.Tier` is given a home and never subclassed. It calls ``await
home.load(port, nursery, fail)`` once, then dispatches batches to the runner that ``load``
returned, and calls ``await home.teardown(fatal)`` once on the way out, whatever happened.
``home.placement()`` says where the runner runs.

* :class:`InlineHome` (here): the runner in this process, ``factory(**runner_args)`` on a device
  context of its own; a device that fails its probe after a poisoning cannot recover in this
  process, so teardown replaces the error with :class:`Unrecoverable`.
* A child process (:mod:`trio_supervise.isolation.process`) and a Ray actor
  (:mod:`trio_supervise.isolation.ray`): the runner is a proxy that speaks frames to it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Protocol, final

import attrs
import trio

from .._errors import ContextPoisoned, HungWorker, Unrecoverable
from ..devices import CpuDevice, DeviceContext
from ._breaker import BreakerState, CircuitBreaker
from ._port import TierPort
from ._runner import (
    runner_attributes,
    runner_deterministic,
    runner_sampling_fields,
    tell_generation,
)

__all__ = ["CLOSE_TIMEOUT", "InlineHome", "LoadedRunner", "RunnerHome", "close_runner"]

logger = logging.getLogger("trio_supervise")

CLOSE_TIMEOUT = 5.0
"""Seconds a runner's ``aclose`` and a device probe get while a tier is torn down."""


@final
@attrs.frozen
class LoadedRunner:
    """What a home hands its tier once the runner is ready."""

    runner: Any
    """What the tier calls ``execute`` and ``rebuild_session`` on (a proxy, for a remote home)."""
    concurrency: int
    """How many batches may execute at once (the runner's ``max_concurrency``)."""
    deterministic: bool
    """The runner's promise (see :func:`~._runner.runner_deterministic`)."""
    sampling_fields: frozenset[str] = frozenset()
    """The extra sampling fields it honours (see :func:`~._runner.runner_sampling_fields`)."""


class RunnerHome(Protocol):
    """Where a tier's runner lives (see the module docstring)."""

    runner: Any
    """The runner (or the parent's stand-in for it) as soon as it is built, while it loads too;
    None before."""

    async def load(
        self, port: TierPort, nursery: trio.Nursery, fail: Callable[[BaseException], None]
    ) -> LoadedRunner:
        """Build and load the runner within ``port.readiness_timeout``.

        ``nursery`` is the tier's, for helper tasks that end with it (a heartbeat watch);
        ``fail(error)`` ends the tier (a child process that died).

        Raises:
            HungWorker: not ready within the readiness timeout.
            Exception: what building or loading raised.
        """
        ...

    async def teardown(self, fatal: BaseException | None) -> BaseException | None:
        """Close the runner and release what it held; return the error that ends the tier:
        ``fatal``, or what replaces it. Called once, shielded, also after a failed load."""
        ...

    def placement(self) -> dict[str, Any]:
        """Where the runner runs: ``{}`` in this process, else what identifies its process."""
        ...


async def close_runner(runner: Any, name: str) -> None:
    """``await runner.aclose()`` within :data:`CLOSE_TIMEOUT`; a failure is logged."""
    with trio.move_on_after(CLOSE_TIMEOUT) as scope:
        try:
            await runner.aclose()
        except Exception:
            logger.exception("%s: runner.aclose() failed", name)
    if scope.cancelled_caught:
        logger.warning("%s: runner.aclose() took over %gs", name, CLOSE_TIMEOUT)


@final
class InlineHome:
    """The runner in this process, on a device context of its own."""

    def __init__(self) -> None:
        self.name = ""
        self.runner: Any = None
        self.device: DeviceContext | None = None

    def placement(self) -> dict[str, Any]:
        """``{}``: this process."""
        return {}

    async def load(
        self, port: TierPort, nursery: trio.Nursery, fail: Callable[[BaseException], None]
    ) -> LoadedRunner:
        """``factory(**runner_args)``, its device opened, ``load``\\ ed (see RunnerHome)."""
        self.name = port.name
        timeout = port.readiness_timeout
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            runner = self.runner = port.factory(**port.runner_args)
            tell_generation(runner, port.generation)
            concurrency, _, needs_device = runner_attributes(runner)
            deterministic = runner_deterministic(runner)
            sampling = runner_sampling_fields(runner)
            _watch_breaker(runner, port.breaker_changed)
            self.device = port.open_device() if needs_device else CpuDevice()
            await runner.load(self.device)
        if scope.cancelled_caught:
            raise HungWorker(f"the runner was not ready within readiness_timeout={timeout:g}s")
        return LoadedRunner(runner, concurrency, deterministic, sampling)

    async def teardown(self, fatal: BaseException | None) -> BaseException | None:
        """Probe the device after a poisoning, close the runner, close the device."""
        device = self.device
        if device is not None and isinstance(fatal, ContextPoisoned):
            fatal = await self._probe(device, fatal)
        if self.runner is not None:
            await close_runner(self.runner, self.name)
        if device is not None:
            await self._close_device(device)
        return fatal

    async def _close_device(self, device: DeviceContext) -> None:
        """Close the device context without blocking the event loop on the GPU.

        Freeing a CUDA memory pool waits for the device, so anything but the CPU closes in a
        thread, abandoned after CLOSE_TIMEOUT (a hung device cannot be waited for).
        """
        try:
            if isinstance(device, CpuDevice):
                device.close()
                return
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                await trio.to_thread.run_sync(device.close, abandon_on_cancel=True)
            if scope.cancelled_caught:
                logger.warning("%s: closing %s took over %gs", self.name, device.name,
                               CLOSE_TIMEOUT)  # fmt: skip
        except Exception:
            logger.exception("%s: closing device %s failed", self.name, device.name)

    async def _probe(self, device: DeviceContext, error: BaseException) -> BaseException:
        """After a poisoning: can this process still use the device? If not, say the cure."""
        failure: BaseException | None = None
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            try:
                await device.probe()
            except Exception as exc:
                failure = exc
        if scope.cancelled_caught:
            failure = HungWorker(f"the device probe did not answer within {CLOSE_TIMEOUT:g}s")
        if failure is None:
            return error
        stop = Unrecoverable(
            f"the device context on {device.name} is poisoned and cannot recover in this "
            f"process (probe: {failure!r}); run the worker with isolation='process' so that "
            "a fresh process can take over"
        )
        stop.__cause__ = error
        return stop


def _watch_breaker(runner: Any, report: Callable[[BreakerState, BreakerState], None]) -> None:
    """A runner's circuit breaker (``runner.breaker``) reports its changes as events."""
    breaker = getattr(runner, "breaker", None)
    if not isinstance(breaker, CircuitBreaker):
        return
    # A breaker kept across tiers (passed in runner_args) is wrapped once, not per tier.
    theirs = getattr(breaker.on_change, "wrapped_by_tier", breaker.on_change)

    def on_change(old: BreakerState, new: BreakerState) -> None:
        if theirs is not None:
            theirs(old, new)
        report(old, new)

    on_change.wrapped_by_tier = theirs  # type: ignore[attr-defined]
    breaker.on_change = on_change
