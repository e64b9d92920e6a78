"""``serve(config)``: the worker pool behind HTTP, in the style of ``trio.serve_listeners``."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import AsyncIterator
from typing import final

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from .._errors import Unrecoverable
from .._worker import WorkerState
from .app import App
from .config import ServeConfig
from .metrics import Metrics
from .pool import WorkerPool

__all__ = ["ServerHandle", "serve"]

logger = logging.getLogger("trio_supervise")

BACKLOG = 1024
"""Connections the kernel queues before ``accept`` (hypercorn's default, 100, is below what a
burst of a few hundred clients opens at once)."""


@final
@attrs.define(eq=False)
class ServerHandle:
    """What ``task_status.started()`` hands back: where the server listens, and ``drain()``."""

    address: tuple[str, int]
    """``(host, port)`` actually bound (port 0 in the config picks a free one)."""
    pool: WorkerPool
    app: App
    _drain_requested: trio.Event = attrs.Factory(trio.Event)

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.address[0]}:{self.address[1]}"

    def drain(self) -> None:
        """Begin draining (idempotent): readyz and new requests get 503, in-flight requests
        finish within ``drain_timeout``, the workers stop, then the server returns."""
        self._drain_requested.set()


async def serve(
    config: ServeConfig,
    *,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``config``'s workers over HTTP until drained.

    It binds the port before the workers load (``/healthz`` answers 200 and ``/readyz`` 503
    while they do), then calls ``task_status.started(handle)`` once every replica is ready.

    Resource handling:
        The pool (its root supervisor and every worker) and the HTTP server live in this call's
        nursery. A drain (``handle.drain()``, or the first SIGTERM/SIGINT with
        ``handle_signals=True``) keeps the listener open, answers 503 to new requests and to
        ``/readyz``, gives in-flight requests ``drain_timeout`` seconds, fails the rest with
        ``WorkerStopped``, stops the workers, and only then shuts the HTTP server down.

    Error handling:
        A bad config raises ``ConfigError`` before anything starts. When the root supervisor
        gives up, that error propagates out of ``serve`` once the server is shut down; so does
        an ``Unrecoverable`` when every replica of a model has stopped for good. With
        ``handle_signals=True``, a second signal during the drain raises ``SystemExit`` with
        128 + the signal's number.
    """
    if not isinstance(config, ServeConfig):
        raise TypeError(f"serve takes a ServeConfig, got {config!r}")
    pool = WorkerPool(config)
    app = App(pool, Metrics())
    hypercorn_config = HypercornConfig()
    hypercorn_config.bind = [
        _bind(config.server.host, config.server.port, config.server.reuse_port)
    ]
    hypercorn_config.graceful_timeout = config.server.drain_timeout
    hypercorn_config.accesslog = None
    hypercorn_config.backlog = BACKLOG
    shutdown = trio.Event()
    fatal: list[BaseException] = []  # why the server must end once drained
    signals: AsyncIterator[int] | None = None
    async with trio.open_nursery() as nursery:
        if handle_signals:
            receiver = trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT)
            signals = receiver.__enter__()
        try:
            binds = await nursery.start(
                lambda task_status: hypercorn_serve(
                    app,  # type: ignore[arg-type]
                    hypercorn_config,
                    shutdown_trigger=shutdown.wait,
                    task_status=task_status,
                )
            )
            host, _, port = binds[0].removeprefix("http://").rpartition(":")
            handle = ServerHandle((host.strip("[]"), int(port)), pool, app)
            if signals is not None:
                nursery.start_soon(_on_signal, signals, handle)
            async with trio.open_nursery() as workers:
                await workers.start(pool.run)
                workers.start_soon(_watch_models, pool, handle, fatal)
                app.ready = True
                task_status.started(handle)
                await handle._drain_requested.wait()
                logger.info("draining: in-flight requests get %gs", config.server.drain_timeout)
                with trio.move_on_after(config.server.drain_timeout):
                    await pool.drain()
                workers.cancel_scope.cancel()
            nursery.cancel_scope.cancel()  # drained: the signal watcher goes too
        finally:
            shutdown.set()
            if handle_signals:
                receiver.__exit__(None, None, None)
    if fatal:
        raise fatal[0]


def _bind(host: str, port: int, reuse_port: bool) -> str:
    """Hypercorn's bind for ``host:port``; with ``reuse_port``, a socket of our own with
    ``SO_REUSEPORT`` (hypercorn sets it only for its own worker processes), handed over by fd."""
    if not reuse_port:
        return f"{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return f"fd://{sock.detach()}"  # hypercorn owns (and closes) it from here


async def _watch_models(pool: WorkerPool, handle: ServerHandle, fatal: list[BaseException]) -> None:
    """A model whose every replica stopped for good cannot be served: drain, then fail."""
    while True:
        for model, replicas in pool.replicas.items():
            if replicas and all(
                r.worker is not None and r.worker.state.value is WorkerState.STOPPED
                for r in replicas
            ):
                fatal.append(
                    Unrecoverable(f"model {model!r} has no replica left: every one stopped")
                )
                handle.drain()
                return
        await pool._ready_changed.wait()


async def _on_signal(signals: AsyncIterator[int], handle: ServerHandle) -> None:
    """The first SIGTERM/SIGINT drains; a second one exits at once (128 + its number)."""
    drained = False
    async for signum in signals:
        if drained:
            raise SystemExit(128 + signum)
        drained = True
        handle.drain()
