"""The stable parent worker: the handle callers keep while the device tier below it restarts.

Theory of operation
-------------------
A :class:`Worker` owns a bounded queue of jobs (batches waiting for the tier), the requests it
has accepted, and its restart policy. ``Worker.run`` runs the child tier (:mod:`._tier`) under
:func:`supervised`: that is the only place a tier is restarted. The worker learns each decision
from the supervision events and settles the requests that were in flight on the tier that ended:

* RESTART (or an operator restart): an idempotent request that got no chunk yet is queued again
  at the head (at most ``max_attempts`` runs in all); any other gets ``ContextPoisoned``.
* STOP, ESCALATE, give-up: the failing batch's requests get their own copy of the error, every
  other request ``WorkerStopped``, and so does every later one.

Every accepted request ends exactly once (:mod:`._requests`). A manual restart is resumed, not
counted: the worker's decider answers RESUME for :class:`RestartRequested`.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import math
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, final

import attrs
import msgspec
import trio
from trio_util import AsyncValue

from ._breaker import BreakerState
from ._errors import (
    Backpressure,
    BadRequest,
    ConfigError,
    ContextPoisoned,
    WorkerStopped,
    classify_cuda_error,
)
from ._events import Emitter, EventKind, SupervisionEvent
from ._policy import DEVICE_POLICY, Decider, Directive, Policy, decide
from ._requests import RequestState, RequestStream, error_for_request
from ._runner import resolve_factory, runner_attributes
from ._supervised import EventCallback, callbacks, supervised
from ._tier import Job, RestartRequested, Tier
from ._types import Batch, RebuildCause, Request
from .devices import DeviceContext, open_device

__all__ = ["WORKER_TRANSITIONS", "Worker", "WorkerState", "WorkerStatistics", "open_worker"]

logger = logging.getLogger("trio_supervise")


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is trio.Cancelled, alone or in groups of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(leaf) for leaf in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _unavailable_in_parent(**kwargs: Any) -> Any:
    raise AssertionError("a process-isolated worker builds its runner in the child")


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
    breaker: BreakerState | None = None
    """The circuit breaker of the current runner (a remote one), or ``None`` without one."""


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


def _positive(name: str, value: object, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(
            f"{name} must be a number > 0{' or None' if allow_none else ''}, got {value!r}"
        )
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return float(value)


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
        on_event: EventCallback | Sequence[EventCallback] | None = None,
    ) -> None:
        if isolation not in ("inline", "process"):
            raise ConfigError(f"isolation must be 'inline' or 'process', got {isolation!r}")
        self.isolation = isolation
        if isolation == "process":
            if not isinstance(runner_factory, str):
                raise ConfigError(
                    "isolation='process' takes the runner factory as an import path "
                    "'module:factory' (the parent never imports the runner), "
                    f"got {runner_factory!r}"
                )
            if not isinstance(device, str):
                raise ConfigError(f"isolation='process' takes the device as a str, got {device!r}")
            self.factory_path = runner_factory
            self.factory: Callable[..., Any] = _unavailable_in_parent
        else:
            self.factory = resolve_factory(runner_factory)
            self.factory_path = ""
        if runner_args is not None and not isinstance(runner_args, Mapping):
            raise ConfigError(
                f"runner_args must be a mapping of keyword arguments, got {runner_args!r}"
            )
        self.runner_args = dict(runner_args or {})
        if isolation == "process":
            try:
                msgspec.msgpack.encode(self.runner_args)
            except (TypeError, msgspec.EncodeError) as exc:
                raise ConfigError(
                    "runner_args must be plain data that msgspec can encode for a child "
                    f"process: {exc}"
                ) from exc
        if not (callable(device) or isinstance(device, str)):
            raise ConfigError(
                f"device must be 'auto', 'cpu', 'cuda:N' or a callable, got {device!r}"
            )
        if isinstance(device, str) and not (
            device in ("auto", "cpu") or (device.startswith("cuda:") and device[5:].isdigit())
        ):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda:N', got {device!r}")
        self._device = device
        self.device_spec = device if isinstance(device, str) else ""
        # A process-isolated runner is never imported here: DEVICE_POLICY unless one is given.
        _, default_policy, _ = (
            runner_attributes(self.factory) if isolation == "inline" else (1, None, True)
        )
        chosen = policy if policy is not None else default_policy or DEVICE_POLICY
        if not isinstance(chosen, Policy):
            raise ConfigError(f"policy must be a Policy or None, got {policy!r}")
        self._use_policy(chosen)
        # A process-isolated runner's own default_policy is learnt from a probe child in run().
        self._probe_policy = isolation == "process" and policy is None
        for label, value in (("max_pending", max_pending), ("max_attempts", max_attempts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label} must be an int >= 1, got {value!r}")
        self.max_pending = max_pending
        self.max_attempts = max_attempts
        self.hang_timeout = _positive("hang_timeout", hang_timeout)
        self.readiness_timeout = _positive("readiness_timeout", readiness_timeout)
        self.drain_timeout = _positive("drain_timeout", drain_timeout, allow_none=False)
        self.heartbeat_timeout = _positive("heartbeat_timeout", heartbeat_timeout, allow_none=False)
        if (standby or standby_load) and isolation != "process":
            raise ConfigError("standby and standby_load need isolation='process'")
        self.standby = bool(standby or standby_load)
        self.standby_load = bool(standby_load)
        self._children: trio.Nursery | None = None  # where child processes run
        self._spare: Any = None  # a parked ChildProcess, with standby
        self._parking = False
        self._spare_parked = trio.Event()  # set (and replaced) each time a spare is parked
        default_name = runner_factory.rpartition(":")[2] if isinstance(runner_factory, str) else ""
        self.name: str = name or default_name or str(getattr(self.factory, "__name__", "worker"))
        self.state: AsyncValue[WorkerState] = AsyncValue(WorkerState.STARTING)
        self._on_event_callbacks = callbacks(on_event)
        self._emitter = Emitter(self.name, self._on_event_callbacks)  # events of its own
        self.generation = 0
        self._queue: collections.deque[Job] = collections.deque()
        self._queue_lot = trio.lowlevel.ParkingLot()
        self._in_flight: set[Job] = set()
        self._open: dict[str, RequestState] = {}
        self._idle = trio.Event()
        self._idle.set()
        self._accepting = True
        self._stopped_reason: str | None = None
        self._tier: Tier | None = None
        self._rebuild_lock = trio.Lock()
        self._seq = 0
        self._counts = collections.Counter[str]()
        self._running = False
        self.tokens = 0  # delivered to request buffers (the tier counts them)
        self.restart_causes = collections.Counter[str]()
        """Counted restarts of the tier, by the class of the error that caused them."""

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} {self.state.value.name} generation={self.generation}>"

    def _move(self, new: WorkerState) -> None:
        """Change :attr:`state`, as :data:`WORKER_TRANSITIONS` allows."""
        old = self.state.value
        if (old, new) not in _ALLOWED:
            raise AssertionError(f"worker {self.name!r}: no transition {old.name} -> {new.name}")
        self.state.value = new

    def _breaker_changed(self, generation: int, old: BreakerState, new: BreakerState) -> None:
        """The runner's circuit breaker changed state: an event (BREAKER_CHANGED)."""
        self._emitter.emit(
            self.name, generation, EventKind.BREAKER_CHANGED,
            reason=f"circuit breaker {old.value} -> {new.value}",
        )  # fmt: skip

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
        return self._submit((request,))[0]

    def submit(self, batch: Batch) -> tuple[RequestStream, ...]:
        """Submit exactly this batch; one stream per request, in order.

        The worker stamps its own ``seq`` on the batch when it dispatches it.
        """
        if not isinstance(batch, Batch):
            raise BadRequest(f"submit takes a Batch, got {batch!r}")
        return self._submit(batch.requests)

    def _submit(self, requests: tuple[Request, ...]) -> tuple[RequestStream, ...]:
        self._check_accepting()
        for request in requests:
            if request.id in self._open:
                raise BadRequest(f"request id {request.id!r} is already in flight on {self.name!r}")
        if len(self._queue) >= self.max_pending:
            raise Backpressure(
                f"{self.name!r} has max_pending={self.max_pending} batches waiting already"
            )
        states = [RequestState(request, self._request_ended) for request in requests]
        for state in states:
            self._open[state.id] = state
        self._counts["accepted"] += len(states)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._queue.append(Job(states))
        self._queue_lot.unpark_all()
        return tuple(RequestStream(state) for state in states)

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise WorkerStopped(f"worker {self.name!r} is {self._stopped_reason or 'stopped'}")

    def _request_ended(self, state: RequestState) -> None:
        self._open.pop(state.id, None)
        self._counts[state.outcome or "?"] += 1
        if not self._open:
            self._idle.set()

    async def _next_job(self, tier: Tier) -> Job:
        """The next job with an open request, for ``tier`` (waits while there is none)."""
        while True:
            await tier.dispatch_gate.wait_open()  # no checkpoint between this and the pop
            while self._queue:
                job = self._queue.popleft()
                if not job.open_states():
                    continue  # every consumer left, or every deadline passed, while it waited
                job.states = job.open_states()
                job.seq, self._seq = self._seq, self._seq + 1
                job.generation = tier.generation
                self._in_flight.add(job)
                self._counts["batches"] += 1
                return job
            await self._queue_lot.park()

    def _job_done(self, job: Job) -> None:
        self._in_flight.discard(job)

    def _batch_resumed(self, job: Job, error: BaseException) -> None:
        self._counts["resumed"] += 1

    # --- the tier and its supervision -----------------------------------------------------------

    def open_device(self) -> DeviceContext:
        """A new device context for a tier."""
        if callable(self._device):
            return self._device()
        return open_device(self._device)

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
        """As _supervise, with a nursery for child processes (a spare outlives a tier)."""
        from .isolation import _frames
        from .isolation.process import probe_runner

        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._children = nursery
                try:
                    if self._probe_policy:
                        ready = await probe_runner(self)
                        if ready.policy is not None:
                            self._use_policy(_frames.policy_from_data(ready.policy))
                    self._replenish_spare()
                    await self._supervise(task_status)
                finally:
                    nursery.cancel_scope.cancel()  # a spare goes with us
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            failure = group.exceptions[0]  # raised plainly below, not chained to the group
        if failure is not None:
            raise failure

    async def _start_child(self) -> Any:
        """Start a child process in the worker's nursery (it is stopped by whoever uses it)."""
        from .isolation.process import ChildProcess

        assert self._children is not None
        return await self._children.start(ChildProcess(self).run)

    def _take_spare(self) -> Any:
        """The parked spare, if a live one is ready (with standby)."""
        spare, self._spare = self._spare, None
        if spare is not None and (spare.dead is not None or spare.done.is_set()):
            return None
        return spare

    def _replenish_spare(self) -> None:
        """With standby, start parking the next spare in the background."""
        if self.standby and self._spare is None and not self._parking and self._children:
            self._parking = True
            self._children.start_soon(self._park_spare)

    async def _park_spare(self) -> None:
        from .isolation import _frames

        init = _frames.Init(
            self.factory_path,
            self.runner_args,
            self.device_spec,
            list(sys.path),
            0,
            park=True,
            preload=self.standby_load,
        )
        try:
            child = await self._start_child()
            try:
                await child.request(init, self.readiness_timeout)
            except Exception:
                logger.exception("%s: a standby process could not be parked", self.name)
                with trio.CancelScope(shield=True):
                    await child.stop()
                return
            self._spare = child
            self._spare_parked.set()
            self._spare_parked = trio.Event()
        finally:
            self._parking = False

    async def _tier_incarnation(self, *, task_status: trio.TaskStatus[Any]) -> None:
        self.generation += 1
        self._move(WorkerState.STARTING)
        if self.isolation == "process":
            from .isolation.process import ProcessTier  # the inline path never imports it

            tier: Tier = ProcessTier(self, self.generation)
        else:
            tier = Tier(self, self.generation)
        self._tier = tier
        await tier.run(task_status)

    def _tier_ready(self, tier: Tier) -> None:
        self._move(WorkerState.READY)

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
        """The tier restarts: re-queue what may run again, fail the rest with ContextPoisoned."""
        again: list[RequestState] = []
        for job in sorted(self._in_flight, key=lambda j: j.seq or 0):
            for state in job.open_states():
                if (
                    state.request.idempotent
                    and not state.produced_this_attempt
                    and state.attempts < self.max_attempts
                ):
                    again.append(state)
                elif isinstance(error, ContextPoisoned):
                    state.fail(error_for_request(error))
                else:
                    poisoned = ContextPoisoned(
                        f"the worker restarted while request {state.id!r} was running"
                    )
                    poisoned.__cause__ = error
                    state.fail(poisoned)
        self._in_flight.clear()
        if again:
            self._counts["requeued"] += len(again)
            self._queue.appendleft(Job(again))
            self._queue_lot.unpark_all()

    def _stop_everything(self, state: WorkerState, reason: str) -> None:
        """No more requests: the failing batch's get their own error, the rest WorkerStopped."""
        if self.state.value not in (WorkerState.STOPPED, WorkerState.FAILED):
            self._move(state)
            self._stopped_reason = reason
        self._accepting = False
        for job in list(self._in_flight):
            if job.error is not None:
                for request_state in job.open_states():
                    request_state.fail(error_for_request(job.error))
        self._in_flight.clear()
        self._queue.clear()
        for request_state in list(self._open.values()):
            request_state.fail(
                WorkerStopped(
                    f"worker {self.name!r} {reason} before request {request_state.id!r} finished"
                )
            )

    # --- operator commands ----------------------------------------------------------------------

    async def _ready_tier(self) -> Tier:
        while True:
            self._check_accepting()
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
                self._check_accepting()
                await self.state.wait_transition()

    async def drain(self) -> None:
        """Accept no new request, and wait until every accepted one has ended."""
        if self._accepting:
            self._accepting = False
            self._stopped_reason = "draining"
        await self._idle.wait()

    def statistics(self) -> WorkerStatistics:
        """Counts of requests, batches and tokens."""
        counts = self._counts
        return WorkerStatistics(
            name=self.name,
            state=self.state.value,
            generation=self.generation,
            pending=len(self._queue),
            in_flight=len(self._in_flight),
            accepted=counts["accepted"],
            finished=counts["finished"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            requeued=counts["requeued"],
            batches=counts["batches"],
            tokens=self.tokens,
            breaker=self.breaker_state,
        )

    @property
    def breaker_state(self) -> BreakerState | None:
        """The current runner's circuit breaker state (inline isolation), else ``None``."""
        breaker = getattr(getattr(self._tier, "runner", None), "breaker", None)
        state = getattr(breaker, "state", None)
        return state if isinstance(state, BreakerState) else None


@contextlib.asynccontextmanager
async def open_worker(
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
    on_event: EventCallback | Sequence[EventCallback] | None = None,
) -> AsyncIterator[Worker]:
    """Run a worker for the body of an ``async with``; yields it once its first tier is ready.

    Args:
        runner_factory: a callable or an import path ``"module:factory"`` returning a runner.
        runner_args: keyword arguments for the factory.
        device: ``"auto"``, ``"cpu"``, ``"cuda:N"``, or a callable returning a device context.
        policy: the restart policy; ``None`` means the factory's ``default_policy``, else
            :data:`DEVICE_POLICY`.
        max_pending: batches that may wait for the tier; beyond it, ``Backpressure``.
        max_attempts: runs of one request in all (re-runs after a restart included).
        hang_timeout: seconds a batch may go without a chunk before the tier is ``HungWorker``.
        readiness_timeout: seconds a tier may take to build and load before ``HungWorker``.
        drain_timeout: on a normal exit, seconds in-flight work gets to finish.
        name: for events and errors (default: the factory's name).
        isolation: ``"inline"`` (this process) or ``"process"`` (a child process that a fresh
            one replaces on every restart: the cure for a poisoned CUDA context). The factory
            must then be an import path and ``runner_args`` plain data.
        heartbeat_timeout: with ``isolation="process"``, seconds without any frame from the
            child before it is taken for dead.
        standby: with ``isolation="process"``, keep one spare process parked (runner built,
            device opened): a restart probes it and swaps it in, then parks the next one.
        standby_load: also load the runner in the spare (faster swaps, more device memory).
        on_event: a callable (or several) given every :class:`SupervisionEvent` of the worker:
            its tier's starts, failures and restarts, and BREAKER_CHANGED from a runner with a
            circuit breaker.

    Resource handling: when the body ends normally, the worker drains within
    ``drain_timeout``, then fails the rest with ``WorkerStopped``; when it ends with an
    exception, every request fails at once.

    Error handling: an escalated runner error or ``RestartIntensityExceeded`` is raised here,
    plainly, after every outstanding request has failed.

    Example::

        async with open_worker(MockRunner, device="cpu") as worker:
            stream = worker.generate(Request("r1", "hello", SamplingParams(max_tokens=8)))
            async for chunk in stream:
                print(chunk.text, end="")
    """
    worker = Worker(
        runner_factory,
        runner_args=runner_args,
        device=device,
        policy=policy,
        max_pending=max_pending,
        max_attempts=max_attempts,
        hang_timeout=hang_timeout,
        readiness_timeout=readiness_timeout,
        drain_timeout=drain_timeout,
        name=name,
        isolation=isolation,
        heartbeat_timeout=heartbeat_timeout,
        standby=standby,
        standby_load=standby_load,
        on_event=on_event,
    )
    plain: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            try:
                yield worker
            except BaseException:
                worker._stop_everything(WorkerState.STOPPED, "stopped: its owner failed")
                raise
            else:
                assert worker.drain_timeout is not None
                with trio.move_on_after(worker.drain_timeout):
                    await worker.drain()
                worker._stop_everything(WorkerState.STOPPED, "stopped")
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One exception (the worker's own failure, or the body's): raise it plainly, below, so
        # that it is not chained to the group our nursery wrapped it in.
        if len(group.exceptions) != 1:
            raise
        plain = group.exceptions[0]
    if plain is not None:
        raise plain
