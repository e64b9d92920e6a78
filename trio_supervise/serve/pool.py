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
least-loaded READY replica: at once when that replica has room (it is idle, or runs fewer
requests than the batches its runner takes at once), so a lone request waits for nothing; while
every replica is busy, it holds the batch open for up to ``max_wait`` seconds
after the first request arrived, or until it is full, so that load makes batches bigger. A request
whose replica stops or fails before producing a chunk is sent again, to another replica, when
it is idempotent; so is one whose remote backend failed (rate limited, a server or network
error, an open breaker), to each other ready replica at most once; one that had streamed
already goes on on another replica when it may be continued (``Request.continuation``, within
``max_attempts`` runs in all), its consumer seeing one unbroken stream; otherwise its error is
the worker's (``serve/_routing.py``). Each replica (``serve/_replica.py``) builds its workers
from one checked ``WorkerOptions``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any, final

import attrs
import trio

from .._errors import Backpressure, ModelNotFound, WorkerStopped, shown
from .._types import Request
from ..supervision import (
    ChildSpec,
    Directive,
    EventCallback,
    Policy,
    RestartIntensity,
    RestartType,
    Strategy,
    SupervisionEvent,
    Supervisor,
    SupervisorHandle,
    callbacks,
    rules,
)
from ..tier._runner import Tokenizer
from ..worker._worker import Worker, WorkerState
from ._replica import Replica, load_tokenizer, max_model_len, replicas_of
from ._routing import ModelRoute, PoolStream, Waiting
from .config import ServeConfig

__all__ = ["ModelNotFound", "PoolStream", "Replica", "WorkerPool"]


@final
class WorkerPool:
    """Replicas of each configured model, supervised, routed and batched (see the module
    docstring). ``await nursery.start(pool.run)`` returns once every replica is ready."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        on_event: EventCallback | Sequence[EventCallback] | None = None,
    ) -> None:
        if not isinstance(config, ServeConfig):
            raise TypeError(f"WorkerPool takes a ServeConfig, got {config!r}")
        config.check_runners()
        self.config = config
        self.events: collections.deque[SupervisionEvent] = collections.deque(maxlen=RECENT_EVENTS)
        """The latest supervision events of the root supervisor and every worker."""
        self._on_event = (self.events.append, *callbacks(on_event))
        drain = config.server.drain_timeout
        self.replicas: dict[str, list[Replica]] = {
            w.name: replicas_of(w, drain) for w in config.workers
        }
        self._queues: dict[str, collections.deque[Waiting]] = {
            name: collections.deque() for name in self.replicas
        }
        self._routes = {
            name: ModelRoute(name, replicas, self._queues[name], self._closed)
            for name, replicas in self.replicas.items()
        }
        self.max_model_len: dict[str, int] = {w.name: max_model_len(w) for w in config.workers}
        """The most tokens a request of each model may ask for (``max_tokens``)."""
        self.tokenizers: dict[str, Tokenizer | None] = {}
        """Each model's tokenizer, where its runner offers one (loaded as ``run`` begins)."""
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
        server = self.config.server

        async def start(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            await replica.run(self._notify_ready, on_event=self._on_event, task_status=task_status)

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
            on_event=self._on_event,
        )
        for w in self.config.workers:
            tokenizer = await trio.to_thread.run_sync(load_tokenizer, w)
            self.tokenizers[w.name] = tokenizer
            self.max_model_len[w.name] = max_model_len(w, tokenizer)
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
            for model, route in self._routes.items():
                route.fail_waiting(
                    WorkerStopped(f"the server stopped before a replica of {model!r} took it")
                )

    def _closed(self) -> bool:
        return self.draining or self.stopped

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
        if self._routes[name].all_stopped():
            raise WorkerStopped(f"every replica of {name!r} has stopped")
        if request.deadline is None:  # no request waits forever
            timeout = self.config.server.request_timeout
            request = attrs.evolve(request, deadline=trio.current_time() + timeout)
        queue = self._queues[name]
        limit = min(r.options.max_pending for r in self.replicas[name])
        if len(queue) >= limit:
            wait = max(self.config.batching.max_wait, 0.001) * math.ceil(len(queue) / limit)
            raise Backpressure(f"the queue of {name!r} holds {limit} requests", retry_after=wait)
        return self._routes[name].admit(request)

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

    async def _batcher(self, model: str) -> None:
        batching, route = self.config.batching, self._routes[model]
        queue = route.queue
        while True:
            while not queue:
                await route.wake.wait()
                route.wake = trio.Event()
            await trio.lowlevel.checkpoint()  # what arrives in this same tick joins the batch
            replica = route.least_loaded()
            if replica is None or replica.busy:
                # Every replica is busy: the first request opens a window of max_wait for more
                # to join (a batch sent now would only wait on the replica), or until full. A
                # replica that runs several batches at once is busy only when they are all taken.
                with trio.move_on_after(batching.max_wait):
                    while len(queue) < batching.max_batch_size:
                        await route.wake.wait()
                        route.wake = trio.Event()
                replica = route.least_loaded()
            while replica is None:
                if route.all_stopped():
                    route.fail_waiting(WorkerStopped(f"every replica of {model!r} has stopped"))
                    break
                await self._wait_for_a_ready_replica(model)
                replica = route.least_loaded()
            if replica is None:
                continue
            group = _take_batch(queue, batching.max_batch_size)
            if group:
                route.submit(replica, group)

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
        return [r.status(model) for model, replicas in self.replicas.items() for r in replicas]

    def requests_now(self, model: str) -> tuple[int, int]:
        """``(running, waiting)`` requests of ``model``: running in a batch on a tier, and
        waiting (in the pool's queue, or in a worker's)."""
        running = waiting = 0
        for replica in self.replicas[model]:
            worker = replica.worker
            if worker is not None:
                here = worker.running_requests()
                running += here
                waiting += replica.load - here
        return running, waiting + len(self._queues[model])


RECENT_EVENTS = 64
"""Supervision events a pool keeps for ``/v1/workers`` (and ``trio-supervise top``)."""

BATCH_BYTES = 8 * 1024 * 1024
"""A batch holds at most this much request text, each character counted at UTF-8's worst (4
bytes): the batch's frame to a child process or a Ray actor stays within its 16 MiB limit, so
big prompts that arrive together go in batches of their own, never all refused together."""


def _take_batch(queue: collections.deque[Waiting], limit: int) -> list[Waiting]:
    """The next batch from the head of ``queue``: at most ``limit`` requests and
    :data:`BATCH_BYTES` of text (the first request always goes)."""
    group: list[Waiting] = []
    size = 0
    while queue and len(group) < limit:
        cost = _text_bytes(queue[0])
        if group and size + cost > BATCH_BYTES:
            break
        group.append(queue.popleft())
        size += cost
    return group


def _text_bytes(waiting: Waiting) -> int:
    request = waiting.request
    prompt = request.prompt
    chars = len(prompt) if isinstance(prompt, str) else 3 * len(prompt)  # ids: ~9 bytes each
    if waiting.continuing is not None:  # a resume runs the prompt plus what was delivered
        carried = waiting.continuing
        chars += sum(map(len, carried.texts)) + 3 * len(carried.tokens)
    return 4 * (chars + sum(len(stop) for stop in request.params.stop)) + 64
