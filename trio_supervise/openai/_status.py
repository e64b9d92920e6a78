"""Errors <-> HTTP statuses, both ways: what a server answers for each error (with its body and
its Retry-After), and which typed error a client makes of a status it was answered with.

Server side: :func:`error_status` (status and Retry-After seconds), :func:`error_body` (the
``{"error": {...}}`` object), :func:`error_object`, :func:`retry_after_header`. Client side:
:func:`error_for_status`, :func:`retry_after_seconds` (a Retry-After header's seconds) and
:func:`error_detail` (the message of an error body).
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from typing import Any

from .._errors import (
    Backpressure,
    BadRequest,
    CircuitOpen,
    ContextPoisoned,
    InferenceError,
    ModelNotFound,
    NetworkError,
    OutOfMemory,
    RateLimited,
    RequestTimeout,
    ServerError,
    Unauthorized,
    Unrecoverable,
    WorkerStopped,
)

__all__ = [
    "error_body",
    "error_detail",
    "error_for_status",
    "error_object",
    "error_status",
    "retry_after_header",
    "retry_after_seconds",
]

INTERNAL = "internal error (logged on the server)"
"""The message of a 500: an untyped error is logged on the server, never echoed."""

MAX_ERROR_BODY = 4096
"""Bytes of an error body read for its message."""


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
        message, retryable = INTERNAL, False
    kind = type(error).__name__ if status != 500 else "InternalError"
    return error_object(message, kind, status, retryable=retryable)


def error_object(
    message: str, kind: str, status: int, *, retryable: bool = False
) -> dict[str, Any]:
    """``{"error": {"message", "type", "code", "retryable"}}``, for an error of the server's own
    (a refused connection, a route it does not have) as for a request's."""
    return {"error": {"message": message, "type": kind, "code": status, "retryable": retryable}}


def retry_after_header(seconds: float) -> bytes:
    """A Retry-After header's value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds))).encode()


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


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or ``None``; an HTTP
    date is counted from ``now`` (default: the wall clock)."""
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


def error_detail(body: bytes) -> str:
    """The message of an OpenAI-style error body, or the start of the text."""
    text = body[:MAX_ERROR_BODY].decode("utf-8", "replace")
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
