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
from typing import Any, ClassVar

__all__ = [
    "ChildStopped",
    "ContextPoisoned",
    "InferenceError",
    "InvalidPolicy",
    "OutOfMemory",
    "ReadinessTimeout",
    "RestartIntensityExceeded",
    "SuperviseError",
    "TooManyChildren",
    "Unrecoverable",
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


class RestartIntensityExceeded(SuperviseError):
    """More restarts than a policy's :class:`~trio_supervise.RestartIntensity` allows.

    The supervisor gave up; it is raised from (chained to) the last failure.
    """


class InvalidPolicy(SuperviseError, ValueError):
    """A policy value was built with a bad argument; the message says what was expected."""


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
