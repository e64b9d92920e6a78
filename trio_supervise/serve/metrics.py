"""Prometheus metrics of one ``serve``: its own registry, names prefixed ``trio_supervise_``.

Two kinds:

* **Per request**, vLLM's set under our prefix (``docs/serving.md`` maps each name to vLLM's):
  latency histograms (end to end, time to first token, between tokens, queued), token
  counters, requests by outcome and by finish reason, and the requests running and waiting now.
  :meth:`Metrics.observe` takes each finished request (an ``Exchange``) after its answer.
* **What only a supervisor knows**: restarts by cause, re-queued and continued requests,
  continuation mismatches, resumes, CUDA errors by status, and the time from a failure to READY.
  The counters are read from each replica's ``SlotTotals`` when scraped (the counts of every
  worker the slot has run, so they never go down when the pool replaces a worker); the time to
  READY is observed from the supervision events (:meth:`Metrics.on_event`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..supervision import EventKind, SupervisionEvent
from ..tier._breaker import BreakerState
from ..tier._continuation import CONTINUATION_MODES

if TYPE_CHECKING:
    from ._exchange import Exchange
    from .pool import WorkerPool

__all__ = ["Metrics"]

P = "trio_supervise_"

_BREAKER_LEVELS = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

FAST = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
        7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)  # fmt: skip
"""Buckets for the time to a first token and the time queued: vLLM's, from a millisecond."""
BETWEEN_TOKENS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                  0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
"""Buckets for the time between tokens: vLLM's, from half a millisecond."""
WHOLE = (0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
         20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
"""Buckets for a request end to end: vLLM's, from five milliseconds."""
RECOVERY = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
            600.0)  # fmt: skip
"""Buckets for the time from a failure to READY (a fresh process loading a model: minutes)."""


@final
class Metrics:
    """The server's metrics (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            P + "requests", "Requests by model and outcome (finished, cancelled, or the error)",
            ["model", "outcome"], registry=r,
        )  # fmt: skip
        self.success = Counter(
            P + "request_success", "Choices that ended normally, by finish reason",
            ["model", "finished_reason"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            P + "prompt_tokens", "Prompt tokens of the requests answered", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            P + "generation_tokens", "Tokens generated for the requests answered", ["model"],
            registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            P + "e2e_request_latency_seconds", "Seconds from a request's arrival to its end",
            ["model"], buckets=WHOLE, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            P + "time_to_first_token_seconds",
            "Seconds from a request's arrival to its first token",
            ["model"], buckets=FAST, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            P + "inter_token_latency_seconds", "Seconds between a stream's chunks, sent as they "
            "came", ["model"], buckets=BETWEEN_TOKENS, registry=r,
        )  # fmt: skip
        self.queue_time = Histogram(
            P + "request_queue_time_seconds", "Seconds a request waited before a replica took it",
            ["model"], buckets=FAST, registry=r,
        )  # fmt: skip
        self.running = Gauge(
            P + "num_requests_running", "Requests in a batch on a tier now", ["model"], registry=r
        )
        self.waiting = Gauge(
            P + "num_requests_waiting", "Requests queued now (the pool's queue and the workers')",
            ["model"], registry=r,
        )  # fmt: skip
        self.generation = Gauge(
            P + "worker_generation", "Tier incarnations of the worker in each slot", ["worker"],
            registry=r,
        )  # fmt: skip
        self.state = Gauge(P + "worker_ready", "1 when the worker is READY", ["worker"], registry=r)
        self.pending = Gauge(
            P + "queue_depth", "Batches waiting for each worker", ["worker"], registry=r
        )
        self.in_flight = Gauge(
            P + "in_flight", "Batches running on each worker", ["worker"], registry=r
        )
        self.breaker = Gauge(
            P + "circuit_breaker_state",
            "A remote runner's circuit breaker: 0 closed, 1 half-open, 2 open", ["worker"],
            registry=r,
        )  # fmt: skip
        self.restart_seconds = Histogram(
            P + "restart_seconds", "Seconds from a worker's failure to READY again", ["worker"],
            buckets=RECOVERY, registry=r,
        )  # fmt: skip
        self._failed_at: dict[str, float] = {}  # a worker's failure, until it is READY again
        self._pool: WorkerPool | None = None
        r.register(_SlotCounters(self))

    # --- requests -----------------------------------------------------------------------------

    def observe(self, exchange: Exchange) -> None:
        """A request has been answered (an observer of ``Exchange``: see ``_exchange.py``)."""
        if not exchange.generating:
            return
        model = exchange.model
        self.requests.labels(model or "?", exchange.outcome).inc()  # "?": refused before known
        if model is None:
            return
        for reason in exchange.finish_reasons:
            self.success.labels(model, reason).inc()
        self.prompt_tokens.labels(model).inc(exchange.prompt_tokens)
        self.generation_tokens.labels(model).inc(exchange.completion_tokens)
        if not exchange.streams:
            return  # refused before it reached the pool
        self.e2e.labels(model).observe(exchange.duration)
        first = exchange.first_chunk_at
        if first is not None:
            self.ttft.labels(model).observe(first - exchange.started)
        for stream in exchange.streams:
            if stream.dispatches:
                self.queue_time.labels(model).observe(stream.dispatches[0][0] - stream.admitted_at)
        if exchange.chunk_gaps:
            itl = self.itl.labels(model)
            for gap in exchange.chunk_gaps:
                itl.observe(gap)

    # --- supervision --------------------------------------------------------------------------

    def on_event(self, event: SupervisionEvent) -> None:
        """A supervision event of the pool (an ``on_event`` observer): times each recovery."""
        if event.kind is EventKind.FAILED:
            self._failed_at.setdefault(event.child, event.time)
        elif event.kind is EventKind.READY:
            failed = self._failed_at.pop(event.child, None)
            if failed is not None:
                self.restart_seconds.labels(event.child).observe(event.time - failed)

    # --- the page -----------------------------------------------------------------------------

    def render(self, pool: WorkerPool) -> tuple[bytes, str]:
        """The exposition text, with the gauges and the slots' counters read now."""
        for model in pool.models:
            running, waiting = pool.requests_now(model)
            self.running.labels(model).set(running)
            self.waiting.labels(model).set(waiting)
        for status in pool.statuses():
            name = status["name"]
            self.generation.labels(name).set(status["generation"])
            self.state.labels(name).set(1 if status["state"] == "ready" else 0)
            self.pending.labels(name).set(status["pending"])
            self.in_flight.labels(name).set(status["in_flight"])
            if status["breaker"] is not None:
                self.breaker.labels(name).set(_BREAKER_LEVELS[BreakerState(status["breaker"])])
        self._pool = pool  # what the slots' counters are read from
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


@final
class _SlotCounters(Collector):
    """The supervisor's counters, read from each replica's totals at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        pool = self._metrics._pool
        families = {
            "tokens": CounterMetricFamily(
                P + "worker_tokens", "Tokens delivered by the workers of each slot",
                labels=["worker"]),
            "batches": CounterMetricFamily(
                P + "worker_batches", "Batches dispatched to the workers of each slot",
                labels=["worker"]),
            "restarts": CounterMetricFamily(
                P + "worker_restarts", "Counted tier restarts and worker replacements, by the "
                "class of the error that caused them", labels=["worker", "cause"]),
            "requeued": CounterMetricFamily(
                P + "requests_requeued", "Request runs queued again after a restart",
                labels=["worker"]),
            "continued": CounterMetricFamily(
                P + "requests_continued", "Request runs that continued a stream cut by a "
                "failure, by mode (replay, resume)", labels=["worker", "mode"]),
            "mismatched": CounterMetricFamily(
                P + "continuation_mismatch", "Replays that differed from what was delivered "
                "(each ended with ContinuationMismatch)", labels=["worker"]),
            "resumes": CounterMetricFamily(
                P + "batches_resumed", "Uncounted tier restarts (RESUME, an operator's "
                "restart), by the class of their error", labels=["worker", "cause"]),
            "cuda": CounterMetricFamily(
                P + "cuda_errors", "Tier failures that were CUDA errors, by CUDA status",
                labels=["worker", "code"]),
        }  # fmt: skip
        if pool is not None:
            for replicas in pool.replicas.values():
                for replica in replicas:
                    name, totals = replica.name, replica.totals()
                    families["tokens"].add_metric([name], totals.tokens)
                    families["batches"].add_metric([name], totals.batches)
                    families["requeued"].add_metric([name], totals.requeued)
                    families["mismatched"].add_metric([name], totals.mismatched)
                    for mode in CONTINUATION_MODES:
                        families["continued"].add_metric([name, mode], totals.continued[mode])
                    for key, counts in (
                        ("restarts", totals.restarts),
                        ("resumes", totals.resumes),
                        ("cuda", totals.cuda_errors),
                    ):
                        for label, count in sorted(counts.items()):
                            families[key].add_metric([name, label], count)  # fmt: skip
        yield from families.values()
