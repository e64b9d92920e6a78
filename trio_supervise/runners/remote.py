"""``RemoteRunner``: a model served by an OpenAI-compatible server on another host.

How a remote runner works
-------------------------
The runner drives ``{base_url}/v1/completions`` (streamed, server-sent events; or
``/v1/chat/completions`` with ``endpoint="chat"``) and ``{base_url}/v1/models`` with an
``httpx.AsyncClient`` (vLLM, TGI, or another trio-supervise). A chat request (one with
``messages``: what a front's chat endpoint admits) always goes to the backend's chat endpoint,
with its messages, so the backend's own chat template renders them; a chat stream continued
with ``resume`` sends the answer so far as the last assistant message with
``continue_final_message`` (vLLM's, and this server's). The sampling fields are forwarded
(``sampling_fields``: all of them but ``logprobs``, which are not read back).
It needs no device (``needs_device = False``) and runs ``max_connections`` batches at once.
Inside ``execute`` each request of a batch streams in its own task, in a nursery that lives in
the context manager ``execute`` returns (never across a generator's ``yield``); the consumer
reads the streams' channel itself, and each stream sends one chunk per network read (the events
that arrived together), so a chunk costs no task switch but its own.

Bodies, events and the errors of statuses are the OpenAI codec's (``trio_supervise.openai``);
the HTTP sessions and their key are ``_remote_session``'s, one request's exchange
``_remote_stream``'s.

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
import logging
import math
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

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
from .._types import SAMPLING_EXTRAS, Batch, Chunk, RebuildCause, Request
from ..devices import DeviceContext
from ..openai import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    chat_request,
    completion_request,
    error_detail,
    error_for_status,
    retry_after_seconds,
)
from ..supervision import Backoff, Directive, Policy, RestartIntensity, on, rules
from ..tier._breaker import CircuitBreaker
from ._remote_session import Session, Sessions
from ._remote_stream import Streams, stream_completion, watch_cancels

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
_ENDPOINTS: dict[str, tuple[str, Callable[[str, Request], dict[str, Any]]]] = {
    "completions": (COMPLETIONS_PATH, completion_request),
    "chat": (CHAT_PATH, chat_request),
}
"""Each endpoint's path, and the codec's writer of its request body."""


def _number(name: str, value: object, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"RemoteRunner {name} must be a finite number, got {value!r}")
    if value <= minimum:
        raise ConfigError(f"RemoteRunner {name} must be > {minimum:g}, got {value!r}")
    return float(value)


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
    sampling_fields = frozenset(SAMPLING_EXTRAS) - {"logprobs"}
    """Forwarded to the backend, which refuses (400) what it cannot honour."""

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
        if endpoint not in _ENDPOINTS:
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
        self._endpoint = _ENDPOINTS[endpoint]
        self._sessions = Sessions(
            url,
            timeout=self.timeout,
            max_connections=max_connections,
            api_key_env=api_key_env,
            api_key_file=api_key_file,
        )

    def __repr__(self) -> str:
        return f"RemoteRunner({self.base_url!r}, model={self.model!r})"

    # --- the runner contract ------------------------------------------------------------------

    async def load(self, device: DeviceContext) -> None:
        """Open a session, then wait until the server lists ``model`` (see the module docs).

        Raises:
            Unrecoverable: the server answers, but does not serve ``model`` (or has no
                ``/v1/models``); or ``api_key_env`` is not set.
            Unauthorized: the server refuses the key, or ``api_key_file`` cannot be read.
        """
        sessions = self._sessions
        if sessions.current is None:
            sessions.current = await sessions.open()
        attempt = 0
        while True:
            try:
                await self._check_model(sessions.current.client)
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
                f"{self._sessions.scrub(error_detail(response.content))}",
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

    @contextlib.asynccontextmanager
    async def _execute(self, batch: Batch) -> AsyncGenerator[trio.MemoryReceiveChannel[Chunk]]:
        """The batch's chunks come straight from its streams' channel: its consumer reads
        what each stream sent, with no task between them."""
        session = self._sessions.current
        if session is None:
            raise RuntimeError("RemoteRunner.execute before load")
        session.users += 1
        streams = Streams()
        failure: BaseException | None = None
        try:
            send, receive = trio.open_memory_channel[Chunk](max(16, len(batch.requests)))
            async with receive, trio.open_nursery() as nursery:
                async with send:
                    for request in batch.requests:
                        if not batch.is_cancelled(request.id):
                            nursery.start_soon(
                                self._stream, session, request, batch, send.clone(), streams
                            )
                nursery.start_soon(watch_cancels, batch, streams.scopes)
                try:
                    yield receive
                finally:  # every stream has ended, or the consumer left: the rest stops
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the nursery wraps what the consumer raised
            if len(group.exceptions) != 1:
                raise
            failure = group.exceptions[0]  # raised plainly below, not chained to the group
        finally:
            await self._sessions.release(session)
        if failure is not None:
            raise failure
        if streams.refused is not None:  # restart with a fresh session, which reads the key
            raise Unauthorized(str(streams.refused)) from streams.refused

    async def _stream(
        self,
        session: Session,
        request: Request,
        batch: Batch,
        send: trio.MemorySendChannel[Chunk],
        streams: Streams,
    ) -> None:
        """One request's stream, ending with one chunk (its last, or its error) unless its
        consumer left or the batch was halted; its scope is cancelled in both cases."""
        async with send:
            path, write = (CHAT_PATH, chat_request) if request.messages else self._endpoint
            try:
                body = write(self.model, request)
                probe = self.breaker.before_call(trio.current_time())
            except InferenceError as exc:  # a prompt the endpoint cannot take; an open breaker
                await send.send(Chunk(request.id, error=exc))
                return
            scope = trio.CancelScope()
            if streams.halted:
                scope.cancel()
            streams.scopes[request.id] = scope
            last: Chunk | None = None
            leased = session.lease()
            try:
                with scope:
                    last = await stream_completion(
                        session.clients[leased], self.base_url, path, body, request.id, batch, send,
                        answered=self.breaker.record_success, scrub=self._sessions.scrub,
                        model=self.model,
                    )  # fmt: skip
            except InferenceError as exc:
                if isinstance(exc, _BREAKER_COUNTS):
                    self.breaker.record_failure(trio.current_time())
                else:
                    self.breaker.record_success()  # the server answered
                await send.send(Chunk(request.id, error=exc))
                if isinstance(exc, Unauthorized):
                    # The session's key is refused: the other streams stop (what they sent
                    # already is still delivered), and the tier restarts with a new session.
                    streams.refuse(exc)
                return
            except Exception as exc:  # a bug: this request fails, the runner goes on
                logger.exception("%r: request %r failed unexpectedly", self, request.id)
                if probe:
                    self.breaker.release()
                error = RunnerError(f"the remote runner failed on request {request.id!r}: {exc!r}")
                await send.send(Chunk(request.id, error=error))
                return
            finally:
                session.give_back(leased)
                del streams.scopes[request.id]
                if last is None and probe:  # left, halted or cancelled: no outcome to count
                    self.breaker.release()
            if last is not None:
                await send.send(last)

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Read the credentials again and swap in a new client; streams on the old one finish
        there, and it closes after the last."""
        await self._sessions.replace()
        logger.info("%r: new session (%s)", self, cause.value)

    async def aclose(self) -> None:
        """Close every client."""
        await self._sessions.aclose()
