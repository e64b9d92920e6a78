"""The error taxonomy: what can go wrong, and whether a retry is worthwhile.

Every error this library raises derives from :class:`SuperviseError`. Errors about a unit of
work (a request, a batch, a worker) derive from :class:`InferenceError`, which carries
``retryable`` (is it worth sending the same request again?) and ``retry_after`` (how many
seconds to wait first, if the raiser knows). Misuse by the caller (a bad policy, a bad config)
also derives from :class:`ValueError`.

This is the bottom layer: it imports nothing of the library.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any, ClassVar

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
    "classify_cuda_error",
]


class SuperviseError(Exception):
    """The root of every error raised by trio-supervise."""


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


class RestartIntensityExceeded(SuperviseError):
    """More restarts than a policy's :class:`~trio_supervise.RestartIntensity` allows.

    The supervisor gave up; it is raised from (chained to) the last failure.
    """


class InvalidPolicy(SuperviseError, ValueError):
    """A policy value was built with a bad argument; the message says what was expected."""


class ConfigError(SuperviseError, ValueError):
    """A worker, runner or service was configured wrongly; nothing was started.

    ``problems`` lists every problem found, each naming where it is (a key path or argument).
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


class ChildStopped(SuperviseError):
    """A supervised child stopped for good before it was ready, or was not there to be awaited.

    Raised by ``nursery.start(supervised(...))`` and ``start_child`` instead of Trio's
    "never called started", chained to the failure that stopped the child, if any.
    """


class ReadinessTimeout(SuperviseError):
    """A child did not report ready (``task_status.started()``) within its readiness timeout.

    It is a failure like any other, decided by the child's policy.
    """


class TooManyChildren(SuperviseError):
    """A supervisor already runs its ``max_children`` children."""


# CUDA status codes (runtime and driver share these numbers) that leave the context unusable:
# illegal address, launch timeout, launch failure, illegal instruction, misaligned address,
# invalid address space, invalid pc, hardware stack error, ECC and NVLink errors, unknown.
STICKY_CUDA_STATUSES = frozenset(
    {700, 702, 710, 714, 715, 716, 717, 718, 719, 721, 226, 214, 220, 999}
)
OOM_CUDA_STATUSES = frozenset({2})
NO_DEVICE_CUDA_STATUSES = frozenset({35, 100})


def classify_cuda_error(exc: BaseException) -> BaseException:
    """Map a CuPy/CUDA exception to this library's taxonomy; return anything else unchanged.

    ``CUDARuntimeError`` and ``CUDADriverError`` are recognised by their class name and
    ``.status`` (duck-typed: a driver error cannot even be built without ``libcuda``). Sticky
    codes become :class:`ContextPoisoned`, status 2 and CuPy's ``OutOfMemoryError`` become
    :class:`OutOfMemory`, no device or driver (35, 100) becomes :class:`Unrecoverable`. The new
    error is chained to the original (``__cause__``).
    """
    if isinstance(exc, InferenceError):
        return exc
    name = type(exc).__name__
    mapped: InferenceError | None = None
    if name == "OutOfMemoryError" and type(exc).__module__.startswith("cupy"):
        mapped = OutOfMemory(str(exc))
    elif name in ("CUDARuntimeError", "CUDADriverError"):
        status = getattr(exc, "status", None)
        if status in STICKY_CUDA_STATUSES:
            mapped = ContextPoisoned(f"sticky CUDA error {status}: {exc}")
        elif status in OOM_CUDA_STATUSES:
            mapped = OutOfMemory(f"CUDA out of memory ({status}): {exc}")
        elif status in NO_DEVICE_CUDA_STATUSES:
            mapped = Unrecoverable(f"no usable CUDA device or driver ({status}): {exc}")
    if mapped is None:
        return exc
    mapped.__cause__ = exc
    return mapped


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a sticky CUDA error (one that
    poisons the whole process, so that only a fresh process can use the device again)."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in ("CUDARuntimeError", "CUDADriverError") and (
            getattr(seen, "status", None) in STICKY_CUDA_STATUSES
        ):
            return True
        seen = seen.__cause__
    return False


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions in ``exc``, however deep in exception groups (``exc`` itself if it is
    not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def shown(value: object) -> str:
    """A value for an error message, cut short: a client's or a config's value may be a
    megabyte, or an integer too long for ``repr``."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than str() allows
        bits = value.bit_length() if isinstance(value, int) else 0
        return f"an integer of {bits} bits"
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
