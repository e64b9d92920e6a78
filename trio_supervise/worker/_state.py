"""Where a worker stands: its states, the only changes between them, and its statistics."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import final

import attrs

from ..tier._breaker import BreakerState

__all__ = ["WORKER_TRANSITIONS", "WorkerState", "WorkerStatistics", "check_transition"]


class WorkerState(enum.Enum):
    """Where a worker stands."""

    STARTING = "starting"
    """A tier is being built and loaded."""
    READY = "ready"
    """Serving."""
    REBUILDING = "rebuilding"
    """``rebuild_session`` is running; no new batch starts."""
    STOPPED = "stopped"
    """Stopped for good (a STOP, or drained and closed); requests get ``WorkerStopped``."""
    FAILED = "failed"
    """Escalated or gave up; requests get ``WorkerStopped``."""


_S = WorkerState
WORKER_TRANSITIONS: tuple[tuple[WorkerState, WorkerState, str], ...] = (
    (_S.STARTING, _S.READY, "the tier loaded its runner"),
    (_S.STARTING, _S.STARTING, "a tier starts loading: the first, or one after a failed load"),
    (_S.READY, _S.STARTING, "the tier failed, or restart(): a new tier loads"),
    (_S.READY, _S.REBUILDING, "rebuild(): the runner rebuilds its session"),
    (_S.REBUILDING, _S.READY, "the session is rebuilt"),
    (_S.REBUILDING, _S.STARTING, "the tier failed while rebuilding: a new tier loads"),
    *((old, _S.STOPPED, "a STOP, a cancel, or drained and closed")
      for old in (_S.STARTING, _S.READY, _S.REBUILDING)),
    *((old, _S.FAILED, "escalated, or gave up") for old in (_S.STARTING, _S.READY, _S.REBUILDING)),
)  # fmt: skip
"""Every change of :attr:`Worker.state` the worker makes: ``(from, to, what causes it)``.

The worker checks each change against this table, and the docs draw the state diagram from it.
"""
_ALLOWED = frozenset((old, new) for old, new, _ in WORKER_TRANSITIONS)
del _S


@final
@attrs.frozen
class WorkerStatistics:
    """A snapshot of a worker."""

    name: str
    """The worker's name."""
    state: WorkerState
    """Where it stands."""
    generation: int
    """Tier incarnations so far."""
    pending: int
    """Batches waiting for the tier."""
    in_flight: int
    """Batches on the tier."""
    accepted: int
    """Requests accepted."""
    finished: int
    """Requests that finished normally."""
    failed: int
    """Requests that ended with an error."""
    cancelled: int
    """Requests their consumer left."""
    requeued: int
    """Request runs queued again after a restart."""
    batches: int
    """Batches dispatched."""
    tokens: int
    """Tokens delivered to request buffers."""
    continued: int = 0
    """Request runs that continue a stream cut by a failure (here, or on another worker)."""
    breaker: BreakerState | None = None
    """The circuit breaker of the current runner (a remote one), or ``None`` without one."""
    mismatched: int = 0
    """Continued requests that ended with ``ContinuationMismatch`` (a replay that differed)."""
    continued_modes: Mapping[str, int] = attrs.field(factory=dict)
    """``continued`` by mode: ``"replay"`` and ``"resume"``."""
    restart_causes: Mapping[str, int] = attrs.field(factory=dict)
    """Counted tier restarts, by the class of the error that caused them."""
    resume_causes: Mapping[str, int] = attrs.field(factory=dict)
    """Uncounted tier restarts (RESUME, an operator's restart), by the class of their error."""
    cuda_errors: Mapping[str, int] = attrs.field(factory=dict)
    """Tier failures that were CUDA errors, by CUDA status."""
    last_restart_cause: str | None = None
    """The class of the error behind the latest restart or resume (None: none yet)."""


def check_transition(name: str, old: WorkerState, new: WorkerState) -> None:
    """Raises ``AssertionError`` for a change that :data:`WORKER_TRANSITIONS` does not list."""
    if (old, new) not in _ALLOWED:
        raise AssertionError(f"worker {name!r}: no transition {old.name} -> {new.name}")
