"""One HTTP request and its answer, as the server records it for its observers.

The app makes an :class:`Exchange` for every request it routes, and the endpoints fill it in as
they go (the model, the pool streams of its choices, the usage, the finish reasons, the error, a
stream's gaps between chunks). When the response has ended, :func:`observe` hands it to the
observers: the metrics, the access log and the tracer. They only observe: they run after the
answer was written, and one that raises is logged and the others still run.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from .._errors import BadRequest, shown
from .._types import Usage

if TYPE_CHECKING:
    from ._replica import Replica
    from ._routing import PoolStream

__all__ = ["EXCHANGE", "REQUEST_ID_HEADER", "Exchange", "Observer", "observe", "request_id_of"]

EXCHANGE = "trio_supervise.exchange"
"""The key of a request's :class:`Exchange` in its ASGI scope."""

logger = logging.getLogger("trio_supervise")

REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID = re.compile(rb"[!-~]{1,128}")
"""An incoming ``X-Request-Id``: 1 to 128 visible ASCII characters (no space or control
character can reach a log line through it)."""


def request_id_of(headers: dict[bytes, bytes]) -> str:
    """The request's ``X-Request-Id`` when it sent a valid one, else a new one.

    Raises:
        BadRequest: an ``X-Request-Id`` that is not 1 to 128 visible ASCII characters.
    """
    given = headers.get(REQUEST_ID_HEADER)
    if given is None:
        return uuid.uuid4().hex
    if _REQUEST_ID.fullmatch(given) is None:
        raise BadRequest(
            "X-Request-Id must be 1 to 128 visible ASCII characters, got "
            f"{shown(given.decode('latin-1'))}"
        )
    return given.decode("ascii")


@final
@attrs.define(eq=False)
class Exchange:
    """One request and its answer (see the module docstring)."""

    method: str
    path: str
    request_id: str
    started: float = attrs.Factory(trio.current_time)
    """trio's clock when the request arrived."""
    wall_started: float = attrs.Factory(time.time)
    """Unix seconds when it arrived."""
    status: int | None = None
    """The response's status, once sent."""
    ended: float | None = None
    """trio's clock when the response ended."""
    generating: bool = False
    """A completion or a chat: it went to the pool (or tried to)."""
    model: str | None = None
    streams: Sequence[PoolStream] = ()
    """Its choices' streams through the pool."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: list[str] = attrs.Factory(list)
    """One per choice that ended normally: ``"stop"``, ``"length"``..."""
    error: BaseException | None = None
    """The error it was answered with (or that ended its stream)."""
    left: bool = False
    """The client went away before the answer's end."""
    chunk_gaps: list[float] = attrs.Factory(list)
    """A streamed answer's seconds between one chunk and the next."""

    def finished(self, usage: Usage | None, reasons: Sequence[str | None]) -> None:
        """Its choices have ended (or been left): their usage (None: not every choice told
        one; the tokens counted as they were sent stand) and finish reasons."""
        if usage is not None:
            self.prompt_tokens = usage.prompt_tokens
            self.completion_tokens = usage.completion_tokens
        self.finish_reasons = [r for r in reasons if r is not None]

    @property
    def duration(self) -> float:
        """Seconds from its arrival to the end of its response."""
        return (self.ended if self.ended is not None else trio.current_time()) - self.started

    @property
    def outcome(self) -> str:
        """``"finished"``, ``"cancelled"`` (the client left) or the error's class."""
        if self.left:
            return "cancelled"
        if self.error is not None:
            return type(self.error).__name__
        if self.status is not None and self.status >= 400:
            return f"http_{self.status}"  # answered before a request was read (415, 408...)
        return "finished"

    @property
    def first_chunk(self) -> tuple[float, Replica | None] | None:
        """When its first output arrived (trio's clock), and from which replica (of all its
        choices, the earliest); None: none came."""
        firsts = [first for s in self.streams if (first := s.first_chunk) is not None]
        return min(firsts, key=lambda first: first[0], default=None)

    @property
    def first_chunk_at(self) -> float | None:
        """When its first output arrived (trio's clock); None: none came."""
        first = self.first_chunk
        return None if first is None else first[0]

    @property
    def continued(self) -> int:
        """Runs of its choices that continued a stream cut by a failure."""
        return sum(kind == "continued" for s in self.streams for _, kind in s.reruns)

    @property
    def served_by(self) -> tuple[str, int] | None:
        """The replica and tier generation of its (first choice's) last run."""
        for stream in self.streams:
            replica = stream.replica
            if replica is not None:
                return replica.name, stream.generation
        return None

    def wall(self, at: float) -> float:
        """Unix seconds of a time on trio's clock during this exchange."""
        return self.wall_started + (at - self.started)

    def access_fields(self) -> dict[str, Any]:
        """What its access log line says, as plain values."""
        served = self.served_by
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": round(self.duration * 1e3, 3),
            "request_id": self.request_id,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "replica": None if served is None else served[0],
            "generation": None if served is None else served[1],
            "continued": self.continued,
            "outcome": self.outcome,
        }


Observer = Callable[[Exchange], None]


def observe(exchange: Exchange, observers: Sequence[Observer]) -> None:
    """Hand a finished exchange to each observer; one that raises is logged, not raised."""
    if exchange.ended is None:
        exchange.ended = trio.current_time()
    for observer in observers:
        try:
            observer(exchange)
        except Exception:
            logger.exception("an observer of requests (%r) failed", observer)
