"""The boundary between a worker and its tier: what crosses it, in which direction.

A worker (:mod:`trio_supervise.worker`) builds one :class:`TierPort` per tier incarnation; the
tier (:mod:`._tier`, whatever its home) is given that and nothing else of its parent, and
imports nothing from the parent's modules.

* Down, on a memory channel: :class:`Job`\\ s, each one batch of accepted requests
  (:class:`~._requests.RequestState`), in the order they were accepted; jobs re-queued after a
  restart come first (the worker hands the next incarnation a fresh channel with them at its
  head).
* Up, per request: the tier pushes each chunk into that request's own ``RequestState``, the
  consumer's buffer, so the runner never waits for a consumer and a chunk costs no channel hop.
* Up, once per event: the port's callbacks (the tier is ready, and whether its runner is
  deterministic; a runner's breaker changed) and the :class:`TierCounts` that every
  incarnation adds to.
* What the worker reads of a tier after it ended: which jobs were in flight on it
  (``tier.in_flight``) and the batch whose failure ended it (``job.error``), to settle them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from ..devices import DeviceContext
from ..supervision import Directive
from ._breaker import BreakerState
from ._requests import RequestState

__all__ = ["Job", "TierCounts", "TierPort"]


class Job:
    """A batch of accepted requests, waiting for a tier or running on one."""

    __slots__ = ("error", "generation", "seq", "states")

    def __init__(self, states: list[RequestState]) -> None:
        self.states = states
        self.seq: int | None = None  # the worker-wide batch number, stamped at dispatch
        self.generation: int | None = None  # the incarnation that took it
        self.error: BaseException | None = None  # set when its failure ended the tier

    def __repr__(self) -> str:
        return f"<Job seq={self.seq} {[s.id for s in self.states]}>"

    def open_states(self) -> list[RequestState]:
        """Its requests that have no outcome yet."""
        return [s for s in self.states if s.open]


@attrs.define(eq=False)
class TierCounts:
    """Counters that every incarnation of one worker's tier adds to; the worker reads them."""

    batches: int = 0
    """Batches dispatched; also the next batch's ``seq`` (worker-wide, 0-based)."""
    tokens: int = 0
    """Tokens delivered to request buffers."""
    resumed: int = 0
    """Batches whose failure the policy resumed."""


@attrs.frozen(eq=False)
class TierPort:
    """Everything one tier incarnation gets from its worker (see the module docstring)."""

    name: str
    """The worker's name, for logs."""
    generation: int
    """Which incarnation this is (1 for the first)."""
    jobs: trio.MemoryReceiveChannel[Job]
    """The jobs to run, in order; a job whose requests all ended while it waited is skipped."""
    factory: Callable[..., Any]
    """Builds the runner: ``factory(**runner_args)`` (an inline tier only)."""
    runner_args: Mapping[str, Any]
    """The factory's keyword arguments."""
    open_device: Callable[[], DeviceContext]
    """A new device context for a runner that needs one (an inline tier only)."""
    readiness_timeout: float | None
    """Seconds to build and load before :class:`~._errors.HungWorker`."""
    hang_timeout: float | None
    """Seconds a batch may go without a chunk before :class:`~._errors.HungWorker`."""
    decide: Callable[[Exception], Directive]
    """The worker's decider, for a batch's failure (RESUME fails only that batch)."""
    counts: TierCounts
    """Shared with every incarnation of this worker."""
    ready: Callable[[bool], None]
    """Called once, when the runner has loaded, with whether it is ``deterministic``: the worker
    is READY."""
    breaker_changed: Callable[[BreakerState, BreakerState], None]
    """Called with ``(old, new)`` when the runner's circuit breaker changes state."""
