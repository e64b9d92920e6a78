"""The stable parent worker: the handle callers keep while the device tier below it restarts.

Theory of operation
-------------------
A :class:`Worker` admits requests (:mod:`._admission`: a bounded queue of jobs, the open
requests) and owns its restart policy. ``Worker.run`` runs the child tier (:mod:`._tier`, or
:mod:`.isolation.process`) under :func:`supervised`: that is the only place a tier is restarted.
Each incarnation is given a :class:`~._port.TierPort` (the queue's receive channel, the
decider, callbacks) and knows nothing else of the worker. The worker learns each decision from
the supervision events and settles what was in flight on the tier that ended
(:mod:`._settlement`): re-queue what may run again, fail the rest.

Every accepted request ends exactly once (:mod:`._requests`). A manual restart is resumed, not
counted: the worker's decider answers RESUME for :class:`RestartRequested`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, final

import attrs
import trio
from trio_util import AsyncValue

from .._errors import BadRequest
from .._types import Batch, RebuildCause, Request
from ..devices import DeviceContext, open_device
from ..devices._cuda_errors import classify_cuda_error
from ..supervision import (
    Decider,
    Directive,
    Emitter,
    EventCallback,
    EventKind,
    Policy,
    SupervisionEvent,
    callbacks,
    decide,
    supervised,
)
from ..tier._breaker import BreakerState
from ..tier._continuation import Continuation
from ..tier._port import Job, TierCounts, TierPort
from ..tier._requests import RequestStream, error_for_request
from ..tier._tier import RestartRequested, Tier
from ._admission import Admission
from ._options import check_options
from ._settlement import settle_restart, settle_stop
from ._state import WORKER_TRANSITIONS, WorkerState, WorkerStatistics, check_transition

if TYPE_CHECKING:
    from ..isolation.process import ChildProcesses, ProcessSpec
    from ..isolation.ray import RayActors

__all__ = ["WORKER_TRANSITIONS", "Worker", "WorkerState", "WorkerStatistics"]

logger = logging.getLogger("trio_supervise")


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is trio.Cancelled, alone or in groups of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(leaf) for leaf in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


@attrs.define(frozen=True)
class _WorkerDecider:
    """The worker's decider: an operator restart is resumed (uncounted), the rest as given."""

    inner: Decider

    def __call__(self, exc: Exception) -> Directive:
        if isinstance(exc, RestartRequested):
            return Directive.RESUME
        return decide(self.inner, exc)

    def __repr__(self) -> str:
        return repr(self.inner)


@final
class Worker:
    """A stable handle on a restartable model runner (see :func:`open_worker`).

    ``await nursery.start(worker.run)`` returns once the first tier is ready.
    """

    def __init__(
        self,
        runner_factory: str | Callable[..., Any],
        *,
        runner_args: Mapping[str, Any] | None = None,
        device: str | Callable[[], DeviceContext] = "auto",
        policy: Policy | None = None,
        max_pending: int = 1024,
        max_attempts: int = 2,
        hang_timeout: float | None = None,
        readiness_timeout: float | None = None,
        drain_timeout: float = 30.0,
        name: str | None = None,
        isolation: str = "inline",
        heartbeat_timeout: float = 10.0,
        standby: bool = False,
        standby_load: bool = False,
        ray_options: Mapping[str, Any] | None = None,
        ray_address: str | None = None,
        on_event: EventCallback | Sequence[EventCallback] | None = None,
    ) -> None:
        o = self._options = check_options(
            runner_factory, runner_args=runner_args, device=device, policy=policy,
            max_pending=max_pending, max_attempts=max_attempts, hang_timeout=hang_timeout,
            readiness_timeout=readiness_timeout, drain_timeout=drain_timeout, name=name,
            isolation=isolation, heartbeat_timeout=heartbeat_timeout, standby=standby,
            standby_load=standby_load, ray_options=ray_options, ray_address=ray_address,
        )  # fmt: skip
        self.name, self.isolation, self.factory = o.name, o.isolation, o.factory
        self.runner_args, self.max_attempts = o.runner_args, o.max_attempts
        self.hang_timeout, self.readiness_timeout = o.hang_timeout, o.readiness_timeout
        self.drain_timeout = o.drain_timeout
        self._use_policy(o.policy)
        self.state: AsyncValue[WorkerState] = AsyncValue(WorkerState.STARTING)
        self._on_event_callbacks = callbacks(on_event)
        self._emitter = Emitter(self.name, self._on_event_callbacks)  # events of its own
        self.generation = 0
        self._admission = Admission(self.name, o.max_pending, o.max_attempts)
        self._counts = TierCounts()  # batches, tokens, resumed: added to by every tier
        self._tier: Tier | None = None
        self._children: ChildProcesses | RayActors | None = None  # process or ray isolation
        self._rebuild_lock = trio.Lock()
        self._running = False
        self.deterministic: bool | None = None
        """Whether the runner says it is ``deterministic`` (None until a tier has loaded)."""
        self.restart_causes = collections.Counter[str]()
        """Counted restarts of the tier, by the class of the error that caused them."""

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} {self.state.value.name} generation={self.generation}>"

    def _move(self, new: WorkerState) -> None:
        """Change :attr:`state`, as :data:`WORKER_TRANSITIONS` allows."""
        check_transition(self.name, self.state.value, new)
        self.state.value = new

    def _use_policy(self, policy: Policy) -> None:
        self.policy = attrs.evolve(policy, decider=_WorkerDecider(policy.decider))

    # --- requests -------------------------------------------------------------------------------

    def generate(self, request: Request) -> RequestStream:
        """Submit one request (a batch of one); read its chunks from the returned stream.

        Raises:
            BadRequest: not a Request, or its id is already in flight here.
            Backpressure: ``max_pending`` batches are waiting already.
            WorkerStopped: the worker is stopped, failed or draining.
        """
        if not isinstance(request, Request):
            raise BadRequest(f"generate takes a Request, got {request!r}")
        return self._admission.submit((request,))[0]

    def submit(
        self, batch: Batch, *, continuing: Mapping[str, Continuation] | None = None
    ) -> tuple[RequestStream, ...]:
        """Submit exactly this batch; one stream per request, in order.

        The worker stamps its own ``seq`` on the batch when it dispatches it. ``continuing``
        maps a request id to what its stream delivered on another worker
        (:meth:`RequestStream.carry`, after that stream failed): its stream here goes on from
        there (what a pool does when a replica stops mid-stream).
        """
        if not isinstance(batch, Batch):
            raise BadRequest(f"submit takes a Batch, got {batch!r}")
        return self._admission.submit(batch.requests, continuing)

    # --- the tier and its supervision -----------------------------------------------------------

    def open_device(self) -> DeviceContext:
        """A new device context for a tier."""
        device = self._options.device
        return device() if callable(device) else open_device(device)

    async def run(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the tier under the policy until stopped; ``nursery.start`` returns when ready.

        Raises:
            RestartIntensityExceeded: too many restarts (chained to the last failure).
            Exception: a runner error the policy escalated.
            ChildStopped: the first tier stopped before it was ever ready.
        """
        if self._running:
            raise RuntimeError(f"worker {self.name!r} is running already")
        self._running = True
        try:
            if self.isolation == "inline":
                await self._supervise(task_status)
            else:
                await self._supervise_processes(task_status)
        except BaseException as exc:
            reason = "cancelled" if _is_cancellation(exc) else "failed"
            self._stop_everything(
                WorkerState.FAILED if reason == "failed" else WorkerState.STOPPED, reason
            )
            raise
        self._stop_everything(WorkerState.STOPPED, "stopped")

    async def _supervise(self, task_status: trio.TaskStatus[Worker]) -> None:
        run_tiers = supervised(
            self._tier_incarnation,
            self.policy,
            name=self.name,
            on_event=(self._on_event, *self._on_event_callbacks),
        )
        await run_tiers(task_status=task_status)

    async def _supervise_processes(self, task_status: trio.TaskStatus[Worker]) -> None:
        """As _supervise, with a place for child processes (or Ray actors) that outlives each
        tier."""
        from ..isolation import _frames

        home: contextlib.AbstractAsyncContextManager[ChildProcesses | RayActors]
        if self.isolation == "ray":
            from ..isolation.ray import RayActors, RaySpec

            o = self._options
            home = RayActors.open(RaySpec(self._process_spec(), o.ray_options, o.ray_address))
        else:
            from ..isolation.process import ChildProcesses

            home = ChildProcesses.open(self._process_spec())
        async with home as children:
            self._children = children
            if self._options.probe_policy:
                ready = await children.probe()
                if ready.policy is not None:
                    self._use_policy(_frames.policy_from_data(ready.policy))
            children.replenish_spare()
            await self._supervise(task_status)

    def _process_spec(self) -> ProcessSpec:
        from ..isolation.process import ProcessSpec

        o = self._options
        assert isinstance(o.device, str)
        return ProcessSpec(
            o.name, o.factory_path, o.runner_args, o.device, o.readiness_timeout,
            o.heartbeat_timeout, o.standby, o.standby_load,
        )  # fmt: skip

    async def _tier_incarnation(self, *, task_status: trio.TaskStatus[Worker]) -> None:
        """One incarnation of the tier, given its port; it reports back only through that."""
        self.generation += 1
        generation = self.generation
        self._move(WorkerState.STARTING)

        def ready(deterministic: bool) -> None:
            self.deterministic = self._admission.deterministic = deterministic
            self._move(WorkerState.READY)
            task_status.started(self)

        def breaker_changed(old: BreakerState, new: BreakerState) -> None:
            self._emitter.emit(
                self.name, generation, EventKind.BREAKER_CHANGED,
                reason=f"circuit breaker {old.value} -> {new.value}",
            )  # fmt: skip

        port = TierPort(
            self.name, generation, self._admission.queue.receive, self.factory,
            self.runner_args, self.open_device, self.readiness_timeout, self.hang_timeout,
            self.policy.decide, self._counts, ready, breaker_changed,
        )  # fmt: skip
        tier = Tier(port) if self._children is None else self._children.tier(port)
        self._tier = tier
        await tier.run()

    def _on_event(self, event: SupervisionEvent) -> None:
        kind = event.kind
        if kind is EventKind.RESTARTING:
            cause = "return" if event.error is None else type(event.error).__name__
            self.restart_causes[cause] += 1
        if kind in (EventKind.RESTARTING, EventKind.RESUMED):
            self._settle_after_restart(event.error)
        elif kind in (EventKind.STOPPED, EventKind.ESCALATED, EventKind.GAVE_UP):
            state = WorkerState.STOPPED if kind is EventKind.STOPPED else WorkerState.FAILED
            self._stop_everything(state, "stopped" if kind is EventKind.STOPPED else "failed")

    def _settle_after_restart(self, error: BaseException | None) -> None:
        """The tier restarts: re-queue what may run again, first; fail the rest."""
        tier = self._tier
        if tier is None:
            return
        again, continued = settle_restart(
            tier.in_flight, error, self.max_attempts, self.deterministic
        )
        first = [Job(again)] if again else []
        if tier.held is not None:  # never left the queue: it goes back right behind them
            first.append(tier.held)
        tier.in_flight.clear()
        tier.held = None
        if again:
            self._admission.counts["requeued"] += len(again)
            self._admission.counts["continued"] += continued
        if first:
            self._admission.queue.put_first(first)

    def _stop_everything(self, state: WorkerState, reason: str) -> None:
        """No more requests: the failing batch's get their own error, the rest WorkerStopped."""
        admission = self._admission
        if self.state.value not in (WorkerState.STOPPED, WorkerState.FAILED):
            self._move(state)
            admission.stopped_reason = reason
        admission.accepting = False
        tier = self._tier
        settle_stop(() if tier is None else tier.in_flight, admission.open.values(), self.name,
                    reason)  # fmt: skip
        if tier is not None:
            tier.in_flight.clear()
            tier.held = None
        admission.queue.clear()

    # --- operator commands ----------------------------------------------------------------------

    async def _ready_tier(self) -> Tier:
        while True:
            self._admission.check_accepting()
            tier = self._tier
            if (
                tier is not None
                and self.state.value in (WorkerState.READY, WorkerState.REBUILDING)
                and tier.fatal is None
            ):
                return tier
            await self.state.wait_transition()

    async def rebuild(self, cause: RebuildCause = RebuildCause.MANUAL) -> None:
        """Call the runner's ``rebuild_session(cause)``: never concurrently with itself, and no
        new batch starts meanwhile (batches already streaming go on).

        A rebuild that raises is decided by the policy like any failure (RESUME: the error is
        only raised here; otherwise the tier ends too) and raised here as a typed error.
        """
        if not isinstance(cause, RebuildCause):
            raise BadRequest(f"cause must be a RebuildCause, got {cause!r}")
        async with self._rebuild_lock:
            tier = await self._ready_tier()
            tier.dispatch_gate.close()
            tier.execute_gate.close()
            self._move(WorkerState.REBUILDING)
            try:
                await tier.runner.rebuild_session(cause)
            except Exception as exc:
                error = classify_cuda_error(exc)
                if self.policy.decide(error) is not Directive.RESUME:  # type: ignore[arg-type]
                    tier.fail(error)
                raise error_for_request(error) from exc
            finally:
                tier.execute_gate.open()
                tier.dispatch_gate.open()
                if tier.fatal is None and self.state.value is WorkerState.REBUILDING:
                    self._move(WorkerState.READY)

    async def restart(self) -> None:
        """Restart the tier gracefully: no new batch starts, running ones finish, then a fresh
        runner is built. Not counted against the restart intensity. Returns once it is ready."""
        async with self._rebuild_lock:
            tier = await self._ready_tier()
            tier.dispatch_gate.close()  # batches taken already run to their end
            await tier.idle.wait()
            old = self.generation
            tier.fail(RestartRequested(f"worker {self.name!r}: restart requested"))
            while not (self.generation > old and self.state.value is WorkerState.READY):
                self._admission.check_accepting()
                await self.state.wait_transition()

    async def drain(self) -> None:
        """Accept no new request, and wait until every accepted one has ended."""
        admission = self._admission
        if admission.accepting:
            admission.accepting = False
            admission.stopped_reason = "draining"
        await admission.idle.wait()

    def statistics(self) -> WorkerStatistics:
        """Counts of requests, batches and tokens."""
        counts, tier = self._admission.counts, self._tier
        return WorkerStatistics(
            name=self.name,
            state=self.state.value,
            generation=self.generation,
            pending=len(self._admission.queue) + (tier is not None and tier.held is not None),
            in_flight=0 if tier is None else len(tier.in_flight),
            accepted=counts["accepted"],
            finished=counts["finished"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            requeued=counts["requeued"],
            continued=counts["continued"],
            batches=self._counts.batches,
            tokens=self._counts.tokens,
            breaker=self.breaker_state,
        )

    @property
    def breaker_state(self) -> BreakerState | None:
        """The current runner's circuit breaker state (inline isolation), else ``None``."""
        breaker = getattr(getattr(self._tier, "runner", None), "breaker", None)
        state = getattr(breaker, "state", None)
        return state if isinstance(state, BreakerState) else None
