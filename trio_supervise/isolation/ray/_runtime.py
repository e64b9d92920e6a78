"""The Ray runtime this process uses: joined or started once, shared, left by its last user.

:func:`ray_runtime` is Ray for a block: the Ray this process joined already (an application's
own ``ray.init``, kept as it is), else the cluster at an address or ``RAY_ADDRESS``, else a
local one on loopback. What it started is shut down when its last user leaves (the count is
:data:`RUNTIME`'s). :func:`import_ray` names the extra to install when Ray is missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, final

import trio

from ..._errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["LOOPBACK_ENV", "RUNTIME", "SharedRuntime", "import_ray", "ray_runtime"]

logger = logging.getLogger("trio_supervise")

RAY_EXTRA = "pip install 'trio-supervise[ray]'"


def import_ray() -> ModuleType:
    """``import ray``, or a ConfigError that names the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"isolation='ray' needs Ray: {RAY_EXTRA} ({exc})") from exc
    return ray


LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}
"""Ray's settings for a local Ray started here: its worker processes (the actors) at niceness 0.
Ray starts them at 15; with two busy processes on 2 cores, an actor then streams at 0.05 of a
child process's tokens/s (1.04 at niceness 0). On a cluster: ``RAY_worker_niceness=0 ray start``."""

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to ``0`` before Ray is imported, Ray's switch for a one-node instance: it then binds and
advertises 127.0.0.1 (``_node_ip_address="127.0.0.1"`` alone is resolved to the machine's
address by Ray 2.x)."""


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


@final
class SharedRuntime:
    """Ray in this process, counted: joined (or started) by its first user, left by its last.

    Each method blocks (``ray.init`` takes seconds): call them in a thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.users = 0
        """The blocks of :func:`ray_runtime` in this process that use Ray now."""
        self._started_here = False

    def join(self, address: str | None) -> None:
        """Use Ray: the one joined already, else join ``address`` (or ``RAY_ADDRESS``), else
        start a local one on loopback; one more user."""
        local = address is None and not os.environ.get("RAY_ADDRESS")
        imported = "ray" in sys.modules
        if local and not imported:
            os.environ.setdefault(LOOPBACK_ENV, "0")  # read by Ray at import, here and in nodes
        ray = import_ray()
        with self._lock:
            if not ray.is_initialized():
                if local:
                    if imported and os.environ.get(LOOPBACK_ENV) != "0":
                        logger.warning(
                            "Ray was imported before a worker started a local Ray: it listens "
                            "on this machine's address, not only on loopback (set %s=0 before "
                            "importing Ray, or call ray.init yourself)", LOOPBACK_ENV,
                        )  # fmt: skip
                    # A local Ray of our own: on loopback, no dashboard, nothing reachable
                    # from away; its workers (the actors) at the niceness of everything else,
                    # not Ray's 15, under which a busy machine starves them.
                    # (A Ray already running on this machine is not joined: only an address
                    # or RAY_ADDRESS says to.)
                    ray.init(address="local", _node_ip_address="127.0.0.1",
                             include_dashboard=False,
                             _system_config=LOCAL_SYSTEM_CONFIG)  # fmt: skip
                else:
                    _join_cluster(ray, address)
                self._started_here = True
            self.users += 1

    def leave(self) -> None:
        """One user less; the last one shuts down a Ray that :meth:`join` started."""
        ray = import_ray()
        with self._lock:
            self.users -= 1
            if self.users == 0 and self._started_here:
                self._started_here = False
                ray.shutdown()


RUNTIME = SharedRuntime()
"""This process's Ray, as the workers of this process share it."""


def _join_cluster(ray: ModuleType, address: str | None) -> None:
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


@contextlib.asynccontextmanager
async def ray_runtime(address: str | None) -> AsyncIterator[None]:
    """Ray for the body: the one this process joined already (an app's own ``ray.init``, kept
    as it is), else the cluster at ``address`` or ``RAY_ADDRESS``, else a local one on loopback.

    What it started is shut down when its last user leaves. ``ray.init`` runs in a thread: it
    takes seconds, and there it installs no Python signal handler over the application's; the
    handlers Ray's C++ core installs for SIGTERM and SIGINT are taken back after it.
    """
    try:
        await trio.to_thread.run_sync(RUNTIME.join, address)
    finally:  # a failed join may have started Ray's core, and its handlers, all the same
        _reclaim_termination_signals()
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(RUNTIME.leave)
