"""The values a :class:`Supervisor` is built from and reports, with their validators.

What to run (:class:`ChildSpec`, :class:`Strategy`), and what a running supervisor says about
itself (:class:`ChildStatus`, :class:`ChildInfo`, :class:`SupervisorStatistics`). They are plain
frozen values: nothing here runs a child.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any, final

import attrs

from ._policy import Policy, RestartType
from ._toolkit import check_readiness_timeout

__all__ = [
    "ChildInfo",
    "ChildSpec",
    "ChildStatus",
    "Strategy",
    "SupervisorStatistics",
    "check_name",
    "check_type",
]


class Strategy(enum.Enum):
    """Which children restart when one fails (OTP's restart strategies)."""

    ONE_FOR_ONE = "one_for_one"
    """Only the failed child."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: the others are stopped, then all start again in order."""
    REST_FOR_ONE = "rest_for_one"
    """The failed child and those started after it."""

    def __repr__(self) -> str:
        return f"Strategy.{self.name}"


class ChildStatus(enum.Enum):
    """Where a supervised child stands."""

    PENDING = "pending"
    """Waiting to be started (its turn in order, or its backoff delay)."""
    STARTING = "starting"
    """Running, not yet ready."""
    RUNNING = "running"
    """Running and ready."""
    STOPPED = "stopped"
    """Ended for good."""


def check_name(instance: Any, attribute: Any, value: Any) -> None:
    """An attrs validator: ``value`` is a non-empty str."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty str, got {value!r}")


def check_type(cls: type) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: the value is an instance of ``cls``."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, cls):
            raise TypeError(f"{attribute.name} must be a {cls.__name__}, got {value!r}")

    return check


def _check_start(instance: Any, attribute: Any, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"start must be an async function taking task_status, got {value!r}")


def _check_shutdown(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"shutdown must be a number of seconds >= 0, got {value!r}")


def _check_timeout(instance: Any, attribute: Any, value: Any) -> None:
    check_readiness_timeout(value)


@final
@attrs.frozen
class ChildSpec:
    """How to run one child of a :class:`Supervisor`.

    Example: ``ChildSpec("cache", run_cache, DEVICE_POLICY, restart=RestartType.TRANSIENT)``.
    """

    name: str = attrs.field(validator=check_name)
    """Unique among the supervisor's children."""
    start: Callable[..., Awaitable[object]] = attrs.field(validator=_check_start)
    """``async def start(*, task_status)``; ``task_status.started(value)`` marks it ready."""
    policy: Policy = attrs.field(validator=check_type(Policy))
    """Its decider and backoff; its own intensity also applies to it."""
    restart: RestartType = attrs.field(
        default=RestartType.PERMANENT, validator=check_type(RestartType)
    )
    """When it is restarted (OTP's restart types)."""
    shutdown: float = attrs.field(default=5.0, validator=_check_shutdown)
    """Seconds it gets to stop once cancelled, before SHUTDOWN_TIMEOUT is reported."""
    readiness_timeout: float | None = attrs.field(default=None, validator=_check_timeout)
    """Seconds an incarnation may take to be ready; past it, it fails with ReadinessTimeout."""
    seed: int = 0
    """Seeds the jitter of its backoff."""


@final
@attrs.frozen
class ChildInfo:
    """One row of :meth:`SupervisorHandle.which_children`."""

    name: str
    """The child's name."""
    status: ChildStatus
    """Where it stands."""
    generation: int
    """Its incarnation, 1 for the first (0 before it ever started)."""
    restart: RestartType
    """Its restart type."""
    value: object
    """What its first incarnation passed to ``task_status.started()``."""


@final
@attrs.frozen
class SupervisorStatistics:
    """A snapshot of a running supervisor."""

    name: str
    """The supervisor's name."""
    strategy: Strategy
    """Its strategy."""
    children: int
    """Children it holds, stopped ones included."""
    running: int
    """Children running and ready."""
    restarts: int
    """Counted restarts since it started."""
    restarts_in_window: int
    """Counted restarts still inside its intensity window."""
    events_dropped: int
    """Events its subscriptions dropped because nobody read them in time."""
