"""Serving a worker pool over HTTP: ``trio.run(serve, config)``.

:func:`~trio_supervise.serve.server.serve` runs a
:class:`~trio_supervise.serve.pool.WorkerPool` (replicas of each configured model under one root
supervisor, a batcher and a router) behind an OpenAI-style HTTP front end; its configuration is
a :class:`ServeConfig`, read from TOML.

* ``config`` (``_config_tables``, ``_config_reading``, ``_config_checks``): the TOML, read into
  typed tables in one pass, every problem reported at its key.
* ``pool`` (``_replica``, ``_routing``): replicas under one root supervisor, each a worker built
  from its ``WorkerOptions``; per model, a queue, a batcher and the least loaded ready replica.
* ``app`` (``_asgi``): the ASGI app, speaking the OpenAI codec (``trio_supervise.openai``).
* ``server``: the listening socket, hypercorn, signals and drains.
* What it tells (``_exchange``: each request's record, handed to its observers once answered):
  ``metrics`` (Prometheus), ``_logs`` (supervision events and an access log), ``_tracing``
  (OpenTelemetry, optional).
"""

from ._logs import configure_logging
from .config import (
    BackoffConfig,
    BatchingConfig,
    PolicyConfig,
    ServeConfig,
    ServerConfig,
    WorkerConfig,
)
from .pool import ModelNotFound, PoolStream, WorkerPool
from .server import ServerHandle, serve

__all__ = [
    "BackoffConfig",
    "BatchingConfig",
    "ModelNotFound",
    "PolicyConfig",
    "PoolStream",
    "ServeConfig",
    "ServerConfig",
    "ServerHandle",
    "WorkerConfig",
    "WorkerPool",
    "configure_logging",
    "serve",
]
