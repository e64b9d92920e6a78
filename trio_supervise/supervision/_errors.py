"""The errors of supervision itself: generic, they know nothing of inference.

:mod:`trio_supervise._errors` builds the library's whole taxonomy on :class:`SuperviseError`.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = [
    "ChildStopped",
    "InvalidPolicy",
    "ReadinessTimeout",
    "RestartIntensityExceeded",
    "SuperviseError",
    "TooManyChildren",
    "leaves",
]


class SuperviseError(Exception):
    """The root of every error raised by trio-supervise."""


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


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions in ``exc``, however deep in exception groups (``exc`` itself if it is
    not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc
