"""``serve(config)``: the worker pool behind HTTP, in the style of ``trio.serve_listeners``."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import stat
from collections.abc import AsyncIterator, Callable
from typing import Any, final

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from .._errors import Unrecoverable
from ..worker._worker import WorkerState
from ._exchange import Observer
from ._keys import load_api_keys
from ._logs import HTTP_LOGGER
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
        """``http://host:port`` (an IPv6 address in brackets)."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def drain(self) -> None:
        """Begin draining (idempotent): readyz and new requests get 503 from now on, in-flight
        requests finish within ``drain_timeout``, the workers stop, then the server returns."""
        self.pool.draining = True
        self._drain_requested.set()


async def serve(
    config: ServeConfig,
    *,
    handle_signals: bool = False,
    on_listening: Callable[[ServerHandle], None] | None = None,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``config``'s workers over HTTP until drained.

    It binds the port before the workers load (``/healthz`` answers 200 and ``/readyz`` 503
    while they do), calls ``on_listening(handle)`` then (an observer, to say where it listens),
    and calls ``task_status.started(handle)`` once every replica is ready.

    Resource handling:
        The pool (its root supervisor and every worker) and the HTTP server live in this call's
        nursery. A drain (``handle.drain()``, or the first SIGTERM/SIGINT with
        ``handle_signals=True``) keeps the listener open, answers 503 to new requests and to
        ``/readyz``, gives in-flight requests ``drain_timeout`` seconds, fails the rest with
        ``WorkerStopped``, stops the workers, and only then shuts the HTTP server down
        gracefully: every response in progress writes its end (a stream its error event and
        ``[DONE]``) before its connection closes. A drain while the replicas still load (the
        first time) stops them at once, and ``serve`` returns without calling
        ``task_status.started`` (so ``nursery.start(serve, ...)`` raises trio's RuntimeError
        then; the CLI calls ``serve`` directly).

    Error handling:
        A bad config raises ``ConfigError`` before anything starts. When the root supervisor
        gives up, that error propagates out of ``serve`` once the server is shut down; so does
        an ``Unrecoverable`` when every replica of a model has stopped for good. With
        ``handle_signals=True``, a second signal during the drain stops everything at once and
        raises ``SystemExit`` with 128 + the signal's number (not inside an exception group).
    """
    if not isinstance(config, ServeConfig):
        raise TypeError(f"serve takes a ServeConfig, got {config!r}")
    drain_timeout = config.server.drain_timeout
    keys = load_api_keys(config.server)  # before anything starts: a bad key file is a ConfigError
    metrics = Metrics()
    pool = WorkerPool(config, on_event=metrics.on_event)
    app = App(pool, metrics, keys, _tracing(config))
    _make_room_for(config.server.max_connections)
    hypercorn_config = HypercornConfig()
    server = config.server
    hypercorn_config.bind = [
        _bind(await _resolve(server.host, server.port), reuse_port=server.reuse_port,
              send_timeout=server.send_timeout)
    ]  # fmt: skip
    # Once the workers have stopped, every response ends at once: this bounds the wait for
    # the last writes to slow clients.
    hypercorn_config.graceful_timeout = config.server.drain_timeout
    hypercorn_config.keep_alive_timeout = config.server.keep_alive_timeout
    hypercorn_config.accesslog = None  # the app writes its own (``_logs.py``)
    hypercorn_config.errorlog = HTTP_LOGGER
    hypercorn_config.backlog = BACKLOG
    shutdown = trio.Event()
    fatal: list[BaseException] = []  # why the server must end once drained
    exit_code: list[int] = []  # set by a second signal
    with contextlib.ExitStack() as stack:
        signals: AsyncIterator[int] | None = None
        if handle_signals:  # before anything starts: a signal while loading drains too
            signals = stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
        async with trio.open_nursery() as http:
            watching = trio.CancelScope()  # the signal watcher
            closing = trio.CancelScope()  # the closer of connections that outlast the drain

            async def http_server(task_status: trio.TaskStatus[list[str]]) -> None:
                try:
                    await hypercorn_serve(
                        app,  # type: ignore[arg-type]
                        hypercorn_config,
                        shutdown_trigger=shutdown.wait,
                        task_status=task_status,
                    )
                finally:
                    watching.cancel()  # the server is down: nothing left to stop or close
                    closing.cancel()

            binds = await http.start(http_server)
            host, _, port = binds[0].removeprefix("http://").rpartition(":")
            handle = ServerHandle((host.strip("[]"), int(port)), pool, app)
            if signals is not None:
                # In the outer nursery: a second signal stops everything at any stage, the
                # HTTP server's graceful shutdown included.
                http.start_soon(_on_signal, signals, handle, http, exit_code, watching)
            local_port = int(port)
            if on_listening is not None:
                try:
                    on_listening(handle)
                except Exception:  # an observer only observes
                    logger.exception("on_listening raised; serving on")
            try:
                await _run_pool(pool, app, handle, fatal, task_status)
            finally:
                # The HTTP server stops accepting, lets each response in progress write its
                # end (the workers have stopped, so each has one) and closes idle connections;
                # what is still being written after drain_timeout more is cut.
                shutdown.set()
                http.start_soon(_close_stragglers, local_port, drain_timeout, closing)
    if exit_code:
        raise SystemExit(exit_code[0])
    if fatal:
        raise fatal[0]


async def _run_pool(
    pool: WorkerPool,
    app: App,
    handle: ServerHandle,
    fatal: list[BaseException],
    task_status: trio.TaskStatus[ServerHandle],
) -> None:
    """Start the pool, serve until a drain is asked for, drain, stop the workers."""
    drain_timeout = pool.config.server.drain_timeout
    async with trio.open_nursery() as workers:
        started = False
        async with trio.open_nursery() as starting:

            async def drain_first() -> None:
                await handle._drain_requested.wait()
                logger.info("drain asked for while the replicas start: stopping them")
                starting.cancel_scope.cancel()

            starting.start_soon(drain_first)
            await workers.start(pool.run)
            started = True
            starting.cancel_scope.cancel()
        if not started:  # drained before the pool was ready: it stopped its replicas already
            return
        workers.start_soon(_watch_models, pool, handle, fatal)
        app.ready = True
        task_status.started(handle)
        logger.debug("serving %s on %s", pool.models, handle.url)
        await handle._drain_requested.wait()
        logger.info("draining: in-flight requests get %gs", drain_timeout)
        with trio.move_on_after(drain_timeout):
            await pool.drain()
        workers.cancel_scope.cancel()


def _tracing(config: ServeConfig) -> list[Observer]:
    """The tracer, as an observer of requests, when ``[server] tracing`` is on."""
    if not config.server.tracing:
        return []
    from ._tracing import Tracing  # the ``otel`` extra: imported only when asked for

    return [Tracing().observe]


FD_MARGIN = 256
"""Descriptors kept beyond ``max_connections``: listeners, pipes to child processes, Ray's."""


def _make_room_for(max_connections: int) -> None:
    """Raise this process's soft limit on open descriptors (up to the hard one) so that
    ``max_connections`` connections and the server's own files fit: past the limit, ``accept``
    fails with EMFILE and fresh requests wait. A limit that cannot be raised enough is logged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_MARGIN
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the limit on open files to %d: %s", target, exc)
            target = soft
    if target < want:
        logger.warning(
            "the limit on open files (%d, hard limit %d) is below max_connections=%d + %d: "
            "lower [server] max_connections, or raise the limit (ulimit -n)",
            target, hard, max_connections, FD_MARGIN,
        )  # fmt: skip


async def _resolve(host: str, port: int) -> tuple[Any, ...]:
    """``(family, type, proto, canonname, sockaddr)`` to listen on ``host:port``: a name is
    resolved off the event loop (trio's getaddrinfo runs in a thread)."""
    infos = await trio.socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return tuple(infos[0])


def _bind(where: tuple[Any, ...], *, reuse_port: bool, send_timeout: float) -> str:
    """A listening socket of our own for ``where`` (from :func:`_resolve`), handed to
    hypercorn by fd.

    Every connection accepted on it inherits ``TCP_USER_TIMEOUT``: a client that takes none of
    the data sent to it for ``send_timeout`` seconds (it stopped reading, its window is shut) is
    disconnected by the kernel. Hypercorn shields its writes from cancellation and has no
    write timeout of its own, so without this one client that never reads would hold its
    request, its connection and the server's shutdown forever. With ``reuse_port``,
    ``SO_REUSEPORT`` too (hypercorn sets it only for its own worker processes).
    """
    family, kind, proto, _, address = where
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(send_timeout * 1000))
        sock.bind(address)
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


async def _close_stragglers(port: int, after: float, scope: trio.CancelScope) -> None:
    """Once the HTTP server has had ``after`` seconds to end its responses, shut down the
    connections it still writes to (a slow reader: hypercorn's writes are shielded from
    cancellation, so its own graceful timeout cannot end them)."""
    with scope:
        await trio.sleep(after)
        closed = _shut_connections(port)
        if closed:
            logger.warning("the drain cut %d connection(s) still being written to", closed)


def _shut_connections(port: int) -> int:
    """Shut down (both ways) every TCP connection this process accepted on ``port``: a write
    blocked on one then fails at once, and its task ends. Linux (``/proc/self/fd``); elsewhere
    nothing. Returns how many."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return 0
    closed = 0
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))  # a duplicate: closing it closes only it
        except OSError:
            continue
        with sock:
            try:
                if (
                    sock.family not in (socket.AF_INET, socket.AF_INET6)
                    or sock.type != socket.SOCK_STREAM
                    or sock.getsockname()[1] != port
                ):
                    continue
                sock.getpeername()  # a listening socket has no peer: OSError, left alone
                sock.shutdown(socket.SHUT_RDWR)
                closed += 1
            except OSError:
                continue
    return closed


async def _on_signal(
    signals: AsyncIterator[int],
    handle: ServerHandle,
    nursery: trio.Nursery,
    exit_code: list[int],
    watching: trio.CancelScope,
) -> None:
    """The first SIGTERM/SIGINT drains; a second one cancels ``nursery`` (everything), and
    ``serve`` raises ``SystemExit(128 + its number)``."""
    with watching:
        async for signum in signals:
            name = signal.Signals(signum).name
            if handle._drain_requested.is_set():
                logger.info("%s during the drain: stopping at once", name)
                exit_code.append(128 + signum)
                nursery.cancel_scope.cancel()
                _shut_connections(handle.address[1])  # writes shielded from the cancel end too
                return
            logger.info("%s: draining", name)
            handle.drain()
