"""Serving a worker pool: its configuration (the HTTP front end and the pool come next)."""

from .config import (
    BackoffConfig,
    BatchingConfig,
    PolicyConfig,
    ServeConfig,
    ServerConfig,
    WorkerConfig,
)

__all__ = [
    "BackoffConfig",
    "BatchingConfig",
    "PolicyConfig",
    "ServeConfig",
    "ServerConfig",
    "WorkerConfig",
]
