"""Prometheus metrics of one ``serve``: its own registry, names prefixed ``trio_supervise_``."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..tier._breaker import BreakerState

if TYPE_CHECKING:
    from .pool import WorkerPool

__all__ = ["Metrics"]

_BREAKER_LEVELS = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@final
class Metrics:
    """Counters and gauges for requests, restarts, workers, queues and tokens."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "trio_supervise_requests", "Requests by model and outcome", ["model", "outcome"],
            registry=r,
        )  # fmt: skip
        self.generation = Gauge(
            "trio_supervise_worker_generation", "Tier incarnations of each worker", ["worker"],
            registry=r,
        )  # fmt: skip
        self.state = Gauge(
            "trio_supervise_worker_ready", "1 when the worker is READY", ["worker"], registry=r
        )
        self.restarts = Gauge(
            "trio_supervise_worker_restarts", "Tier restarts by worker and cause",
            ["worker", "cause"], registry=r,
        )  # fmt: skip
        self.pending = Gauge(
            "trio_supervise_queue_depth", "Batches waiting for each worker", ["worker"], registry=r
        )
        self.in_flight = Gauge(
            "trio_supervise_in_flight", "Batches running on each worker", ["worker"], registry=r
        )
        self.tokens = Gauge(
            "trio_supervise_tokens", "Tokens delivered by each worker", ["worker"], registry=r
        )
        self.breaker = Gauge(
            "trio_supervise_circuit_breaker_state",
            "A remote runner's circuit breaker: 0 closed, 1 half-open, 2 open", ["worker"],
            registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "trio_supervise_time_to_first_token_seconds", "Time to first token (streams)",
            ["model"], registry=r,
        )  # fmt: skip

    def finished(self, model: str, seconds: float) -> None:
        """A request finished."""
        self.requests.labels(model, "finished").inc()

    def failed(self, model: str, error: BaseException) -> None:
        """A request failed with ``error``."""
        self.requests.labels(model, type(error).__name__).inc()

    def first_token(self, model: str, seconds: float) -> None:
        """A stream sent its first chunk."""
        self.ttft.labels(model).observe(seconds)

    def render(self, pool: WorkerPool) -> tuple[bytes, str]:
        """The exposition text, with the workers' gauges read now."""
        for status in pool.statuses():
            name = status["name"]
            self.generation.labels(name).set(status["generation"])
            self.state.labels(name).set(1 if status["state"] == "ready" else 0)
            self.pending.labels(name).set(status["pending"])
            self.in_flight.labels(name).set(status["in_flight"])
        for replicas in pool.replicas.values():
            for replica in replicas:
                worker = replica.worker
                if worker is not None:
                    stats = worker.statistics()
                    self.tokens.labels(replica.name).set(stats.tokens)
                    if stats.breaker is not None:
                        level = _BREAKER_LEVELS[stats.breaker]
                        self.breaker.labels(replica.name).set(level)
                    for cause, count in worker.restart_causes.items():
                        self.restarts.labels(replica.name, cause).set(count)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
