"""``WorkerPool``: replicas of each model under one root supervisor, a router and a batcher.

Theory of operation
-------------------
Each ``[[workers]]`` entry becomes ``replicas`` TRANSIENT children of a ONE_FOR_ONE root
:class:`Supervisor`: a worker whose own policy STOPs it returns and stays stopped; one that
escalates or gives up raises, and the root starts a fresh :class:`Worker` in its slot (counted
against ``[server] max_worker_restarts`` within ``within``). Restarts are the supervisor's
and the workers' business: the pool only routes.

``pool.generate(request, model)`` admits the request into its model's bounded queue (full:
:class:`Backpressure` with a retry-after hint), and returns a :class:`PoolStream` at once. A
batcher per model sends what is waiting (up to ``max_batch_size`` requests) as one batch to the
least-loaded READY replica: at once when that replica is idle, so a lone request waits for
nothing; while every replica is busy, it holds the batch open for up to ``max_wait`` seconds
after the first request arrived, or until it is full, so that load makes batches bigger. A request
whose replica stops or fails before producing a chunk is sent again, to another replica, when
it is idempotent; so is one whose remote backend failed (rate limited, a server or network
error, an open breaker), to each other ready replica at most once; one that had streamed
already goes on on another replica when it may be continued (``Request.continuation``, within
``max_attempts`` runs in all), its consumer seeing one unbroken stream; otherwise its error is
the worker's.
"""

from __future__ import annotations

import collections
import math
from typing import Any, final

import attrs
import trio

from .._errors import (
    Backpressure,
    CircuitOpen,
    InferenceError,
    ModelNotFound,
    NetworkError,
    RateLimited,
    RequestTimeout,
    ServerError,
    WorkerStopped,
    shown,
)
from .._types import Batch, Chunk, Request
from ..supervision import (
    ChildSpec,
    Directive,
    Policy,
    RestartIntensity,
    RestartType,
    Strategy,
    Supervisor,
    SupervisorHandle,
    rules,
)
from ..tier._continuation import Continuation, continuation_mode
from ..tier._requests import Collected, RequestStream, collect
from ..tier._runner import DEVICE_POLICY, resolve_factory, runner_attributes, runner_max_model_len
from ..worker._worker import Worker, WorkerState
from .config import ServeConfig, WorkerConfig

__all__ = ["ModelNotFound", "PoolStream", "Replica", "WorkerPool"]


_BACKEND_ERRORS = (CircuitOpen, NetworkError, RateLimited, ServerError)
"""A remote backend's failures: an idempotent request with no output yet tries another replica."""


@final
@attrs.define(eq=False)
class Replica:
    """One slot of a model: the worker running in it now (a fresh one after a root restart)."""

    config: WorkerConfig
    index: int
    worker: Worker | None = None
    restarts: int = 0
    dispatched: int = 0
    """Batches sent to it: breaks ties between equally loaded replicas, round robin."""

    @property
    def name(self) -> str:
        return f"{self.config.name}#{self.index}"

    @property
    def ready(self) -> bool:
        worker = self.worker
        return worker is not None and worker.state.value is WorkerState.READY

    @property
    def load(self) -> int:
        """Requests waiting for or running on it."""
        worker = self.worker
        if worker is None:
            return 0
        stats = worker.statistics()
        return stats.accepted - stats.finished - stats.failed - stats.cancelled


@attrs.define(eq=False)
class _Waiting:
    request: Request
    stream: PoolStream
    continuing: Continuation | None = None


@final
class PoolStream:
    """A request's output through the pool: an async iterator and async context manager, like
    :class:`RequestStream`; an idempotent request that a replica dropped before its first chunk
    is sent again, to another replica, and one that streamed already goes on there when it may
    be continued."""

    def __init__(self, pool: WorkerPool, model: str, request: Request) -> None:
        self._pool = pool
        self._model = model
        self.request = request
        self._inner: RequestStream | None = None
        self._assigned = trio.Event()
        self._error: InferenceError | None = None
        self._got_chunk = False
        self._replica: Replica | None = None
        self._tried: set[Replica] = set()
        self._closed = False
        self._whole = False  # collect(): the reader wants the answer at the end only

    def _assign(self, inner: RequestStream | None, replica: Replica | None,
                error: InferenceError | None = None) -> None:  # fmt: skip
        self._inner, self._replica, self._error = inner, replica, error
        if inner is not None and self._whole:
            inner.wake_at_the_end_only()
        self._assigned.set()

    def __aiter__(self) -> PoolStream:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            if not self._assigned.is_set():
                await self._wait_for_a_replica()
            try:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                assert self._inner is not None
                chunk = await self._inner.__anext__()
            except InferenceError as exc:
                moved = isinstance(exc, WorkerStopped) or self._replica_ended()
                backend = isinstance(exc, _BACKEND_ERRORS) and self._another_ready()
                may, continuing = self._may_move()
                if not ((moved or backend) and may):
                    self._closed = True
                    raise
                # Its replica stopped, or its backend failed, before it produced anything (or it
                # may be continued): another replica may serve it (each replica is tried once
                # for a backend error).
                if self._replica is not None:
                    self._tried.add(self._replica)
                self._assigned = trio.Event()
                self._pool._resubmit(self, avoid=self._tried, continuing=continuing)
                continue
            self._got_chunk = True
            return chunk

    async def _wait_for_a_replica(self) -> None:
        """Wait to be sent to a replica, within the request's deadline: a request that waits in
        the pool's queue (no replica READY, or every one of them gone) still ends on time."""
        deadline = self.request.deadline
        with trio.move_on_at(math.inf if deadline is None else deadline):
            await self._assigned.wait()
        if self._assigned.is_set():  # sent as the deadline passed: its worker times it out
            return
        self._pool._forget(self)
        self._closed = True
        raise RequestTimeout(
            f"request {self.request.id!r} passed its deadline waiting for a replica of "
            f"{self._model!r} (none was ready)"
        )

    def _replica_ended(self) -> bool:
        """Whether the replica it ran on stopped or failed (its error is the worker's end)."""
        replica = self._replica
        worker = None if replica is None else replica.worker
        return worker is None or worker.state.value in (WorkerState.STOPPED, WorkerState.FAILED)

    def _another_ready(self) -> bool:
        return any(
            r.ready and r is not self._replica and r not in self._tried
            for r in self._pool.replicas[self._model]
        )

    def _may_move(self) -> tuple[bool, Continuation | None]:
        """Whether it may go to another replica, and what continues it there (after output)."""
        pool = self._pool
        replicas = pool.replicas[self._model]
        if self._closed or pool.draining or pool.stopped or all(_stopped(r) for r in replicas):
            return False, None
        if not self._got_chunk:
            return self.request.idempotent, None
        inner, replica = self._inner, self._replica
        carried = None if inner is None else inner.carry()
        if carried is None or replica is None:
            return False, None
        mode = continuation_mode(self.request, carried.deterministic)
        if mode is None or carried.attempts >= replica.config.max_attempts:
            return False, None
        return True, carried

    async def __aenter__(self) -> PoolStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Leave: the request is cancelled where it runs (or dropped from the queue)."""
        self._closed = True
        self._pool._forget(self)
        if self._inner is not None:
            await self._inner.aclose()
        else:
            await trio.lowlevel.checkpoint()

    async def collect(self) -> Collected:
        """Read to the end: ``(token_ids, text, finish_reason, usage)``."""
        self._whole = True
        if self._inner is not None:
            self._inner.wake_at_the_end_only()
        return await collect(self)


@final
class WorkerPool:
    """Replicas of each configured model, supervised, routed and batched (see the module
    docstring). ``await nursery.start(pool.run)`` returns once every replica is ready."""

    def __init__(self, config: ServeConfig) -> None:
        if not isinstance(config, ServeConfig):
            raise TypeError(f"WorkerPool takes a ServeConfig, got {config!r}")
        config.check_runners()
        self.config = config
        self.replicas: dict[str, list[Replica]] = {
            w.name: [Replica(w, i) for i in range(w.replica_count)] for w in config.workers
        }
        self._queues: dict[str, collections.deque[_Waiting]] = {
            name: collections.deque() for name in self.replicas
        }
        self._wake: dict[str, trio.Event] = {name: trio.Event() for name in self.replicas}
        self.max_model_len: dict[str, int] = {w.name: _max_model_len(w) for w in config.workers}
        """The most tokens a request of each model may ask for (``max_tokens``)."""
        self._ready_changed = trio.Event()
        self.handle: SupervisorHandle | None = None
        self.draining = False
        self.stopped = False
        """The pool has stopped (``run`` returned or was cancelled): nothing is admitted."""

    @property
    def models(self) -> list[str]:
        """The names clients ask for."""
        return list(self.replicas)

    # --- supervision --------------------------------------------------------------------------

    def _child_spec(self, replica: Replica) -> ChildSpec:
        w = replica.config
        server = self.config.server

        async def start(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            if replica.worker is not None:
                replica.restarts += 1
            base = w.policy.apply(_runner_policy(w)) if w.policy is not None else None
            worker = Worker(
                w.runner,
                runner_args=w.args_of(replica.index),
                device=w.device,
                policy=base,
                max_pending=w.max_pending,
                max_attempts=w.max_attempts,
                hang_timeout=w.hang_timeout,
                readiness_timeout=w.readiness_timeout,
                drain_timeout=server.drain_timeout,
                name=replica.name,
                isolation=w.isolation,
                standby=w.standby,
                standby_load=w.standby_load,
                ray_options=w.ray_options or None,
                ray_address=w.ray_address,
            )
            replica.worker = worker
            self._notify_ready()
            try:
                await worker.run(task_status=task_status)
            finally:
                self._notify_ready()

        # A worker that escalates or gives up is replaced by a fresh one (counted by the root).
        policy = Policy(
            rules(default=Directive.RESTART),
            RestartIntensity(server.max_worker_restarts, server.within),
        )
        return ChildSpec(replica.name, start, policy, RestartType.TRANSIENT)

    async def run(
        self, *, task_status: trio.TaskStatus[WorkerPool] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Supervise every replica and batch for every model, until cancelled or given up."""
        server = self.config.server
        root = Supervisor(
            "pool",
            Strategy.ONE_FOR_ONE,
            RestartIntensity(server.max_worker_restarts, server.within),
            [self._child_spec(r) for replicas in self.replicas.values() for r in replicas],
        )
        try:
            async with trio.open_nursery() as nursery:
                self.handle = await nursery.start(root.run)
                for model in self.replicas:
                    nursery.start_soon(self._batcher, model)
                task_status.started(self)
        finally:
            # Whatever still waits in a queue (no replica took it: they were loading, or gone)
            # ends now, and so does whatever comes later: every request gets its outcome.
            self.stopped = True
            for model, queue in self._queues.items():
                error = WorkerStopped(f"the server stopped before a replica of {model!r} took it")
                while queue:
                    queue.popleft().stream._assign(None, None, _copy(error))

    def _notify_ready(self) -> None:
        self._ready_changed.set()
        self._ready_changed = trio.Event()

    # --- requests -----------------------------------------------------------------------------

    def model_for(self, model: str | None) -> str:
        """The model a request asks for (optional when one is served)."""
        if model is None:
            if len(self.replicas) == 1:
                return next(iter(self.replicas))
            raise ModelNotFound(f"model is required: this server serves {self.models}")
        if model not in self.replicas:
            raise ModelNotFound(f"model {shown(model)} is not served here; models: {self.models}")
        return model

    def generate(self, request: Request, model: str | None = None) -> PoolStream:
        """Admit ``request`` for ``model``; read its output from the returned stream.

        Raises:
            ModelNotFound: no such model.
            WorkerStopped: the pool is draining, or every replica of the model stopped.
            Backpressure: the model's queue is full (``retry_after`` says when to try again).
        """
        name = self.model_for(model)
        if self.draining or self.stopped:
            raise WorkerStopped("the server is draining", retry_after=1.0)
        if all(_stopped(r) for r in self.replicas[name]):
            raise WorkerStopped(f"every replica of {name!r} has stopped")
        if request.deadline is None:  # no request waits forever
            timeout = self.config.server.request_timeout
            request = attrs.evolve(request, deadline=trio.current_time() + timeout)
        queue = self._queues[name]
        limit = min(r.config.max_pending for r in self.replicas[name])
        if len(queue) >= limit:
            wait = max(self.config.batching.max_wait, 0.001) * math.ceil(len(queue) / limit)
            raise Backpressure(f"the queue of {name!r} holds {limit} requests", retry_after=wait)
        stream = PoolStream(self, name, request)
        queue.append(_Waiting(request, stream))
        self._wake[name].set()
        return stream

    async def _wait_for_a_ready_replica(self, model: str) -> None:
        """Until a replica of ``model`` is READY (a tier restarted), or a slot got a new worker."""
        async with trio.open_nursery() as nursery:

            async def ready(worker: Worker) -> None:
                await worker.state.wait_value(WorkerState.READY)
                nursery.cancel_scope.cancel()

            async def replaced() -> None:
                await self._ready_changed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(replaced)
            for replica in self.replicas[model]:
                if replica.worker is not None:
                    nursery.start_soon(ready, replica.worker)

    def _forget(self, stream: PoolStream) -> None:
        queue = self._queues[stream._model]
        for waiting in queue:
            if waiting.stream is stream:
                queue.remove(waiting)
                break

    def _resubmit(
        self, stream: PoolStream, avoid: set[Replica], continuing: Continuation | None
    ) -> None:
        """Send a request again, alone, to another ready replica (or queue it)."""
        waiting = _Waiting(stream.request, stream, continuing)
        replica = self._least_loaded(stream._model, avoid=avoid)
        if replica is None:
            self._queues[stream._model].appendleft(waiting)
            self._wake[stream._model].set()
            return
        self._submit(replica, [waiting])

    def _least_loaded(self, model: str, avoid: set[Replica] | None = None) -> Replica | None:
        ready = [r for r in self.replicas[model] if r.ready and r not in (avoid or ())]
        if not ready:
            ready = [r for r in self.replicas[model] if r.ready]
        return min(ready, key=lambda r: (r.load, r.dispatched), default=None)

    def _submit(self, replica: Replica, group: list[_Waiting]) -> None:
        assert replica.worker is not None
        replica.dispatched += 1
        try:
            continuing = {w.request.id: w.continuing for w in group if w.continuing is not None}
            streams = replica.worker.submit(
                Batch([w.request for w in group]), continuing=continuing or None
            )
        except InferenceError as exc:
            for waiting in group:
                waiting.stream._assign(None, replica, _copy(exc))
            return
        for waiting, inner in zip(group, streams, strict=True):
            waiting.stream._assign(inner, replica)

    async def _batcher(self, model: str) -> None:
        batching = self.config.batching
        queue = self._queues[model]
        while True:
            while not queue:
                await self._wake[model].wait()
                self._wake[model] = trio.Event()
            await trio.lowlevel.checkpoint()  # what arrives in this same tick joins the batch
            replica = self._least_loaded(model)
            if replica is None or replica.load > 0:
                # Every replica is busy: the first request opens a window of max_wait for more
                # to join (a batch sent now would only wait on the replica), or until full.
                with trio.move_on_after(batching.max_wait):
                    while len(queue) < batching.max_batch_size:
                        await self._wake[model].wait()
                        self._wake[model] = trio.Event()
                replica = self._least_loaded(model)
            while replica is None:
                if all(_stopped(r) for r in self.replicas[model]):
                    error = WorkerStopped(f"every replica of {model!r} has stopped")
                    while queue:
                        queue.popleft().stream._assign(None, None, _copy(error))
                    break
                await self._wait_for_a_ready_replica(model)
                replica = self._least_loaded(model)
            if replica is None:
                continue
            group = _take_batch(queue, batching.max_batch_size)
            if group:
                self._submit(replica, group)

    async def drain(self) -> None:
        """Accept nothing new; wait until every replica has finished what it accepted."""
        self.draining = True
        async with trio.open_nursery() as nursery:
            for replicas in self.replicas.values():
                for replica in replicas:
                    if replica.worker is not None:
                        nursery.start_soon(replica.worker.drain)

    def statuses(self) -> list[dict[str, Any]]:
        """One record per replica (for ``/v1/workers``)."""
        out = []
        for model, replicas in self.replicas.items():
            for replica in replicas:
                worker = replica.worker
                stats = worker.statistics() if worker is not None else None
                tier = getattr(worker, "_tier", None)
                process = getattr(tier, "process", None)
                where = getattr(tier, "where", {})  # a Ray tier's actor: id, node, pid
                out.append(
                    {
                        "name": replica.name,
                        "model": model,
                        "replica": replica.index,
                        "state": stats.state.value if stats else "starting",
                        "generation": stats.generation if stats else 0,
                        "restarts": (stats.generation - 1 if stats else 0) + replica.restarts,
                        "pending": stats.pending if stats else 0,
                        "in_flight": stats.in_flight if stats else 0,
                        "isolation": replica.config.isolation,
                        "pid": getattr(process, "pid", where.get("pid")),
                        "actor_id": where.get("actor_id"),
                        "actor_name": where.get("name"),
                        "node_id": where.get("node_id"),
                        "node_ip": where.get("node_ip"),
                        "breaker": stats.breaker.value if stats and stats.breaker else None,
                    }
                )
        return out


def _runner_policy(w: WorkerConfig) -> Policy:
    """The policy a ``[workers.policy]`` table overrides: the runner's ``default_policy``
    (not imported for a process-isolated runner: DEVICE_POLICY), else DEVICE_POLICY."""
    if w.isolation == "inline":
        _, policy, _ = runner_attributes(resolve_factory(w.runner))
        if policy is not None:
            return policy
    return DEVICE_POLICY


BATCH_BYTES = 8 * 1024 * 1024
"""A batch holds at most this much request text, each character counted at UTF-8's worst (4
bytes): the batch's frame to a child process or a Ray actor stays within its 16 MiB limit, so
big prompts that arrive together go in batches of their own, never all refused together."""


def _take_batch(queue: collections.deque[_Waiting], limit: int) -> list[_Waiting]:
    """The next batch from the head of ``queue``: at most ``limit`` requests and
    :data:`BATCH_BYTES` of text (the first request always goes)."""
    group: list[_Waiting] = []
    size = 0
    while queue and len(group) < limit:
        cost = _text_bytes(queue[0])
        if group and size + cost > BATCH_BYTES:
            break
        group.append(queue.popleft())
        size += cost
    return group


def _text_bytes(waiting: _Waiting) -> int:
    request = waiting.request
    prompt = request.prompt
    chars = len(prompt) if isinstance(prompt, str) else 3 * len(prompt)  # ids: ~9 bytes each
    if waiting.continuing is not None:  # a resume runs the prompt plus what was delivered
        carried = waiting.continuing
        chars += sum(map(len, carried.texts)) + 3 * len(carried.tokens)
    return 4 * (chars + sum(len(stop) for stop in request.params.stop)) + 64


DEFAULT_MAX_MODEL_LEN = 4096
"""``max_model_len`` where neither the config nor the runner gives one."""


def _max_model_len(w: WorkerConfig) -> int:
    """The config's ``max_model_len``, else the runner's own (an inline runner's attribute: a
    process-isolated runner is not imported here), else :data:`DEFAULT_MAX_MODEL_LEN`."""
    if w.max_model_len is not None:
        return w.max_model_len
    if w.isolation == "inline":
        own = runner_max_model_len(resolve_factory(w.runner))
        if own is not None:
            return own
    return DEFAULT_MAX_MODEL_LEN


def _stopped(replica: Replica) -> bool:
    """Stopped for good by its policy (a FAILED worker is replaced by the root supervisor)."""
    worker = replica.worker
    return worker is not None and worker.state.value is WorkerState.STOPPED


def _copy(error: InferenceError) -> InferenceError:
    from ..tier._requests import error_for_request

    return error_for_request(error)
