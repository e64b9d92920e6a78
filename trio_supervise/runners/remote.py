"""``RemoteRunner``: a model served by an OpenAI-compatible server on another host.

How a remote runner works
-------------------------
The runner drives ``{base_url}/v1/completions`` (streamed, server-sent events; or
``/v1/chat/completions`` with ``endpoint="chat"``) and ``{base_url}/v1/models`` with an
``httpx.AsyncClient`` (vLLM, TGI, or another trio-supervise).
It needs no device (``needs_device = False``) and runs ``max_connections`` batches at once.
Inside ``execute`` each request of a batch streams in its own task, in a nursery that lives in
the context manager :func:`trio.as_safe_channel` makes, never across a ``yield``.

Failures are per request: a request that fails gets a chunk with its error, and the others of
the batch go on. The taxonomy (``error_for_status``): 429 -> :class:`RateLimited` (with the
server's Retry-After), 5xx -> :class:`ServerError`, a transport failure (refused, reset, a
half-sent response) -> :class:`NetworkError`, a timeout -> :class:`RequestTimeout`, 401/403 ->
:class:`Unauthorized`, another 4xx -> :class:`BadRequest`, an open breaker ->
:class:`CircuitOpen`. Only :class:`Unauthorized` concerns the session rather than one request:
after its request gets the error, ``execute`` raises it, and :data:`REMOTE_POLICY` restarts the
tier, whose new runner reads the credentials again.

A :class:`CircuitBreaker`, kept by the runner (so it lives as long as the tier), counts
network, server and timeout errors (not 4xx): once open, requests fail fast with
:class:`CircuitOpen` until ``reset_timeout`` has passed and one probe succeeds.

``load`` succeeds once ``/v1/models`` lists ``model``; while the backend is unreachable, failing
or rate limiting, it tries again under the policy's backoff, uncounted, until the worker's
``readiness_timeout`` (so a front started before its backend becomes ready after it). The key
(``api_key_env`` or ``api_key_file``) is read on each ``load`` and ``rebuild_session``, goes
only into the client's ``Authorization`` header, and is never logged nor shown in a repr.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, cast

import httpx
import trio

from .._errors import (
    BadRequest,
    CircuitOpen,
    ConfigError,
    ContextPoisoned,
    InferenceError,
    NetworkError,
    RateLimited,
    RequestTimeout,
    RunnerError,
    ServerError,
    Unauthorized,
    Unrecoverable,
)
from .._types import Batch, Chunk, FinishReason, RebuildCause, Request, Usage
from ..devices import DeviceContext
from ..supervision import Backoff, Directive, Policy, RestartIntensity, on, rules
from ..tier._breaker import CircuitBreaker

__all__ = ["REMOTE_POLICY", "RemoteRunner", "error_for_status", "retry_after_seconds"]

logger = logging.getLogger("trio_supervise")

REMOTE_POLICY = Policy(
    rules(
        on(RateLimited, ServerError, NetworkError, RequestTimeout, CircuitOpen, Directive.RESUME),
        on(BadRequest, Directive.RESUME),
        on(Unauthorized, ContextPoisoned, Directive.RESTART),
        on(Unrecoverable, Directive.STOP),
        default=Directive.ESCALATE,
    ),
    RestartIntensity(10, 60.0),
    Backoff(0.1, 5.0, multiplier=2.0, jitter=0.2),
)
"""A remote runner's default policy. A backend outage (rate limits, server and network errors,
timeouts, an open breaker) fails only the requests concerned (RESUME: the runner stays, dispatch
goes on, the restart budget is untouched); ``Unauthorized`` restarts the tier, which reads the
credentials again (at most 10 restarts in 60 s, then the worker gives up); a hang restarts it;
``Unrecoverable`` (the server does not serve the model) stops it. Backoff: 0.1 s doubling up to
5 s, also between ``load``'s attempts."""

_BREAKER_COUNTS = (NetworkError, ServerError, RequestTimeout)
_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
_MAX_ERROR_BODY = 4096
_FINISH = {"length": FinishReason.LENGTH}


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def error_for_status(status: int, message: str, retry_after: float | None = None) -> InferenceError:
    """The typed error for an HTTP status a backend answered with."""
    if status == 429:
        return RateLimited(message, retry_after=retry_after)
    if status in (401, 403):
        return Unauthorized(message)
    if status >= 500:
        return ServerError(message, retry_after=retry_after)
    if 400 <= status < 500:
        return BadRequest(message)
    return ServerError(message)  # 1xx/3xx where a 200 was expected


def _detail(body: bytes) -> str:
    """The message of an OpenAI-style error body, or the start of the text."""
    text = body[:_MAX_ERROR_BODY].decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:300]
    if isinstance(error, str):
        return error[:300]
    return text.strip()[:300]


def _number(name: str, value: object, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"RemoteRunner {name} must be a finite number, got {value!r}")
    if value <= minimum:
        raise ConfigError(f"RemoteRunner {name} must be > {minimum:g}, got {value!r}")
    return float(value)


class _Streams:
    """The streams of one batch: each request's cancel scope, and whether the batch is halted."""

    __slots__ = ("halted", "scopes")

    def __init__(self) -> None:
        self.scopes: dict[str, trio.CancelScope] = {}
        self.halted = False

    def halt(self) -> None:
        """Stop every stream of the batch, and those that have not started yet."""
        self.halted = True
        for scope in self.scopes.values():
            scope.cancel()


class _Session:
    """One HTTP client and the streams using it; a retired one closes when the last ends."""

    __slots__ = ("client", "retired", "users")

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.users = 0
        self.retired = False


class RemoteRunner:
    """A runner for a model on an OpenAI-compatible server (see the module docstring).

    Args:
        base_url: the server's root, ``http(s)://host:port`` (a trailing ``/v1`` is accepted).
        model: the model's name on that server, as ``/v1/models`` lists it.
        api_key_env: the environment variable holding the API key (sent as a bearer token).
        api_key_file: a file holding the key; read again on every ``load`` and
            ``rebuild_session``, so a rotated secret is picked up. At most one of the two.
        connect_timeout: seconds to connect.
        read_timeout: seconds the server may stay silent while answering.
        max_connections: connections to the server, and batches executed at once.
        breaker: a :class:`CircuitBreaker`, or a table ``{"failures": 5, "reset_timeout": 5.0}``;
            ``None`` means those defaults.
        endpoint: ``"completions"`` (``/v1/completions``) or ``"chat"``
            (``/v1/chat/completions``, the prompt sent as one user message).

    Example (a serve config)::

        [[workers]]
        name = "llama"
        runner = "trio_supervise.runners.remote:RemoteRunner"
        runner_args = { base_url = "http://gpu-1:8000", model = "llama-3-8b",
                        api_key_env = "VLLM_API_KEY", breaker = { failures = 5 } }
    """

    needs_device = False
    default_policy = REMOTE_POLICY

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key_env: str | None = None,
        api_key_file: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_connections: int = 64,
        breaker: CircuitBreaker | Mapping[str, Any] | None = None,
        endpoint: str = "completions",
    ) -> None:
        if not isinstance(base_url, str):
            raise ConfigError(f"RemoteRunner base_url must be a str, got {base_url!r}")
        url = base_url.rstrip("/").removesuffix("/v1").rstrip("/")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigError(f"RemoteRunner base_url is not a URL: {base_url!r} ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(
                f"RemoteRunner base_url must be http(s)://host[:port], got {base_url!r}"
            )
        if endpoint not in _PATHS:
            raise ConfigError(
                f"RemoteRunner endpoint must be 'completions' or 'chat', got {endpoint!r}"
            )
        if not isinstance(model, str) or not model:
            raise ConfigError(f"RemoteRunner model must be a non-empty str, got {model!r}")
        for name, value in (("api_key_env", api_key_env), ("api_key_file", api_key_file)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"RemoteRunner {name} must be a non-empty str, got {value!r}")
        if api_key_env is not None and api_key_file is not None:
            raise ConfigError("RemoteRunner takes api_key_env or api_key_file, not both")
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ConfigError(
                f"RemoteRunner max_connections must be an int >= 1, got {max_connections!r}"
            )
        if breaker is None:
            breaker = CircuitBreaker()
        elif isinstance(breaker, Mapping):
            unknown = set(breaker) - {"failures", "reset_timeout"}
            if unknown:
                raise ConfigError(
                    f"RemoteRunner breaker takes failures and reset_timeout, got {sorted(unknown)}"
                )
            breaker = CircuitBreaker(**breaker)
        elif not isinstance(breaker, CircuitBreaker):
            raise ConfigError(
                f"RemoteRunner breaker must be a CircuitBreaker, a table or None, got {breaker!r}"
            )
        self.base_url = url
        self.model = model
        self.endpoint = endpoint
        self.api_key_env = api_key_env
        self.api_key_file = api_key_file
        self.read_timeout = _number("read_timeout", read_timeout)
        self.connect_timeout = _number("connect_timeout", connect_timeout)
        self.timeout = httpx.Timeout(
            self.read_timeout,
            connect=self.connect_timeout,
            pool=None,  # more streams than connections wait for one; deadlines bound them
        )
        self.max_connections = max_connections
        self.max_concurrency = max_connections
        self.breaker: CircuitBreaker = breaker
        self._session: _Session | None = None
        self._sessions: set[_Session] = set()
        self._keys: set[str] = set()  # every key sent, to scrub from what servers echo

    def __repr__(self) -> str:
        return f"RemoteRunner({self.base_url!r}, model={self.model!r})"

    # --- the session ------------------------------------------------------------------------

    async def _read_key(self) -> str | None:
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise Unrecoverable(
                    f"api_key_env={self.api_key_env!r}: that environment variable is not set"
                )
            return key.strip()
        if self.api_key_file is not None:
            try:  # a mounted secret may sit on a slow filesystem: not on the event loop
                key = (await trio.Path(self.api_key_file).read_text()).strip()
            except OSError as exc:
                raise Unauthorized(
                    f"cannot read api_key_file {self.api_key_file!r}: {exc.strerror}"
                ) from None
            if not key:
                raise Unauthorized(f"api_key_file {self.api_key_file!r} is empty")
            return key
        return None

    def _scrub(self, text: str) -> str:
        """``text`` (a server's words) with any key this runner sent replaced by ``***``."""
        for key in self._keys:
            text = text.replace(key, "***")
        return text

    async def _open_session(self) -> _Session:
        key = await self._read_key()
        if key is not None:
            self._keys.add(key)
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
        )
        session = _Session(client)
        self._sessions.add(session)
        return session

    async def _release(self, session: _Session) -> None:
        session.users -= 1
        if session.retired and session.users == 0:
            await self._close(session)

    async def _close(self, session: _Session) -> None:
        self._sessions.discard(session)
        with trio.CancelScope(shield=True):
            await session.client.aclose()

    # --- the runner contract ------------------------------------------------------------------

    async def load(self, device: DeviceContext) -> None:
        """Open a session, then wait until the server lists ``model`` (see the module docs).

        Raises:
            Unrecoverable: the server answers, but does not serve ``model`` (or has no
                ``/v1/models``); or ``api_key_env`` is not set.
            Unauthorized: the server refuses the key, or ``api_key_file`` cannot be read.
        """
        if self._session is None:
            self._session = await self._open_session()
        attempt = 0
        while True:
            try:
                await self._check_model(self._session.client)
                return
            except (NetworkError, ServerError, RateLimited, RequestTimeout) as exc:
                delay = max(REMOTE_POLICY.backoff.capped(attempt), exc.retry_after or 0.0)
                logger.warning(
                    "%r is not ready (%s: %s); trying again in %.3gs",
                    self, type(exc).__name__, exc, delay,
                )  # fmt: skip
                attempt += 1
                await trio.sleep(delay)

    async def _check_model(self, client: httpx.AsyncClient) -> None:
        url = f"{self.base_url}/v1/models"
        try:
            response = await client.get("/v1/models")
        except httpx.TimeoutException as exc:
            raise RequestTimeout(f"GET {url} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise NetworkError(f"GET {url} failed: {type(exc).__name__}: {exc}") from None
        if response.status_code == 404:
            raise Unrecoverable(
                f"{url} answered 404: is {self.base_url} an OpenAI-style server serving model "
                f"{self.model!r}?"
            )
        if response.status_code != 200:
            raise error_for_status(
                response.status_code,
                f"GET {url} answered {response.status_code}: "
                f"{self._scrub(_detail(response.content))}",
                retry_after_seconds(response.headers.get("retry-after")),
            )
        try:
            ids = [entry["id"] for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise Unrecoverable(f"{url} did not answer a model list") from None
        if self.model not in ids:
            raise Unrecoverable(f"{url} does not serve model {self.model!r}; it serves {ids}")

    def execute(self, batch: Batch) -> Any:
        """Stream every request of the batch at once; chunks in order per request."""
        return self._execute(batch)

    @trio.as_safe_channel
    async def _execute(self, batch: Batch) -> AsyncGenerator[Chunk, None]:
        session = self._session
        if session is None:
            raise RuntimeError("RemoteRunner.execute before load")
        session.users += 1
        refused: Unauthorized | None = None
        try:
            send, receive = trio.open_memory_channel[Chunk](max(16, len(batch.requests)))
            streams = _Streams()
            async with trio.open_nursery() as nursery:
                async with send:
                    for request in batch.requests:
                        if not batch.is_cancelled(request.id):
                            nursery.start_soon(
                                self._stream, session.client, request, batch, send.clone(), streams
                            )
                nursery.start_soon(_watch_cancels, batch, streams.scopes)
                async with receive:
                    async for chunk in receive:
                        yield chunk
                        if refused is None and isinstance(chunk.error, Unauthorized):
                            # The session's key is refused: the other streams stop, and what
                            # they sent already is still delivered before the restart.
                            refused = chunk.error
                            streams.halt()
                nursery.cancel_scope.cancel()  # every stream has ended: the watcher goes too
        finally:
            await self._release(session)
        if refused is not None:  # restart with a fresh session, which reads the key again
            raise Unauthorized(str(refused)) from refused

    async def _stream(
        self,
        client: httpx.AsyncClient,
        request: Request,
        batch: Batch,
        send: trio.MemorySendChannel[Chunk],
        streams: _Streams,
    ) -> None:
        """One request's stream, ending with one chunk (its last, or its error) unless its
        consumer left or the batch was halted; its scope is cancelled in both cases."""
        async with send:
            try:
                body = self._body(request)
                probe = self.breaker.before_call(trio.current_time())
            except InferenceError as exc:  # a prompt the endpoint cannot take; an open breaker
                await send.send(Chunk(request.id, error=exc))
                return
            scope = trio.CancelScope()
            if streams.halted:
                scope.cancel()
            streams.scopes[request.id] = scope
            last: Chunk | None = None
            try:
                with scope:
                    last = await self._completion(client, request, batch, send, body)
            except InferenceError as exc:
                if isinstance(exc, _BREAKER_COUNTS):
                    self.breaker.record_failure(trio.current_time())
                else:
                    self.breaker.record_success()  # the server answered
                await send.send(Chunk(request.id, error=exc))
                return
            except Exception as exc:  # a bug: this request fails, the runner goes on
                logger.exception("%r: request %r failed unexpectedly", self, request.id)
                if probe:
                    self.breaker.release()
                error = RunnerError(f"the remote runner failed on request {request.id!r}: {exc!r}")
                await send.send(Chunk(request.id, error=error))
                return
            finally:
                del streams.scopes[request.id]
                if last is None and probe:  # left, halted or cancelled: no outcome to count
                    self.breaker.release()
            if last is not None:
                await send.send(last)

    def _body(self, request: Request) -> dict[str, Any]:
        params = request.params
        body: dict[str, Any] = {"model": self.model}
        if self.endpoint == "chat":
            if not isinstance(request.prompt, str):
                raise BadRequest("the chat endpoint takes a text prompt, not token ids")
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            prompt = request.prompt
            body["prompt"] = prompt if isinstance(prompt, str) else list(prompt)
        body |= {
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    async def _completion(
        self,
        client: httpx.AsyncClient,
        request: Request,
        batch: Batch,
        send: trio.MemorySendChannel[Chunk],
        body: dict[str, Any],
    ) -> Chunk | None:
        """Stream one completion; return its last chunk (``None`` if its consumer left).

        The breaker counts a success as soon as the server answers 200, so a probe that
        streams a long completion does not hold every other request back meanwhile.
        """
        path = _PATHS[self.endpoint]
        url = f"{self.base_url}{path}"
        finish: FinishReason | None = None
        usage: Usage | None = None
        try:
            async with client.stream("POST", path, json=body) as r:
                if r.status_code != 200:
                    detail = self._scrub(_detail(await r.aread()))
                    message = f"POST {url} answered {r.status_code}: {detail}"
                    if r.status_code == 404:  # the model went away, or the path is wrong
                        raise Unrecoverable(f"{message} (does it serve model {self.model!r}?)")
                    raise error_for_status(
                        r.status_code, message, retry_after_seconds(r.headers.get("retry-after"))
                    )
                self.breaker.record_success()
                lines = cast(AsyncGenerator[str, None], r.aiter_lines())
                async with contextlib.aclosing(lines):
                    async for line in lines:
                        if batch.is_cancelled(request.id):
                            return None  # leaving closes the connection: the server stops
                        if not line.startswith("data:"):
                            continue  # blank lines, comments, other fields
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        event = self._event(data, url)
                        usage = _usage(event.get("usage")) or usage
                        for choice in _choices(event, url):
                            text = _text_of(choice)
                            ids = _token_ids(choice.get("token_ids"))
                            reason = choice.get("finish_reason")
                            if reason is not None:
                                finish = _FINISH.get(str(reason), FinishReason.STOP)
                            if text or ids:
                                await send.send(Chunk(request.id, ids, text))
                    else:
                        if finish is None:
                            raise NetworkError(f"{url}: the stream ended before the completion did")
        except httpx.TimeoutException as exc:
            raise RequestTimeout(f"POST {url} timed out ({type(exc).__name__})") from None
        except httpx.RequestError as exc:  # refused, reset, cut halfway, undecodable
            raise NetworkError(f"POST {url} failed: {type(exc).__name__}: {exc}") from None
        return Chunk(request.id, finish_reason=finish or FinishReason.STOP, usage=usage)

    def _event(self, data: str, url: str) -> dict[str, Any]:
        try:
            event = json.loads(data)
        except ValueError:
            raise ServerError(f"{url} sent an event that is not JSON: {data[:100]!r}") from None
        if not isinstance(event, dict):
            raise ServerError(f"{url} sent an event that is not an object: {data[:100]!r}")
        error = event.get("error")
        if error is not None:  # an error after the first byte, as an SSE event
            detail = error.get("message", error) if isinstance(error, dict) else error
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) and code >= 400 else 502
            raise error_for_status(status, f"{url} failed mid-stream: {detail}")
        return event

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Read the credentials again and swap in a new client; streams on the old one finish
        there, and it closes after the last."""
        new = await self._open_session()
        old, self._session = self._session, new
        logger.info("%r: new session (%s)", self, cause.value)
        if old is not None:
            old.retired = True
            if old.users == 0:
                await self._close(old)

    async def aclose(self) -> None:
        """Close every client."""
        self._session = None
        for session in list(self._sessions):
            await self._close(session)


CANCEL_POLL = 0.1
"""Seconds between two looks at which requests of a batch their consumers left."""


async def _watch_cancels(batch: Batch, scopes: dict[str, trio.CancelScope]) -> None:
    """Cancel the stream of each request whose consumer left, even while the server is silent
    (no event would otherwise wake it): its connection closes, and the server stops."""
    while True:
        await trio.sleep(CANCEL_POLL)
        for request_id, scope in list(scopes.items()):
            if batch.is_cancelled(request_id):
                scope.cancel()


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return Usage(prompt, completion)
    return None


def _choices(event: dict[str, Any], url: str) -> list[dict[str, Any]]:
    """An event's choices, checked: a list of objects (a malformed one is a ServerError)."""
    choices = event.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise ServerError(f"{url} sent choices that are not a list of objects: {choices!r:.100}")
    return choices


def _text_of(choice: dict[str, Any]) -> str:
    """A streamed choice's new text: ``text`` (completions) or ``delta.content`` (chat)."""
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    return text if isinstance(text, str) else ""


def _token_ids(data: Any) -> tuple[int, ...]:
    """Token ids a server sent with the text (trio-supervise does; plain OpenAI does not)."""
    if isinstance(data, list) and all(type(t) is int for t in data):
        return tuple(data)
    return ()
