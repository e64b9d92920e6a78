"""The stable parent worker: the handle callers keep while the device tier below it restarts.

Theory of operation
-------------------
A :class:`Worker` admits requests (:mod:`._admission`: a bounded queue of jobs, the open
requests) and owns its restart policy. ``Worker.run`` runs tier after tier under
:func:`~trio_supervise.supervision.supervise`, ``supervised``'s loop: the only place a tier is
restarted. Each incarnation is given a :class:`~.._port.TierPort` (the queue's receive channel,
the decider, callbacks) and knows nothing else of the worker. The loop hands each decision to
the worker's ``settle`` in line, which settles what the tier left (:mod:`._settlement`: re-queue
what may run again, fail the rest, or stop everything) before the decision's event is emitted.
Observers only observe.

Every accepted request ends exactly once (:mod:`.._requests`). A manual restart is resumed, not
counted: the worker's decider answers RESUME for :class:`RestartRequested`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack, final

import attrs
import trio
from trio_util import AsyncValue

from .._errors import BadRequest, ConfigError, WorkerStopped
from .._types import Batch, RebuildCause, Request
from ..devices import DeviceContext, open_device
from ..devices._cuda_errors import cuda_error_code
from ..supervision import (
    Decision,
    Directive,
    Emitter,
    EventCallback,
    EventKind,
    Policy,
    callbacks,
    leaves,
    supervise,
)
from ..tier._breaker import BreakerState
from ..tier._continuation import CONTINUATION_MODES, Continuation
from ..tier._port import TierCounts, TierPort
from ..tier._requests import RequestStream, error_for_request
from ..tier._tier import RestartRequested, Tier
from ._admission import Admission
from ._children import open_children
from ._decider import WorkerDecider
from ._options import WorkerArguments, WorkerOptions, check_arguments
from ._settlement import requeue, stop_all
from ._state import WORKER_TRANSITIONS, WorkerState, WorkerStatistics, check_transition

if TYPE_CHECKING:
    from ..isolation.process import ChildProcesses
    from ..isolation.ray import RayActors

__all__ = ["WORKER_TRANSITIONS", "Worker", "WorkerState", "WorkerStatistics"]


_ON_EVENT = frozenset({"on_event"})


@final
class Worker:
    """A stable handle on a restartable model runner (see :func:`open_worker`, which takes the
    same arguments; :meth:`from_options` builds one from checked options).

    ``await nursery.start(worker.run)`` returns once the first tier is ready.
    """

    def __init__(
        self,
        runner_factory: str | Callable[..., Any],
        *,
        on_event: EventCallback | Sequence[EventCallback] | None = None,
        **options: Unpack[WorkerArguments],
    ) -> None:
        checked = check_arguments("Worker()", runner_factory, options, also=_ON_EVENT)
        self._setup(checked, on_event)

    @classmethod
    def from_options(
        cls,
        options: WorkerOptions,
        *,
        on_event: EventCallback | Sequence[EventCallback] | None = None,
    ) -> Worker:
        """A worker from options checked already (:meth:`~trio_supervise.WorkerOptions.check`).

        Raises:
            ConfigError: ``options`` is not a ``WorkerOptions``.
        """
        if not isinstance(options, WorkerOptions):
            raise ConfigError(f"options must be a WorkerOptions, got {options!r}")
        worker = cls.__new__(cls)
        worker._setup(options, on_event)
        return worker

    def _setup(
        self, options: WorkerOptions, on_event: EventCallback | Sequence[EventCallback] | None
    ) -> None:
        self._options = options
        self._use_policy(options.policy)
        self.state: AsyncValue[WorkerState] = AsyncValue(WorkerState.STARTING)
        self._emitter = Emitter(options.name, callbacks(on_event))
        self.generation = 0  # tier incarnations so far
        self._admission = Admission(options.name, options.max_pending, options.max_attempts)
        self._counts = TierCounts()  # batches, tokens, resumed: added to by every tier
        self._tier: Tier | None = None
        self._children: ChildProcesses | RayActors | None = None  # process or ray isolation
        self._rebuild_lock = trio.Lock()
        self._running = False
        self._run_scope = trio.CancelScope()  # stop() cancels it, and run() returns
        self.deterministic: bool | None = None
        """Whether the runner says it is ``deterministic`` (None until a tier has loaded)."""
        self.restart_causes = collections.Counter[str]()
        """Counted restarts of the tier, by the class of the error that caused them."""
        self.resume_causes = collections.Counter[str]()
        """Uncounted restarts (RESUME, and :meth:`restart`), by the class of their error."""
        self.cuda_errors = collections.Counter[str]()
        """Tier failures that were CUDA errors, by CUDA status (``"700"``, ``"2"``...)."""
        self.last_restart_cause: str | None = None
        """The class of the error behind the latest restart or resume (None: none yet)."""

    @property
    def options(self) -> WorkerOptions:
        """The checked options this worker was made with."""
        return self._options

    @property
    def name(self) -> str:
        """The worker's name, in events and errors."""
        return self._options.name

    @property
    def isolation(self) -> str:
        """``"inline"``, ``"process"`` or ``"ray"``."""
        return self._options.isolation

    @property
    def max_attempts(self) -> int:
        """Runs of one request in all (re-runs after a restart included)."""
        return self._options.max_attempts

    @property
    def hang_timeout(self) -> float | None:
        """Seconds a batch may go without a chunk before the tier is ``HungWorker``."""
        return self._options.hang_timeout

    @property
    def readiness_timeout(self) -> float | None:
        """Seconds a tier may take to build and load before ``HungWorker``."""
        return self._options.readiness_timeout

    @property
    def drain_timeout(self) -> float:
        """At the end of ``open_worker``, seconds in-flight work gets to finish."""
        return self._options.drain_timeout

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} {self.state.value.name} generation={self.generation}>"

    def _move(self, new: WorkerState) -> None:
        """Change :attr:`state`, as :data:`WORKER_TRANSITIONS` allows."""
        check_transition(self.name, self.state.value, new)
        self.state.value = new

    def _use_policy(self, policy: Policy) -> None:
        self.policy = attrs.evolve(policy, decider=WorkerDecider(policy.decider))

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

    # --- the tier and its restart loop ----------------------------------------------------------

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
            WorkerStopped: :meth:`stop` was called before ``run``.
        """
        if self._running:
            raise RuntimeError(f"worker {self.name!r} is running already")
        self._running = True
        if self.state.value in (WorkerState.STOPPED, WorkerState.FAILED):
            self._admission.check_accepting()  # raises: stopped before it ever ran
        try:
            with self._run_scope:
                if self._options.isolation == "inline":
                    await self._run_tiers(task_status)
                else:  # in a home for child processes (or Ray actors) that outlives each tier
                    async with open_children(self._options) as (children, policy):
                        self._children = children
                        if policy is not None:  # the runner's own, learnt from a probe
                            self._use_policy(policy)
                        await self._run_tiers(task_status)
        except BaseException as exc:
            cancelled = all(isinstance(leaf, trio.Cancelled) for leaf in leaves(exc))
            state = WorkerState.STOPPED if cancelled else WorkerState.FAILED
            self._end(state, "cancelled" if cancelled else "failed")
            raise
        self._end(WorkerState.STOPPED, "stopped")
        if self.deterministic is None and task_status is not trio.TASK_STATUS_IGNORED:
            # stop() before the first tier was ready: nursery.start(run) gets why, not Trio's
            # "never called started".
            raise WorkerStopped(
                f"worker {self.name!r} {self._admission.stopped_reason} before it was ready"
            )

    async def _run_tiers(self, task_status: trio.TaskStatus[Worker]) -> None:
        """Tier after tier under the policy; each decision is settled before its event."""
        await supervise(
            self._tier_incarnation, self.policy, name=self.name, emitter=self._emitter,
            task_status=task_status, settle=self._settle,
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

        o = self._options
        port = TierPort(
            o.name, generation, self._admission.queue.receive, o.factory, o.runner_args,
            self.open_device, o.readiness_timeout, o.hang_timeout, self.policy.decide,
            self._counts, ready, breaker_changed,
        )  # fmt: skip
        tier = Tier(port) if self._children is None else self._children.tier(port)
        self._tier = tier
        await tier.run()

    def _settle(self, decision: Decision, error: Exception | None) -> None:
        """Settle what the tier that ended left, as ``decision`` says (before its event)."""
        directive = decision.directive
        if error is not None:
            code = cuda_error_code(error)
            if code is not None:
                self.cuda_errors[code] += 1
        if directive is Directive.STOP or directive is Directive.ESCALATE:  # or it gave up
            stopped = directive is Directive.STOP
            state = WorkerState.STOPPED if stopped else WorkerState.FAILED
            self._end(state, "stopped" if stopped else "failed")
            return
        cause = "return" if error is None else type(error).__name__
        self.last_restart_cause = cause
        if directive is Directive.RESTART:
            self.restart_causes[cause] += 1
        else:
            self.resume_causes[cause] += 1
        if self._tier is not None:  # RESTART or RESUME: re-queue first what may run again
            requeue(self._admission, self._tier.take_unsettled(), error, self.deterministic)

    def _end(self, state: WorkerState, reason: str) -> None:
        """No more requests: the failing batch's get their own error, the rest WorkerStopped."""
        if self.state.value not in (WorkerState.STOPPED, WorkerState.FAILED):
            self._move(state)
            self._admission.stopped_reason = reason
        tier = self._tier
        stop_all(self._admission, () if tier is None else tier.take_unsettled()[0], reason)

    def stop(self, reason: str = "stopped") -> None:
        """Stop for good, now: accept no more requests and end every open one, then end ``run``.

        The batch whose failure ended the tier, if any, gets its own error; every other open
        request fails with ``WorkerStopped`` ("worker 'name' <reason> before request 'id'
        finished"). The state becomes STOPPED (unless it is STOPPED or FAILED already); ``run``
        returns once the tier is torn down. :meth:`drain` first for a graceful end.
        """
        if not isinstance(reason, str):
            raise BadRequest(f"reason must be a str, got {reason!r}")
        self._end(WorkerState.STOPPED, reason)
        self._run_scope.cancel()

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
            self._move(WorkerState.REBUILDING)
            try:
                await tier.rebuild_session(cause)
            except Exception as error:  # classified, and chained to what the runner raised
                raise error_for_request(error) from (error.__cause__ or error)
            finally:
                if tier.fatal is None and self.state.value is WorkerState.REBUILDING:
                    self._move(WorkerState.READY)

    async def restart(self) -> None:
        """Restart the tier gracefully: no new batch starts, running ones finish, then a fresh
        runner is built. Not counted against the restart intensity. Returns once it is ready."""
        async with self._rebuild_lock:
            tier = await self._ready_tier()
            await tier.quiesce()  # batches taken already run to their end
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

    # --- where it stands ------------------------------------------------------------------------

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
            mismatched=counts["mismatched"],
            continued_modes={mode: counts[f"continued {mode}"] for mode in CONTINUATION_MODES},
            restart_causes=dict(self.restart_causes),
            resume_causes=dict(self.resume_causes),
            cuda_errors=dict(self.cuda_errors),
            last_restart_cause=self.last_restart_cause,
        )

    def open_requests(self) -> int:
        """Requests accepted that have not ended: waiting for the tier, or running on it."""
        return len(self._admission.open)

    @property
    def concurrency(self) -> int:
        """How many batches the current tier runs at once (its runner's ``max_concurrency``;
        1 before a tier has loaded one)."""
        return 1 if self._tier is None else self._tier.concurrency

    def running_requests(self) -> int:
        """Requests open in the batches the tier runs now."""
        tier = self._tier
        if tier is None:
            return 0
        return sum(len(job.open_states()) for job in tier.in_flight)

    @property
    def breaker_state(self) -> BreakerState | None:
        """The current runner's circuit breaker state (a runner with ``runner.breaker``), else
        ``None``."""
        return None if self._tier is None else self._tier.breaker_state

    def placement(self) -> dict[str, Any]:
        """Where the current tier's runner runs: ``{}`` in this process (or before a tier
        exists); a child process's ``pid``; a Ray actor's ``actor_id``, ``name``, ``node_id``,
        ``node_ip`` and ``pid``."""
        return {} if self._tier is None else self._tier.placement()
