"""OpenTelemetry tracing of the generating requests (``[server] tracing = true``; the ``otel``
extra).

A span per completion or chat, written once the answer has ended, from what the request's
``Exchange`` recorded, with each event at the time it happened: ``queued`` (one per choice),
``dispatched`` (the replica and its worker's generation), ``first_token``, ``restart`` (a run cut
by a failure: its tier restarted, or its replica was left), ``continuation`` (the next run goes
on from what was delivered), ``end``. Its status is an error when the request failed. The spans
go to the tracer provider the application set (``opentelemetry.trace.set_tracer_provider``, or
``opentelemetry-instrument``'s from the ``OTEL_*`` environment).
"""

from __future__ import annotations

from typing import Any, final

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..openai import version_body
from ._exchange import Exchange

__all__ = ["Tracing"]


@final
class Tracing:
    """Writes a span for each answered generating request (an observer of ``Exchange``)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("trio_supervise", version_body()["version"], provider)

    def observe(self, exchange: Exchange) -> None:
        """The span of one answered request (none for other routes)."""
        if not exchange.generating:
            return

        def ns(at: float) -> int:
            return int(exchange.wall(at) * 1e9)

        span = self._tracer.start_span(
            f"{exchange.method} {exchange.path}",
            kind=SpanKind.SERVER,
            start_time=ns(exchange.started),
            attributes={
                "http.request.method": exchange.method,
                "url.path": exchange.path,
                "http.response.status_code": exchange.status or 0,
                "trio_supervise.request_id": exchange.request_id,
                "gen_ai.request.model": exchange.model or "",
                "gen_ai.usage.input_tokens": exchange.prompt_tokens,
                "gen_ai.usage.output_tokens": exchange.completion_tokens,
                "trio_supervise.outcome": exchange.outcome,
            },
        )
        events: list[tuple[float, str, dict[str, Any]]] = []
        for choice, stream in enumerate(exchange.streams):
            events.append((stream.admitted_at, "queued", {"choice": choice}))
            for at, replica, generation in stream.dispatches:
                events.append((at, "dispatched", {"choice": choice, "replica": replica,
                                                  "generation": generation}))  # fmt: skip
            for at, run in stream.reruns:
                continued = run == "continued"
                events.append((at, "restart", {"choice": choice, "continued": continued}))
                if continued:
                    events.append((at, "continuation", {"choice": choice}))
        first = exchange.first_chunk_at
        if first is not None:
            events.append((first, "first_token", {}))
        ended = exchange.ended if exchange.ended is not None else exchange.started
        events.append((ended, "end", {"outcome": exchange.outcome}))
        events.sort(key=lambda event: event[0])  # stable: at one time, in the order above
        for at, name, attributes in events:
            span.add_event(name, attributes, ns(at))
        if exchange.error is not None:
            span.set_status(Status(StatusCode.ERROR, type(exchange.error).__name__))
        span.end(end_time=ns(ended))
