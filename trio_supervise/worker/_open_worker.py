"""``open_worker``: a worker for the body of an ``async with``, drained on the way out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Unpack

import trio

from ..supervision import EventCallback
from ._options import WorkerArguments
from ._worker import Worker

__all__ = ["open_worker"]


@contextlib.asynccontextmanager
async def open_worker(
    runner_factory: str | Callable[..., Any],
    *,
    on_event: EventCallback | Sequence[EventCallback] | None = None,
    **options: Unpack[WorkerArguments],
) -> AsyncIterator[Worker]:
    """Run a worker for the body of an ``async with``; yields it once its first tier is ready.

    Args:
        runner_factory: a callable or an import path ``"module:factory"`` returning a runner.
        runner_args: keyword arguments for the factory.
        device: ``"auto"``, ``"cpu"``, ``"cuda:N"``, or a callable returning a device context.
        policy: the restart policy; ``None`` means the factory's ``default_policy``, else
            :data:`DEVICE_POLICY`.
        max_pending: batches that may wait for the tier; beyond it, ``Backpressure``.
        max_attempts: runs of one request in all (re-runs after a restart included).
        hang_timeout: seconds a batch may go without a chunk before the tier is ``HungWorker``.
        readiness_timeout: seconds a tier may take to build and load before ``HungWorker``.
        drain_timeout: on a normal exit, seconds in-flight work gets to finish.
        name: for events and errors (default: the factory's name).
        isolation: ``"inline"`` (this process), ``"process"`` (a child process that a fresh
            one replaces on every restart: the cure for a poisoned CUDA context) or ``"ray"``
            (a Ray actor, placed by Ray on any node of a cluster; a fresh actor on every
            restart). With ``"process"`` and ``"ray"`` the factory must be an import path and
            ``runner_args`` plain data.
        heartbeat_timeout: with ``isolation="process"`` or ``"ray"``, seconds without any
            frame (or heartbeat answer) from the child process or actor before it is taken for
            dead.
        standby: with ``isolation="process"`` or ``"ray"``, keep one spare process (or actor)
            parked (runner built,
            device opened): a restart probes it and swaps it in, then parks the next one.
        standby_load: also load the runner in the spare (faster swaps, more device memory).
        ray_options: with ``isolation="ray"``, the actor's Ray options (``num_gpus``,
            ``num_cpus`` (default 0), ``resources``, ``runtime_env``, ``scheduling_strategy``,
            ``name``, ``namespace``, ...); Ray's own restarts and retries stay off.
        ray_address: with ``isolation="ray"``, the cluster to join; ``None``: the Ray this
            process joined already, else ``RAY_ADDRESS``, else a local Ray on loopback.
        ray_frames: with ``isolation="ray"``, how batches and chunks travel: ``"direct"`` (the
            default), on a TCP connection from this process to the actor, as on a child
            process's socket (through Ray where the actor's node cannot be reached), or
            ``"ray"``, through Ray's streaming calls.
        on_event: a callable (or several) given every :class:`SupervisionEvent` of the worker:
            its tier's starts, failures and restarts, and BREAKER_CHANGED from a runner with a
            circuit breaker.

    Resource handling: when the body ends normally, the worker drains within
    ``drain_timeout``, then fails the rest with ``WorkerStopped``; when it ends with an
    exception, every request fails at once.

    Error handling: an escalated runner error or ``RestartIntensityExceeded`` is raised here,
    plainly, after every outstanding request has failed.

    Example::

        async with open_worker(MockRunner, device="cpu") as worker:
            stream = worker.generate(Request("r1", "hello", SamplingParams(max_tokens=8)))
            async for chunk in stream:
                print(chunk.text, end="")
    """
    worker = Worker(runner_factory, on_event=on_event, **options)
    plain: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            try:
                yield worker
            except BaseException:
                worker.stop("stopped: its owner failed")
                raise
            else:
                with trio.move_on_after(worker.drain_timeout):
                    await worker.drain()
                worker.stop()
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One exception (the worker's own failure, or the body's): raise it plainly, below, so
        # that it is not chained to the group our nursery wrapped it in.
        if len(group.exceptions) != 1:
            raise
        plain = group.exceptions[0]
    if plain is not None:
        raise plain
