"""The restartable child tier: one incarnation's runner and its batches.

Theory of operation
-------------------
An incarnation is built from a :class:`~._port.TierPort`, which is all it knows of its worker,
and a :class:`~._home.RunnerHome`, where its runner lives: in this process
(:class:`~._home.InlineHome`, the default), a child process or a Ray actor. The home builds and
loads the runner within the readiness timeout (past it: :class:`HungWorker`); the tier calls
``port.ready(deterministic)``, then takes jobs from ``port.jobs`` (a memory channel), up to the
runner's ``max_concurrency`` at once, each in a task of the tier's own nursery. Chunks go straight
into each request's buffer (its ``RequestState``), which drops what a replayed run delivered
already.

A batch's failure is decided here, with the port's decider (``classify_cuda_error``, then
``decide``): RESUME fails only that batch's unfinished requests and dispatch goes on; anything
else becomes the tier's one fatal error: the tier's scope is cancelled, the home tears the runner
down (an inline device that fails its probe after a poisoning cannot recover in this process, so
the error becomes :class:`Unrecoverable`), and the error is raised to the worker, which
restarts, stops or escalates. The jobs left in :attr:`Tier.in_flight` are the worker's to
settle (``take_unsettled``) with the policy's decision, in its restart loop.
"""

from __future__ import annotations

from typing import Any, final

import trio

from .._errors import BadRequest, HungWorker, RunnerError
from .._types import Batch, Chunk, RebuildCause, chunk_problem
from ..devices._cuda_errors import classify_cuda_error
from ..supervision import Directive
from ._breaker import BreakerState, CircuitBreaker
from ._home import InlineHome, RunnerHome
from ._port import Job, TierPort
from ._requests import RequestState, error_for_request
from ._runner import unhonoured_problem

__all__ = ["Gate", "RestartRequested", "Tier"]


class RestartRequested(Exception):
    """An operator asked for a restart (``worker.restart()``); the worker's policy resumes it."""

    retry_after = 0.0


class Gate:
    """Open or closed; ``wait_open`` returns with no checkpoint between the check and the caller."""

    def __init__(self) -> None:
        self.is_open = True
        self._lot = trio.lowlevel.ParkingLot()

    def close(self) -> None:
        self.is_open = False

    def open(self) -> None:
        self.is_open = True
        self._lot.unpark_all()

    async def wait_open(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.is_open:
            await self._lot.park()


@final
class Tier:
    """One incarnation of the child tier (see the module docstring); ``Tier(port)`` runs its
    runner in this process, ``Tier(port, home)`` where ``home`` says."""

    def __init__(self, port: TierPort, home: RunnerHome | None = None) -> None:
        self.port = port
        self.home: RunnerHome = InlineHome() if home is None else home
        self.name = port.name
        self.generation = port.generation
        self.runner: Any = None
        self.concurrency = 1  # batches at once: the runner's max_concurrency, once loaded
        self.deterministic = False  # the runner's promise, once loaded (runner_deterministic)
        self.sampling_fields: frozenset[str] = frozenset()  # what it honours, once loaded
        self.fatal: BaseException | None = None
        self.failed_job: Job | None = None  # the batch whose failure ended this incarnation
        self.dispatch_gate = Gate()  # closed: no job is taken from the queue
        self.execute_gate = Gate()  # closed (while rebuilding): no batch starts executing
        self.active = 0  # jobs taken from the queue and not yet settled
        self.idle = trio.Event()  # set while active == 0
        self.idle.set()
        self.in_flight: set[Job] = set()  # taken, and not settled here (the worker settles them)
        self.held: Job | None = None  # received as the dispatch gate closed: still queued
        self._scope = trio.CancelScope()

    def fail(self, error: BaseException) -> None:
        """End this incarnation with ``error`` (the first one wins)."""
        if self.fatal is None:
            self.fatal = error
        self._scope.cancel()

    # --- what the worker asks of a tier ---------------------------------------------------------

    def take_unsettled(self) -> tuple[list[Job], Job | None]:
        """Hand over what this tier leaves unsettled, and forget it: the jobs in flight, and the
        job it held as its dispatch gate closed (it never left the queue)."""
        jobs, held = list(self.in_flight), self.held
        self.in_flight.clear()
        self.held = None
        return jobs, held

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Call the runner's ``rebuild_session(cause)`` while no batch starts (batches already
        streaming go on). A failure is decided with the port's decider: anything but RESUME
        ends this tier too. Raises the classified error (:func:`classify_cuda_error`)."""
        self.dispatch_gate.close()
        self.execute_gate.close()
        try:
            await self.runner.rebuild_session(cause)
        except Exception as exc:
            error = classify_cuda_error(exc)
            if self.port.decide(error) is not Directive.RESUME:  # type: ignore[arg-type]
                self.fail(error)
            raise error from (None if error is exc else exc)
        finally:
            self.execute_gate.open()
            self.dispatch_gate.open()

    async def quiesce(self) -> None:
        """Take no new batch; return once the batches taken already have ended. Cancelled
        meanwhile, the tier takes batches again."""
        self.dispatch_gate.close()
        try:
            await self.idle.wait()
        except BaseException:
            self.dispatch_gate.open()
            raise

    def placement(self) -> dict[str, Any]:
        """Where the runner runs: ``{}`` in this process; a child process's ``pid``; a Ray
        actor's ``actor_id``, ``name``, ``node_id``, ``node_ip`` and ``pid``."""
        return self.home.placement()

    @property
    def breaker_state(self) -> BreakerState | None:
        """The state of the runner's circuit breaker (``runner.breaker``), if it has one; also
        while the runner loads (a remote runner's breaker counts its readiness checks)."""
        breaker = getattr(self.home.runner, "breaker", None)
        return breaker.state if isinstance(breaker, CircuitBreaker) else None

    async def run(self) -> None:
        """Load, report ready, run jobs; raise the error that ended this incarnation."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    # The nursery is the home's too, for helper tasks (a heartbeat watch).
                    loaded = await self.home.load(self.port, nursery, self.fail)
                    self.runner = loaded.runner
                    self.concurrency = loaded.concurrency
                    self.deterministic = loaded.deterministic
                    self.sampling_fields = loaded.sampling_fields
                    self.port.ready(self.deterministic)
                    await self._dispatch(nursery)
        except Exception as exc:  # from load or dispatch; batches report through fail()
            if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]  # the nursery wraps what its body raised
            if self.fatal is None:
                self.fatal = classify_cuda_error(exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._teardown()
        assert self.fatal is not None, "a tier only ends by failing"
        raise self.fatal

    async def _teardown(self) -> None:
        """The home tears the runner down; an error it replaces the fatal one with (an inline
        device that cannot recover: Unrecoverable) is the failed batch's error too."""
        fatal = await self.home.teardown(self.fatal)
        if fatal is not self.fatal:
            self.fatal = fatal
            if self.failed_job is not None:
                self.failed_job.error = fatal

    async def _dispatch(self, nursery: trio.Nursery) -> None:
        slots = trio.Semaphore(self.concurrency)
        while True:
            await slots.acquire()
            job = await self._take_job()
            self.active += 1
            if self.active == 1:
                self.idle = trio.Event()
            if self.concurrency == 1:  # one batch at a time: no task to spawn
                await self._run_batch(job, slots)
            else:
                nursery.start_soon(self._run_batch, job, slots)

    async def _take_job(self) -> Job:
        """The next job with an open request, from the port's channel (waits while there is
        none, or while the dispatch gate is closed)."""
        jobs, gate = self.port.jobs, self.dispatch_gate
        while True:
            await gate.wait_open()  # no checkpoint between this and taking a waiting job
            try:
                job = jobs.receive_nowait()  # one waits: take it now (receive() would yield)
            except trio.WouldBlock:
                job = await jobs.receive()
            if not gate.is_open:
                # Handed over as the gate closed (a rebuild or restart began): it has not left
                # the queue yet. Held at its head, it goes back there if this tier ends first.
                self.held = job
                await gate.wait_open()
                self.held = None
            if not job.open_states():
                continue  # every consumer left, or every deadline passed, while it waited
            self._refuse_unhonoured(job)
            if not job.open_states():
                continue
            job.states = job.open_states()
            counts = self.port.counts
            job.seq, counts.batches = counts.batches, counts.batches + 1
            job.generation = self.generation
            for state in job.states:
                state.generation = self.generation
            self.in_flight.add(job)
            return job

    def _refuse_unhonoured(self, job: Job) -> None:
        """Fail (alone, with BadRequest) each request that sets a sampling field the runner
        does not honour: nothing a client asked for is dropped silently."""
        for state in job.open_states():
            if state.request.params.extras():
                problem = unhonoured_problem(
                    state.request, self.sampling_fields, f"the runner of worker {self.name!r}"
                )
                if problem is not None:
                    state.fail(BadRequest(problem))

    async def _run_batch(self, job: Job, slots: trio.Semaphore) -> None:
        try:
            await self.execute_gate.wait_open()
            # No checkpoint from here to the runner's first step: a rebuild that starts later
            # finds this batch executing, as it should.
            try:
                await self._execute(job)
            except Exception as exc:
                self._batch_failed(job, exc)
            # Settled (finished, or resumed). A batch cancelled because the tier ended is not:
            # the worker's restart loop settles it with the policy's decision.
            if job.error is None:
                self.in_flight.discard(job)
        finally:
            slots.release()
            self.active -= 1
            if self.active == 0:
                self.idle.set()

    async def _execute(self, job: Job) -> None:
        cancelled: set[str] = set()
        for state in job.states:
            state.attempts += 1  # a run is counted when it starts executing
            state.produced_this_attempt = False
            state.cancelled_ids = cancelled
            if not state.open:
                cancelled.add(state.id)
        by_id = {state.id: state for state in job.states}
        assert job.seq is not None
        batch = Batch(tuple(s.run_request for s in job.states), job.seq, cancelled=cancelled)
        hang = self.port.hang_timeout
        if hang is None:
            await self._stream(batch, by_id, None)
            return
        with trio.CancelScope(deadline=trio.current_time() + hang) as watchdog:
            await self._stream(batch, by_id, watchdog)
        if watchdog.cancelled_caught:
            raise HungWorker(f"batch {batch.seq} made no progress for hang_timeout={hang:g}s")

    async def _stream(
        self, batch: Batch, by_id: dict[str, RequestState], watchdog: trio.CancelScope | None
    ) -> None:
        """Route the runner's chunks to their requests; each chunk extends the watchdog."""
        produced = self.runner.execute(batch)
        if hasattr(produced, "__aenter__") and not hasattr(produced, "__anext__"):
            # A runner with concurrent streams (trio.as_safe_channel): its nursery lives in
            # this context manager, in this task.
            async with produced as chunks:
                await self._route_all(chunks, batch, by_id, watchdog)
        else:
            await self._route_all(produced, batch, by_id, watchdog)
        unfinished = [s.id for s in by_id.values() if s.open]
        if unfinished:
            raise RunnerError(f"batch {batch.seq} ended without finishing requests {unfinished}")

    async def _route_all(
        self,
        chunks: Any,
        batch: Batch,
        by_id: dict[str, RequestState],
        watchdog: trio.CancelScope | None,
    ) -> None:
        hang = self.port.hang_timeout
        get = by_id.get
        tokens = 0
        try:
            async for chunk in chunks:
                if watchdog is not None:
                    watchdog.deadline = trio.current_time() + hang  # type: ignore[operator]
                # Inline fast path of _route for a well-formed chunk of an open request.
                state = get(chunk.request_id) if type(chunk) is Chunk else None
                if (
                    state is not None
                    and state.outcome is None
                    and chunk.error is None
                    and type(chunk.token_ids) is tuple
                ):
                    tokens += state.push(chunk)
                else:
                    self._route(by_id, chunk, batch)
        finally:
            self.port.counts.tokens += tokens
            # Close an unfinished async generator here, in this task, even when cancelled.
            if getattr(chunks, "ag_frame", None) is not None:
                with trio.CancelScope(shield=True):
                    await chunks.aclose()

    def _route(self, by_id: dict[str, RequestState], chunk: Chunk, batch: Batch) -> None:
        problem = chunk_problem(chunk)
        if problem is not None:
            raise RunnerError(f"batch {batch.seq}: {problem}")
        state = by_id.get(chunk.request_id)
        if state is None:
            raise RunnerError(
                f"batch {batch.seq}: the runner sent a chunk for request {chunk.request_id!r}, "
                "which is not in the batch"
            )
        if state.open:
            self.port.counts.tokens += state.push(chunk)
        elif state.outcome == "finished":
            raise RunnerError(
                f"batch {batch.seq}: the runner sent a chunk for request {state.id!r} "
                "after finishing it"
            )
        # else: its consumer left, or it failed already (e.g. its deadline): dropped quietly.

    def _batch_failed(self, job: Job, exc: Exception) -> None:
        """Decide a batch's failure here: RESUME fails only its requests, else the tier ends."""
        error = classify_cuda_error(exc)
        if self.port.decide(error) is Directive.RESUME:  # type: ignore[arg-type]
            retry_after = getattr(error, "retry_after", None)
            for state in job.open_states():
                own = error_for_request(error)
                if own.retry_after is None and retry_after is not None:
                    own.retry_after = retry_after
                state.fail(own)
            self.port.counts.resumed += 1
            return
        job.error = error
        if self.fatal is None:
            self.failed_job = job
        self.fail(error)
