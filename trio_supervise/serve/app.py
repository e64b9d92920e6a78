"""The HTTP front end: a small raw-ASGI app over a :class:`~.pool.WorkerPool`
(run by hypercorn on Trio).

Routes: ``POST /v1/completions`` (OpenAI-style, streamed as server-sent events when asked),
``GET /v1/models``, ``GET /v1/workers``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.
Everything a request carries is checked here, at the edge, against what every tier can carry
(integers within 64 bits, text that is valid UTF-8, ``max_tokens`` within the model's
``max_model_len``): a malformed body is a 4xx that names the field and never reaches a worker.
A body must be ``application/json`` (else 415), arrive within ``[server] body_timeout`` (else
408), and be framed one way (``Content-Length`` with ``Transfer-Encoding`` is a 400 and the
connection closes). Past ``[server] max_connections`` requests at once, a 503 closes the
connection at once.

A response is written with the raw ASGI ``send`` while a sibling task waits for
``http.disconnect``: a client that goes away cancels its request at once (streamed or whole), so
an abandoned request stops using the device. The disconnect cancels only the work; the last
``send`` of a response is never cancelled by it (hypercorn delivers the disconnect of an HTTP/1.0
or ``Connection: close`` response from inside that ``send``, and cancelling it would leave the
connection open).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, final

import msgspec
import trio

from .._errors import (
    Backpressure,
    BadRequest,
    CircuitOpen,
    ContextPoisoned,
    InferenceError,
    NetworkError,
    OutOfMemory,
    RateLimited,
    RequestTimeout,
    ServerError,
    Unauthorized,
    Unrecoverable,
    WorkerStopped,
    shown,
)
from .._types import FinishReason, Request, SamplingParams
from .metrics import Metrics
from .pool import ModelNotFound, WorkerPool

__all__ = ["App", "error_status"]

logger = logging.getLogger("trio_supervise")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY = 1024 * 1024

INT64 = (-(2**63), 2**63 - 1)
"""The integers every tier can carry (msgpack to a child process, Ray, a remote backend)."""

MAX_STOP = 4
"""Stop sequences a request may give (OpenAI's limit)."""

_decode = msgspec.json.Decoder().decode  # refuses lone surrogates and over 4,300-digit integers

_encode = msgspec.json.Encoder().encode  # about 8x the stdlib's speed for an event


def error_status(error: BaseException) -> tuple[int, float | None]:
    """The HTTP status for an error, and its Retry-After (seconds) when one is due."""
    if isinstance(error, ModelNotFound):
        return 404, None
    if isinstance(error, BadRequest):
        return 400, None
    if isinstance(error, Backpressure | RateLimited):
        return 429, error.retry_after or 1.0
    if isinstance(error, ServerError | NetworkError | Unauthorized):
        return 502, None  # the backend failed, not this server
    if isinstance(error, RequestTimeout):
        return 504, None
    if isinstance(error, Unrecoverable):
        return 503, None
    if isinstance(error, ContextPoisoned | OutOfMemory | WorkerStopped | CircuitOpen):
        return 503, error.retry_after or 1.0
    return 500, None


def error_body(error: BaseException, status: int) -> dict[str, Any]:
    """The error object: typed errors say what happened; others are logged, not echoed."""
    if isinstance(error, InferenceError) and status != 500:
        message, retryable = str(error), error.retryable
    else:
        message, retryable = "internal error (logged on the server)", False
    return {
        "error": {
            "message": message,
            "type": type(error).__name__ if status != 500 else "InternalError",
            "code": status,
            "retryable": retryable,
        }
    }


def parse_completion(body: bytes) -> tuple[dict[str, Any], SamplingParams]:
    """A completion request's fields, checked; a BadRequest names the field and says what was
    expected and what was got. ``max_tokens`` is checked against the model's limit later."""
    try:
        data = _decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        if "truncated" in reason and _only_surrogates_wrong(body):
            reason = "a string holds a lone UTF-16 surrogate (such as \\ud800), not Unicode"
        raise BadRequest(f"the body must be a JSON object: {reason}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(data).__name__}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest(f"prompt must be a string, got {shown(prompt)}")
    _field_int(data, "n", 1, 1, 1)  # one choice per request
    stop = data.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise BadRequest(f"stop must be a non-empty string or a list of them, got {shown(stop)}")
    if len(stop) > MAX_STOP:
        raise BadRequest(f"stop may hold at most {MAX_STOP} sequences, got {len(stop)}")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"model must be a string, got {shown(model)}")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, got {shown(stream)}")
    continuation = data.get("continuation", "auto")
    if continuation not in ("auto", "replay", "resume", "off"):
        raise BadRequest(
            f"continuation must be 'auto', 'replay', 'resume' or 'off', got {shown(continuation)}"
        )
    max_tokens = _field_int(data, "max_tokens", 16, 1, INT64[1])
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_field_number(data, "temperature", 1.0, 0.0, 2.0),
        top_p=_field_number(data, "top_p", 1.0, 0.0, 1.0),
        seed=_field_int(data, "seed", None, *INT64),
        stop=tuple(stop),
    )
    return {
        "prompt": prompt,
        "model": model,
        "stream": stream,
        "continuation": continuation,
    }, params


def _only_surrogates_wrong(body: bytes) -> bool:
    """Whether the stdlib's parser, which lets lone surrogates through, reads what msgspec
    refused (msgspec's own message for one is "Input data was truncated")."""
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def _field_int(data: dict[str, Any], key: str, default: Any, low: int, high: int) -> Any:
    """An integer field (not a bool, not a float) within ``[low, high]``, or its default."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise BadRequest(f"{key} must be an integer in [{low}, {high}], got {shown(value)}")
    return value


def _field_number(data: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """A number field (an int or a float, not a bool) within ``[low, high]``, or its default."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key} must be a number, got {shown(value)}")
    if not low <= value <= high:  # exact for any int, and false for NaN
        raise BadRequest(f"{key} must be a number in [{low:g}, {high:g}], got {shown(value)}")
    return float(value)


@final
class App:
    """The ASGI application (one per ``serve``)."""

    def __init__(self, pool: WorkerPool, metrics: Metrics) -> None:
        self.pool = pool
        self.metrics = metrics
        self.server = pool.config.server
        self.ready = False  # every model has a READY replica, once the pool started
        self.open_requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        headers = dict(scope.get("headers", ()))
        if b"transfer-encoding" in headers and b"content-length" in headers:
            # Two framings: a proxy may read the body one way and this server another (request
            # smuggling). Refuse, and close the connection so nothing after it is read.
            framing = "a request may not have both Content-Length and Transfer-Encoding"
            await self._refuse(receive, send, 400, _error_object(framing, "BadRequest", 400))
            return
        routes = {
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics_page,
            ("GET", "/v1/models"): self.models,
            ("GET", "/v1/workers"): self.workers,
            ("POST", "/v1/completions"): self.completions,
        }
        handler = routes.get((method, path))
        if handler is None:
            known = any(p == path for _, p in routes)
            status = 405 if known else 404
            await _json(send, status, _error_object(f"no route {method} {path}", "NotFound",
                                                    status))  # fmt: skip
            return
        if path in _PROBES:  # an orchestrator's probes and scrapes are answered under any load
            await handler(scope, receive, send)
            return
        if self.open_requests >= self.server.max_connections:
            busy = f"the server is serving {self.server.max_connections} requests already"
            error = _error_object(busy, "Overloaded", 503, retryable=True)
            await self._refuse(receive, send, 503, error, [(b"retry-after", b"1")], patience=1.0)
            return
        self.open_requests += 1
        try:
            await handler(scope, receive, send)
        finally:
            self.open_requests -= 1

    def is_ready(self) -> bool:
        """Every model has a READY replica and the server is not draining."""
        pool = self.pool
        if not self.ready or pool.draining:
            return False
        return all(any(r.ready for r in replicas) for replicas in pool.replicas.values())

    async def healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _json(send, 200, {"status": "alive"})

    async def readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        ready = self.is_ready()
        status = "draining" if self.pool.draining else "ready" if ready else "loading"
        await _json(send, 200 if ready else 503, {"status": status})

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = [{"id": name, "object": "model"} for name in self.pool.models]
        await _json(send, 200, {"object": "list", "data": data})

    async def workers(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _json(send, 200, {"workers": self.pool.statuses()})

    async def metrics_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, content_type = self.metrics.render(self.pool)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = dict(scope.get("headers", ())).get(b"content-type", b"")
        if content_type.split(b";")[0].strip().lower() != b"application/json":
            # Also what keeps a browser's cross-site form or text/plain post out.
            got = shown(content_type.decode("latin-1"))
            message = f"the body must be application/json, got {got}"
            error = _error_object(message, "UnsupportedMediaType", 415)
            await self._refuse(receive, send, 415, error)
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        model = "?"
        try:
            fields, params = parse_completion(body)
            model = self.pool.model_for(fields["model"])
            if self.pool.draining:
                raise WorkerStopped("the server is draining", retry_after=1.0)
            limit = self.pool.max_model_len[model]
            if params.max_tokens > limit:
                raise BadRequest(
                    f"max_tokens must be at most {limit} (the max_model_len of model "
                    f"{model!r}), got {params.max_tokens}"
                )
            request = Request(
                f"cmpl-{uuid.uuid4().hex[:24]}", fields["prompt"], params,
                continuation=fields["continuation"],
            )  # fmt: skip
            stream = self.pool.generate(request, model)
        except InferenceError as exc:
            await self._error(send, exc, model)
            return
        started = trio.current_time()
        if fields["stream"]:
            await self._stream(receive, send, stream, model, started)
        else:
            await self._whole(receive, send, stream, model, started)

    async def _refuse(
        self,
        receive: Receive,
        send: Send,
        status: int,
        body: dict[str, Any],
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        patience: float | None = None,
    ) -> None:
        """Answer before the request was read, and close the connection (its body is dropped
        first, within ``patience``, default ``body_timeout``)."""
        await self._drop_body(receive, patience)
        await _json(send, status, body, [*(headers or []), *_CLOSE])

    async def _drop_body(self, receive: Receive, patience: float | None = None) -> None:
        """Read and drop the rest of a request's body (as framed by the HTTP parser), up to
        ``4 * MAX_BODY`` within ``patience`` (default ``body_timeout``), before an answer that
        closes the connection: hypercorn closing a connection whose body is unread while more
        requests are pipelined behind it races its own writer and sends nothing."""
        size = 0
        with trio.move_on_after(self.server.body_timeout if patience is None else patience):
            while size <= 4 * MAX_BODY:
                message = await receive()
                size += len(message.get("body", b""))
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    return

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once the client left or was answered (too big, too slow)."""
        parts: list[bytes] = []
        size = 0
        with trio.move_on_after(self.server.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                part = message.get("body", b"")
                size += len(part)
                if size > MAX_BODY:
                    if message.get("more_body"):
                        await self._drop_body(receive)
                    error = BadRequest(f"the body is over {MAX_BODY} bytes")
                    await self._error(send, error, "?", headers=_CLOSE)
                    return None
                parts.append(part)
                if not message.get("more_body"):
                    return b"".join(parts)
        late = f"the body did not arrive within {self.server.body_timeout:g}s"
        await _json(send, 408, _error_object(late, "RequestTimeout", 408), _CLOSE)
        return None

    async def _whole(
        self, receive: Receive, send: Send, stream: Any, model: str, started: float
    ) -> None:
        failed: BaseException | None = None
        async with _until_disconnect(receive) as work:
            with work:
                try:
                    _, text, reason, usage = await stream.collect()
                except Exception as exc:
                    if not isinstance(exc, InferenceError):
                        logger.exception("completion failed")
                    failed = exc
            if work.cancelled_caught:
                return  # the client left: collect() closed the stream, cancelling the request
            # The answer is written outside the work's scope: a disconnect cannot cut it.
            if failed is not None:
                await self._error(send, failed, model)
                return
            self.metrics.finished(model, trio.current_time() - started)
            await _json(send, 200, _completion(stream.request, model, text, reason, usage))

    async def _stream(
        self, receive: Receive, send: Send, stream: Any, model: str, started: float
    ) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        began = False
        failed: BaseException | None = None
        async with _until_disconnect(receive) as work:
            with work:
                try:
                    async with stream:
                        async for chunk in stream:
                            if not began:
                                began = True
                                self.metrics.first_token(model, trio.current_time() - started)
                                await send({"type": "http.response.start", "status": 200,
                                            "headers": headers})  # fmt: skip
                            event = _completion(
                                stream.request, model, chunk.text, chunk.finish_reason,
                                chunk.usage,
                            )  # fmt: skip
                            event["choices"][0]["token_ids"] = list(chunk.token_ids)
                            await _event(send, event)
                    self.metrics.finished(model, trio.current_time() - started)
                except Exception as exc:
                    if not isinstance(exc, InferenceError):
                        logger.exception("a streamed completion failed")
                    self.metrics.failed(model, exc)
                    failed = exc
            if work.cancelled_caught:
                return  # the client left: its request was cancelled as the stream closed
            # The end is written outside the work's scope: a disconnect cannot cut it.
            if failed is not None and not began:
                await self._error(send, failed, model, record=False)
                return
            if not began:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            if failed is not None:
                await _event(send, error_body(failed, error_status(failed)[0]))
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _error(
        self,
        send: Send,
        error: BaseException,
        model: str,
        *,
        record: bool = True,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        status, retry_after = error_status(error)
        if record:
            self.metrics.failed(model, error)
        all_headers = list(headers or [])
        if retry_after is not None:
            all_headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
        await _json(send, status, error_body(error, status), all_headers)


_CLOSE = [(b"connection", b"close")]

_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
"""Routes that are never refused for load: they are cheap, and a liveness probe that fails under
load would have an orchestrator restart a busy server."""


@asynccontextmanager
async def _until_disconnect(receive: Receive) -> AsyncIterator[trio.CancelScope]:
    """A cancel scope for a response's work that the client's leaving cancels; what runs
    outside it (the response's end) is not cancelled by a disconnect."""
    work = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                continue  # more body, or nothing: only a disconnect matters here
            work.cancel()

        nursery.start_soon(watch)
        yield work
        nursery.cancel_scope.cancel()


def _error_object(
    message: str, kind: str, status: int, *, retryable: bool = False
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status, "retryable": retryable}}


def _completion(
    request: Request, model: str, text: str, reason: FinishReason | None, usage: Any
) -> dict[str, Any]:
    finish = None if reason is None else ("length" if reason is FinishReason.LENGTH else "stop")
    body: dict[str, Any] = {
        "id": request.id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
    return body


async def _json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = _encode(body)
    all_headers = [(b"content-type", b"application/json"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": payload})


async def _event(send: Send, body: dict[str, Any]) -> None:
    data = b"data: " + _encode(body) + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": True})
