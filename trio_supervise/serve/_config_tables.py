"""The tables of a serve config: ``[server]``, ``[batching]``, ``[[workers]]`` and its policy.

Frozen attrs classes with their defaults (``docs/serving.md`` documents each key);
:class:`~trio_supervise.serve.config.ServeConfig` reads them from TOML and checks every value.
"""

from __future__ import annotations

from typing import Any, final

import attrs

from ..supervision import Backoff, Policy, RestartIntensity

__all__ = ["BackoffConfig", "BatchingConfig", "PolicyConfig", "ServerConfig", "WorkerConfig"]


@final
@attrs.frozen
class BackoffConfig:
    """``[workers.policy.backoff]``: the delay before each restart."""

    initial: float = 0.0
    maximum: float = 0.0
    multiplier: float = 2.0
    jitter: float = 0.0


@final
@attrs.frozen
class PolicyConfig:
    """``[workers.policy]``: fields that override the runner's default policy."""

    max_restarts: int | None = None
    within: float | None = None
    backoff: BackoffConfig | None = None

    def apply(self, base: Policy) -> Policy:
        """``base`` with these fields overridden."""
        intensity = base.intensity
        if self.max_restarts is not None or self.within is not None:
            intensity = RestartIntensity(
                intensity.max_restarts if self.max_restarts is None else self.max_restarts,
                intensity.within if self.within is None else self.within,
            )
        backoff = base.backoff
        if self.backoff is not None:
            b = self.backoff
            backoff = Backoff(b.initial, b.maximum, b.multiplier, b.jitter)
        return attrs.evolve(base, intensity=intensity, backoff=backoff)


@final
@attrs.frozen
class WorkerConfig:
    """``[[workers]]``: one model, served by ``replicas`` workers."""

    name: str
    """The worker's name, and the ``model`` clients ask for."""
    runner: str
    """The runner factory's import path, ``"module:factory"``."""
    runner_args: dict[str, Any] = attrs.Factory(dict)
    device: str = "auto"
    replicas: int = 1
    replica_args: tuple[dict[str, Any], ...] = ()
    """Per-replica runner arguments, merged over ``runner_args`` (a backend per replica); when
    given, there is one replica per entry."""
    isolation: str = "inline"
    """``"inline"``, ``"process"`` or ``"ray"`` (an actor on a Ray cluster)."""
    standby: bool = False
    standby_load: bool = False
    ray_options: dict[str, Any] = attrs.Factory(dict)
    """With ``isolation = "ray"``: the actor's options (``num_gpus``, ``resources``, ...)."""
    ray_address: str | None = None
    """With ``isolation = "ray"``: the cluster to join (default: ``RAY_ADDRESS``, else a local
    Ray); one per server."""
    ray_frames: str = "direct"
    """With ``isolation = "ray"``: ``"direct"`` (a TCP connection to the actor) or ``"ray"``."""
    max_pending: int = 1024
    max_attempts: int = 2
    readiness_timeout: float | None = None
    hang_timeout: float | None = None
    policy: PolicyConfig | None = None
    max_model_len: int | None = None
    """The largest ``max_tokens`` a request may ask for (a 400 past it); None: the runner's own
    ``max_model_len`` attribute (an inline runner's), else 4096. A runner that can count the
    prompt also checks prompt plus completion against its own (``CharLM``: 4096)."""

    @property
    def replica_count(self) -> int:
        """How many replicas: one per ``replica_args`` entry, else ``replicas``."""
        return len(self.replica_args) or self.replicas

    def args_of(self, index: int) -> dict[str, Any]:
        """The runner arguments of replica ``index``."""
        extra = self.replica_args[index] if self.replica_args else {}
        return {**self.runner_args, **extra}


@final
@attrs.frozen
class ServerConfig:
    """``[server]``."""

    host: str = "127.0.0.1"
    port: int = 8000
    drain_timeout: float = 30.0
    request_timeout: float = 60.0
    max_worker_restarts: int = 10
    within: float = 60.0
    reuse_port: bool = False
    """Bind with ``SO_REUSEPORT``, so that several ``serve`` processes share one port and the
    kernel spreads connections over them (one process is bound by one core)."""
    body_timeout: float = 30.0
    """Seconds a client has to send a request's whole body once its headers arrived; past it,
    408 and the connection closes."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle connection (or one whose headers are still arriving) stays open."""
    max_connections: int = 1000
    """Requests served at once (health, readiness and metrics probes aside); one over it gets a
    503 with ``Connection: close`` at once."""
    send_timeout: float = 30.0
    """Seconds a client may take none of the data sent to it (it stopped reading) before its
    connection is dropped (``TCP_USER_TIMEOUT``)."""
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    """Keys a client may send as ``Authorization: Bearer <key>`` (with ``api_key_file`` and the
    ``TRIO_SUPERVISE_API_KEY`` environment variable: any of them); none anywhere: no key asked
    for. Never shown: not in a repr, an error, ``config check`` or a log."""
    api_key_file: str | None = None
    """A file of keys, one per line (blank lines and ``#`` comments left out), read as the
    server starts."""
    metrics_need_key: bool = False
    """``/metrics`` asks for a key too (by default a scraper reads it without one)."""
    tracing: bool = False
    """A span per request to OpenTelemetry's tracer provider (the ``otel`` extra)."""


@final
@attrs.frozen
class BatchingConfig:
    """``[batching]``: the dynamic batcher flushes at ``max_batch_size`` or ``max_wait``."""

    max_batch_size: int = 32
    max_wait: float = 0.005
