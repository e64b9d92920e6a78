"""Serving a worker pool over HTTP: ``trio.run(serve, config)``.

:func:`~trio_supervise.serve.server.serve` runs a
:class:`~trio_supervise.serve.pool.WorkerPool` (replicas of each configured model under one root
supervisor, a batcher and a router) behind an OpenAI-style HTTP front end; its configuration is
a :class:`ServeConfig`, read from TOML.
"""

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
    "serve",
]
