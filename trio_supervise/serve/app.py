"""The HTTP front end: a small raw-ASGI app over a :class:`~.pool.WorkerPool`
(run by hypercorn on Trio).

Routes: ``POST /v1/completions`` (OpenAI-style, streamed as server-sent events when asked),
``GET /v1/models``, ``GET /v1/workers``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.
A malformed body is a 400 and never reaches a worker. A streamed response is written with the
raw ASGI ``send`` while a sibling task waits for ``http.disconnect``: a client that goes away
cancels its request at once, so an abandoned stream stops using the device.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
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
    """A completion request's fields, checked; a BadRequest says what was expected."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body must be a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(data).__name__}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest(f"prompt must be a string, got {prompt!r}")
    if data.get("n", 1) != 1:
        raise BadRequest(f"n must be 1 (one choice per request), got {data.get('n')!r}")
    stop = data.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not (isinstance(stop, list | tuple) and all(isinstance(s, str) for s in stop)):
        raise BadRequest(f"stop must be a string or a list of strings, got {stop!r}")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"model must be a string, got {model!r}")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, got {stream!r}")
    continuation = data.get("continuation", "auto")
    if continuation not in ("auto", "replay", "resume", "off"):
        raise BadRequest(
            f"continuation must be 'auto', 'replay', 'resume' or 'off', got {continuation!r}"
        )
    params = SamplingParams(
        max_tokens=data.get("max_tokens", 16),
        temperature=data.get("temperature", 1.0),
        top_p=data.get("top_p", 1.0),
        seed=data.get("seed"),
        stop=tuple(stop),
    )
    return {
        "prompt": prompt,
        "model": model,
        "stream": stream,
        "continuation": continuation,
    }, params


@final
class App:
    """The ASGI application (one per ``serve``)."""

    def __init__(self, pool: WorkerPool, metrics: Metrics) -> None:
        self.pool = pool
        self.metrics = metrics
        self.ready = False  # every model has a READY replica, once the pool started

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
            await _json(send, status, {"error": {"message": f"no route {method} {path}",
                                                  "type": "NotFound", "code": status,
                                                  "retryable": False}})  # fmt: skip
            return
        await handler(scope, receive, send)

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
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await self._error(send, BadRequest(f"the body is over {MAX_BODY} bytes"), "?")
                return
            if not message.get("more_body"):
                break
        model = "?"
        try:
            fields, params = parse_completion(body)
            model = self.pool.model_for(fields["model"])
            if self.pool.draining:
                raise WorkerStopped("the server is draining", retry_after=1.0)
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
            await self._stream(scope, receive, send, stream, model, started)
        else:
            await self._whole(send, stream, model, started)

    async def _whole(self, send: Send, stream: Any, model: str, started: float) -> None:
        try:
            _, text, reason, usage = await stream.collect()
        except InferenceError as exc:
            await self._error(send, exc, model)
            return
        except Exception as exc:
            logger.exception("completion failed")
            await self._error(send, exc, model)
            return
        self.metrics.finished(model, trio.current_time() - started)
        await _json(send, 200, _completion(stream.request, model, text, reason, usage))

    async def _stream(
        self, scope: Scope, receive: Receive, send: Send, stream: Any, model: str, started: float
    ) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        began = False
        async with trio.open_nursery() as nursery:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    continue  # more body, or nothing: only a disconnect matters here
                nursery.cancel_scope.cancel()  # the client left: cancel its request

            nursery.start_soon(watch_disconnect)
            try:
                async with stream:
                    async for chunk in stream:
                        if not began:
                            began = True
                            self.metrics.first_token(model, trio.current_time() - started)
                            await send({"type": "http.response.start", "status": 200,
                                        "headers": headers})  # fmt: skip
                        event = _completion(
                            stream.request, model, chunk.text, chunk.finish_reason, chunk.usage
                        )
                        event["choices"][0]["token_ids"] = list(chunk.token_ids)
                        await _event(send, event)
                self.metrics.finished(model, trio.current_time() - started)
            except Exception as exc:
                if not isinstance(exc, InferenceError):
                    logger.exception("a streamed completion failed")
                status, _ = error_status(exc)
                self.metrics.failed(model, exc)
                if not began:
                    await self._error(send, exc, model, record=False)
                    nursery.cancel_scope.cancel()
                    return
                await _event(send, error_body(exc, status))
            if not began:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            nursery.cancel_scope.cancel()

    async def _error(
        self, send: Send, error: BaseException, model: str, *, record: bool = True
    ) -> None:
        status, retry_after = error_status(error)
        if record:
            self.metrics.failed(model, error)
        headers = []
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
        await _json(send, status, error_body(error, status), headers)


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
