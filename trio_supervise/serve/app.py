"""The HTTP front end: a small raw-ASGI app over a :class:`~.pool.WorkerPool`
(run by hypercorn on Trio).

Routes: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (OpenAI-style, streamed as
server-sent events when asked: ``serve/_generate.py``), ``POST /tokenize`` and
``POST /detokenize`` (vLLM's, for a model whose runner offers a tokenizer), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /version``, ``GET /v1/workers``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics``.
The app moves bytes; the OpenAI codec (``trio_supervise.openai``) reads and writes them.
Everything a request carries is checked at the edge against what every tier can carry (integers
within 64 bits, text that is valid UTF-8, ``max_tokens`` within the model's ``max_model_len``):
a malformed body is a 4xx that names the field and never reaches a worker. A generating
endpoint is ``_generate.generate`` given the codec's reader of its body and writers of its
answers.
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

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, final

import trio

from .._errors import BadRequest, InferenceError, shown
from ..openai import (
    CHAT,
    CHAT_PATH,
    COMPLETION,
    COMPLETIONS_PATH,
    DETOKENIZE_PATH,
    MODEL_PREFIX,
    MODELS_PATH,
    TOKENIZE_PATH,
    VERSION_PATH,
    error_body,
    error_object,
    error_status,
    model_named,
    models_body,
    parse_chat,
    parse_completion,
    parse_detokenize,
    parse_tokenize,
    render_chat,
    retry_after_header,
    version_body,
)
from ..supervision import SupervisionEvent
from ._asgi import (
    CLOSE,
    Handler,
    Receive,
    Scope,
    Send,
    send_json,
)
from ._exchange import EXCHANGE, REQUEST_ID_HEADER, Exchange, Observer, observe, request_id_of
from ._generate import generate
from ._keys import ApiKeys
from ._logs import access_log
from .metrics import Metrics
from .pool import WorkerPool

__all__ = ["App"]

logger = logging.getLogger("trio_supervise")

MAX_BODY = 1024 * 1024


@final
class App:
    """The ASGI application (one per ``serve``)."""

    def __init__(
        self,
        pool: WorkerPool,
        metrics: Metrics,
        keys: ApiKeys | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.pool = pool
        self.keys = keys
        """The API keys it asks for (``serve/_keys.py``); None: none."""
        self.metrics = metrics
        self.observers: tuple[Observer, ...] = (
            metrics.observe,
            _note_first_token,
            access_log,
            *observers,
        )
        """Given every request once answered (``serve/_exchange.py``): they only observe."""
        self.server = pool.config.server
        self.ready = False  # every model has a READY replica, once the pool started
        self.open_requests = 0
        """Requests being answered now (probes not counted)."""
        self._open_requests_changed: trio.Event | None = None  # made by a waiter
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics_page,
            ("GET", MODELS_PATH): self.models,
            ("GET", VERSION_PATH): self.version,
            ("GET", "/v1/workers"): self.workers,
            ("POST", COMPLETIONS_PATH): self.completions,
            ("POST", CHAT_PATH): self.chat,
            ("POST", TOKENIZE_PATH): self.tokenize,
            ("POST", DETOKENIZE_PATH): self.detokenize,
        }

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
        problem: BadRequest | None = None
        try:
            request_id = request_id_of(headers)
        except BadRequest as exc:
            request_id, problem = uuid.uuid4().hex, exc
        exchange = Exchange(method, path, request_id)
        send = _recording(send, exchange)
        try:
            if problem is not None:
                await self.refuse(receive, send, 400, error_body(problem, 400))
            else:
                scope[EXCHANGE] = exchange
                await self._route(scope, receive, send, headers)
        finally:
            observe(exchange, self.observers)

    async def _route(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        method, path = scope["method"], scope["path"]
        if b"transfer-encoding" in headers and b"content-length" in headers:
            # Two framings: a proxy may read the body one way and this server another (request
            # smuggling). Refuse, and close the connection so nothing after it is read.
            framing = "a request may not have both Content-Length and Transfer-Encoding"
            await self.refuse(receive, send, 400, error_object(framing, "BadRequest", 400))
            return
        handler = self._routes.get((method, path))
        if handler is None and method == "GET" and path.startswith(MODEL_PREFIX):
            handler = self.model
        if handler is None:
            known = path.startswith(MODEL_PREFIX) or any(p == path for _, p in self._routes)
            if known:
                wrong = f"{path} does not take {method}"
                await send_json(send, 405, error_object(wrong, "MethodNotAllowed", 405))
            else:
                await send_json(
                    send, 404, error_object(f"no route {method} {path}", "NotFound", 404)
                )
            return
        keys = self.keys
        if (
            keys is not None
            and keys.needed(path)
            and not keys.accepts(headers.get(b"authorization"))
        ):
            refused = "a valid API key is needed: send it as 'Authorization: Bearer <key>'"
            error = error_object(refused, "Unauthorized", 401)
            await self.refuse(receive, send, 401, error, [(b"www-authenticate", b"Bearer")])
            return
        if path in _PROBES:  # an orchestrator's probes and scrapes are answered under any load
            await handler(scope, receive, send)
            return
        if self.open_requests >= self.server.max_connections:
            busy = f"the server is serving {self.server.max_connections} requests already"
            error = error_object(busy, "Overloaded", 503, retryable=True)
            await self.refuse(receive, send, 503, error, [(b"retry-after", b"1")], patience=1.0)
            return
        self._count_open_requests(1)
        try:
            await handler(scope, receive, send)
        finally:
            self._count_open_requests(-1)

    def _count_open_requests(self, change: int) -> None:
        self.open_requests += change
        changed = self._open_requests_changed
        if changed is not None:  # someone waits: wake them (else nothing to pay)
            self._open_requests_changed = None
            changed.set()

    async def wait_open_requests(self, predicate: Callable[[int], bool]) -> None:
        """Wait until ``predicate(open_requests)`` holds (at once if it does already)."""
        while not predicate(self.open_requests):
            if self._open_requests_changed is None:
                self._open_requests_changed = trio.Event()
            await self._open_requests_changed.wait()

    def is_ready(self) -> bool:
        """Every model has a READY replica and the server is not draining."""
        pool = self.pool
        if not self.ready or pool.draining:
            return False
        return all(any(r.ready for r in replicas) for replicas in pool.replicas.values())

    async def healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"status": "alive"})

    async def readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        ready = self.is_ready()
        status = "draining" if self.pool.draining else "ready" if ready else "loading"
        await send_json(send, 200 if ready else 503, {"status": status})

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, models_body(self.pool.models))

    async def model(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            found = model_named(scope["path"][len(MODEL_PREFIX) :], self.pool.models)
        except InferenceError as exc:
            await self.error(send, exc)
            return
        await send_json(send, 200, found)

    async def version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, version_body())

    async def workers(self, scope: Scope, receive: Receive, send: Send) -> None:
        offset = time.time() - trio.current_time()  # trio's clock to Unix seconds
        events = [_event_record(e, offset) for e in self.pool.events]
        await send_json(send, 200, {"workers": self.pool.statuses(), "events": events})

    async def metrics_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, content_type = self.metrics.render(self.pool)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await generate(self, scope, receive, send, parse_completion, COMPLETION)

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await generate(self, scope, receive, send, parse_chat, CHAT)

    async def tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self.json_body(scope, receive, send)
        if body is None:
            return
        try:
            asked = parse_tokenize(body)
            model = self.pool.model_for(asked.model)
            tokenizer = self._tokenizer(model)
            text = asked.prompt
            if text is None:
                text = render_chat(asked.messages, tokenizer,
                                   add_generation_prompt=asked.add_generation_prompt)  # fmt: skip
            tokens = await trio.to_thread.run_sync(tokenizer.encode, text)
        except InferenceError as exc:
            await self.error(send, exc)
            return
        limit = self.pool.max_model_len[model]
        await send_json(send, 200, {"count": len(tokens), "max_model_len": limit,
                                    "tokens": list(tokens)})  # fmt: skip

    async def detokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self.json_body(scope, receive, send)
        if body is None:
            return
        try:
            asked = parse_detokenize(body)
            model = self.pool.model_for(asked.model)
            tokenizer = self._tokenizer(model)
            bad = [t for t in asked.tokens if t >= tokenizer.vocab_size]
            if bad:
                raise BadRequest(f"tokens must be in [0, {tokenizer.vocab_size}) for model "
                                 f"{model!r}, got {shown(bad[:5])}")  # fmt: skip
            text = await trio.to_thread.run_sync(tokenizer.decode, asked.tokens)
        except InferenceError as exc:
            await self.error(send, exc)
            return
        await send_json(send, 200, {"prompt": text})

    def _tokenizer(self, model: str) -> Any:
        tokenizer = self.pool.tokenizers.get(model)
        if tokenizer is None:
            raise BadRequest(f"model {model!r} has no tokenizer on this server (its runner offers "
                             "no load_tokenizer)")  # fmt: skip
        return tokenizer

    async def json_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The body of a JSON request, or None once answered (415, too big, too slow)."""
        content_type = dict(scope.get("headers", ())).get(b"content-type", b"")
        if content_type.split(b";")[0].strip().lower() != b"application/json":
            # Also what keeps a browser's cross-site form or text/plain post out.
            got = shown(content_type.decode("latin-1"))
            message = f"the body must be application/json, got {got}"
            error = error_object(message, "UnsupportedMediaType", 415)
            await self.refuse(receive, send, 415, error)
            return None
        return await self.read_body(receive, send)

    async def refuse(
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
        await send_json(send, status, body, [*(headers or []), *CLOSE])

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

    async def read_body(self, receive: Receive, send: Send) -> bytes | None:
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
                    await self.error(send, error, headers=CLOSE)
                    return None
                parts.append(part)
                if not message.get("more_body"):
                    return b"".join(parts)
        late = f"the body did not arrive within {self.server.body_timeout:g}s"
        await send_json(send, 408, error_object(late, "RequestTimeout", 408), CLOSE)
        return None

    async def error(
        self, send: Send, error: BaseException, *, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Answer with ``error``'s status and body (and its ``Retry-After``)."""
        status, retry_after = error_status(error)
        all_headers = list(headers or [])
        if retry_after is not None:
            all_headers.append((b"retry-after", retry_after_header(retry_after)))
        await send_json(send, status, error_body(error, status), all_headers)


def _event_record(event: SupervisionEvent, offset: float) -> dict[str, Any]:
    """A supervision event as ``/v1/workers`` lists it (its time in Unix seconds: trio's clock
    plus ``offset``)."""
    return {
        "time": round(event.time + offset, 3),
        "worker": event.child,
        "supervisor": event.supervisor,
        "generation": event.generation,
        "kind": event.kind.value,
        "error": None if event.error is None else type(event.error).__name__,
        "text": event.describe(),
    }


def _note_first_token(exchange: Exchange) -> None:
    """The recent times to a first token of the replica that sent it (``/v1/workers``,
    ``trio-supervise top``): from the request's arrival, queueing included, as a client sees."""
    first = exchange.first_chunk
    if first is not None:
        at, replica = first
        if replica is not None:
            replica.recent_ttft.append(at - exchange.started)


def _recording(send: Send, exchange: Exchange) -> Send:
    """``send``, recording the response's status into ``exchange`` and echoing its request id
    (``X-Request-Id``)."""
    echo = (REQUEST_ID_HEADER, exchange.request_id.encode("ascii"))

    async def recording_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            message = {**message, "headers": [*message.get("headers", ()), echo]}
        await send(message)

    return recording_send


_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
"""Routes that are never refused for load: they are cheap, and a liveness probe that fails under
load would have an orchestrator restart a busy server."""
