"""The error taxonomy: what can go wrong, and whether a retry is worthwhile.

Every error this library raises derives from :class:`SuperviseError`. Errors about a unit of
work (a request, a batch, a worker) derive from :class:`InferenceError`, which carries
``retryable`` (is it worth sending the same request again?) and ``retry_after`` (how many
seconds to wait first, if the raiser knows). Misuse by the caller (a bad policy, a bad config)
also derives from :class:`ValueError`.

Supervision's own generic errors (:class:`SuperviseError` and its kin) live in
:mod:`.supervision._errors`; this module adds the errors of inference on top of them.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

from .supervision import (
    ChildStopped,
    InvalidPolicy,
    ReadinessTimeout,
    RestartIntensityExceeded,
    SuperviseError,
    TooManyChildren,
)

__all__ = [
    "Backpressure",
    "BadRequest",
    "ChildDied",
    "ChildStopped",
    "CircuitOpen",
    "ConfigError",
    "ContextPoisoned",
    "ContinuationMismatch",
    "HungWorker",
    "InferenceError",
    "InvalidPolicy",
    "NetworkError",
    "OutOfMemory",
    "RateLimited",
    "ReadinessTimeout",
    "RequestTimeout",
    "RestartIntensityExceeded",
    "RunnerError",
    "ServerError",
    "SuperviseError",
    "TooManyChildren",
    "Unauthorized",
    "Unrecoverable",
    "WorkerStopped",
]


class InferenceError(SuperviseError):
    """A unit of work failed.

    Args:
        message: what happened, for people.
        retryable: whether sending the same request again may succeed. Each class has its own
            default (``retryable_by_default``); pass it to override.
        retry_after: seconds the caller should wait before retrying, when known (``>= 0``).

    Example::

        raise OutOfMemory("batch of 64 needs 3 GiB, 1 GiB free", retry_after=0.5)
    """

    retryable_by_default: ClassVar[bool] = False

    message: str
    retryable: bool
    retry_after: float | None

    def __init__(
        self,
        message: str = "",
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        if retry_after is not None and not (
            isinstance(retry_after, int | float) and math.isfinite(retry_after) and retry_after >= 0
        ):
            raise ValueError(
                f"retry_after must be a finite number >= 0 or None, got {retry_after!r}"
            )
        super().__init__(message)
        self.message = message
        self.retryable = type(self).retryable_by_default if retryable is None else bool(retryable)
        self.retry_after = None if retry_after is None else float(retry_after)

    def __repr__(self) -> str:
        parts = [repr(self.message)]
        if self.retryable != type(self).retryable_by_default:
            parts.append(f"retryable={self.retryable!r}")
        if self.retry_after is not None:
            parts.append(f"retry_after={self.retry_after!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive the default BaseException pickling.
        rebuild = functools.partial(
            type(self), self.message, retryable=self.retryable, retry_after=self.retry_after
        )
        return (rebuild, (), self.__dict__.copy())


class ContextPoisoned(InferenceError):
    """The device context (or the process holding it) is broken; a fresh one is needed.

    Retryable: the same request will likely succeed on a rebuilt worker.
    """

    retryable_by_default = True


class OutOfMemory(InferenceError):
    """The device ran out of memory for this unit of work; the context itself is fine.

    Retryable: a smaller batch, or the same one a little later, may fit.
    """

    retryable_by_default = True


class Unrecoverable(InferenceError):
    """Restarting cannot help: no device, no driver, a runner that can never load.

    Not retryable.
    """


class HungWorker(ContextPoisoned):
    """The worker made no progress (a hung kernel, a load that never finished).

    A hung device is as untrustworthy as a poisoned one, so this is a :class:`ContextPoisoned`
    and the default policy restarts the tier. Retryable.
    """


class ChildDied(ContextPoisoned):
    """The child process of a process-isolated worker ended, went silent, or broke protocol.

    A :class:`ContextPoisoned`: the default policy restarts it with a fresh process. Retryable.
    """


class ContinuationMismatch(InferenceError):
    """A request replayed after its tier failed did not reproduce what it had delivered.

    The re-run (same prompt, same seed) produced other tokens or text than the consumer already
    got, so its continuation would be a spliced, wrong stream: the request ends here instead,
    after the output it delivered. The runner is not as deterministic as it says. Not retryable
    as a continuation (a fresh request may still succeed).
    """


class WorkerStopped(InferenceError):
    """The worker stopped (or is draining) before this request could finish.

    Retryable: another worker, or this one restarted, may serve it.
    """

    retryable_by_default = True


class Backpressure(InferenceError):
    """A bounded queue is full; the request was not accepted. Retryable, after ``retry_after``."""

    retryable_by_default = True


class RequestTimeout(InferenceError):
    """The request passed its deadline before it finished. Retryable."""

    retryable_by_default = True


class BadRequest(InferenceError):
    """The request itself is invalid (says what was expected and what was got). Not retryable."""


class ModelNotFound(BadRequest):
    """No worker serves the requested model (a server's 404)."""


class RunnerError(InferenceError):
    """The runner misbehaved or failed with an error that is not one of ours. Not retryable.

    Sent to the requests concerned: a chunk for an unknown or finished request, a batch that
    ended without finishing a request, or a runner exception that is not an InferenceError.
    """


class RateLimited(InferenceError):
    """A remote server answered 429; ``retry_after`` carries its Retry-After. Retryable."""

    retryable_by_default = True


class ServerError(InferenceError):
    """A remote server failed (5xx). Retryable."""

    retryable_by_default = True


class NetworkError(InferenceError):
    """A remote server could not be reached, or the connection broke mid-response. Retryable."""

    retryable_by_default = True


class Unauthorized(InferenceError):
    """A remote server refused the credentials (401/403). Not retryable as it is."""


class CircuitOpen(InferenceError):
    """A circuit breaker is open: the backend failed too often; ``retry_after`` says when it
    will be tried again. Retryable."""

    retryable_by_default = True


class ConfigError(SuperviseError, ValueError):
    """A worker, runner or service was configured wrongly; nothing was started.

    ``problems`` lists every problem found, each naming where it is (a key path or argument).
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


def shown(value: object) -> str:
    """A value for an error message, cut short: a client's or a config's value may be a
    megabyte, or an integer too long for ``repr``."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than str() allows
        bits = value.bit_length() if isinstance(value, int) else 0
        return f"an integer of {bits} bits"
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
