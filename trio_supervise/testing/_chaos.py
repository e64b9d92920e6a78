"""``run_chaos``: drive load through a worker while faults fire, then check the invariants.

The load: ``requests`` requests from a seeded mix, ``concurrency`` at a time, each consumed to
its end while a watcher notes every restart; then one probe through the same handle, and a census
of the tasks and child processes left once the worker's context has exited. For a deterministic
runner the same requests run again with no faults, for their text. What the run recorded goes to
the invariants (``_invariants``, one function each), and the verdict to a ``ChaosReport``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio

from .._errors import ConfigError, InferenceError
from .._types import Request, SamplingParams
from ..supervision import RestartIntensity
from ._invariants import (
    FAULT_CAUSED,
    RequestRecord,
    chunks_in_order,
    intensity,
    no_leftovers,
    one_outcome,
    same_text,
    stable_handle,
    success,
    typed_errors,
    untouched_share,
)
from ._leftovers import child_pids, task_count, wait_for_tasks
from ._plan import FaultPlan
from ._report import ChaosReport, latency_percentiles, tally_faults, tally_outcomes

__all__ = ["run_chaos"]

LEFTOVER_GRACE = 5.0
"""Seconds the ``no_leftovers`` check waits for tasks that are about to end (it goes on as soon
as they have: only a real leak waits this long)."""


async def run_chaos(
    worker_factory: Callable[[FaultPlan], AbstractAsyncContextManager[Any]],
    *,
    requests: int,
    concurrency: int,
    plan: FaultPlan,
    seed: int = 0,
    timeout: float = 60.0,  # noqa: ASYNC109 - the harness's documented API: a bound on the run
    min_success: float = 0.99,
    max_tokens: int = 16,
    expected: Callable[[Request], Sequence[int]] | None = None,
    on_progress: Callable[[], None] | None = None,
    fault_errors: Sequence[type[Exception]] = (),
    fault_free: bool | None = None,
) -> ChaosReport:
    """Send ``requests`` requests, ``concurrency`` at a time, through the worker that
    ``worker_factory(plan)`` yields, and check the invariants (each ``Violation`` names one:
    ``one_outcome``, ``chunks_in_order``, ``typed_errors``, ``intensity``, ``stable_handle``,
    ``no_leftovers``, ``success``, ``same_text``; docs/testing.md says what each holds).

    Args:
        worker_factory: ``plan -> async context manager`` yielding a worker (or anything with
            ``generate(request)`` returning an async iterator of chunks).
        requests: how many requests in all.
        concurrency: how many at once.
        plan: the faults to inject (the factory wires it into the runner).
        seed: seeds the request mix (prompts, max_tokens, idempotency).
        timeout: seconds the whole run may take; requests still open then are violations.
        min_success: the share of requests untouched by any fault that must finish.
        max_tokens: requests ask for 1 to this many tokens.
        expected: ``request -> token ids``, when the runner is deterministic (MockRunner's
            ``token_at``): then chunks are checked token by token.
        on_progress: called each time a request ends (a progress bar).
        fault_errors: more error classes that this run's faults cause, beyond those of the
            plan's (e.g. ``REMOTE_FAULT_ERRORS`` when a remote backend injects faults): a
            request ending with one counts as touched by a fault, not against ``success``.
        fault_free: run the same requests again through ``worker_factory(FaultPlan.none())``
            and check ``same_text``; None (the default): when the worker says its runner is
            ``deterministic``.
    """
    _check_arguments(requests, concurrency, max_tokens, min_success, plan, fault_errors)
    specs = _request_mix(requests, max_tokens, seed)
    load = _Load(specs, concurrency, on_progress)
    tasks_before = task_count()
    children_before = child_pids()
    start = time.perf_counter()
    failure: Exception | None = None
    handle_serves: bool | None = None
    with trio.move_on_after(timeout) as deadline:
        try:
            async with worker_factory(plan) as worker:
                handle_serves = await load.drive(worker)
        except Exception as exc:  # an escalation, a give-up: the worker did not survive
            failure = exc
    duration = time.perf_counter() - start
    overran = timeout if deadline.cancelled_caught else None
    if overran is not None or failure is not None:
        load.generations = len(load.restarts_at)
    records = load.records
    violations = [
        *stable_handle(failure, handle_serves),
        *one_outcome(specs, records, overran),
        *chunks_in_order(records, expected),
        *typed_errors(records),
        *intensity(load.restarts_at, load.intensity),
    ]
    await wait_for_tasks(tasks_before, LEFTOVER_GRACE)
    violations += no_leftovers(task_count() - tasks_before, child_pids() - children_before)
    compared = differed = 0
    if fault_free or (fault_free is None and load.deterministic is True):
        reference: dict[str, str] = {}
        clean_failed: list[str] = []
        with trio.move_on_after(timeout) as scope:
            await _fault_free_texts(worker_factory, specs, concurrency, reference, clean_failed)
        clean_overran = timeout if scope.cancelled_caught else None
        text_violations = same_text(records, reference, clean_failed, clean_overran)
        violations += text_violations
        compared = len(records.keys() & reference.keys())
        # the compared requests named by a violation differed (those the run without faults
        # failed have no reference text: they are not compared)
        differed = len({i for v in text_violations for i in v.request_ids if i in reference})
    caused = (*FAULT_CAUSED, *fault_errors)
    violations += success(records, caused, min_success)
    outcomes, causes = tally_outcomes(records, caused)
    latency_p50, latency_p99 = latency_percentiles(records)
    tokens = sum(len(r.tokens) for r in records.values())
    return ChaosReport(
        requests=requests,
        outcomes=outcomes,
        restarts=load.generations,
        restarts_by_cause=causes,
        succeeded_untouched=untouched_share(records, caused),
        tokens_per_s=tokens / duration if duration > 0 else math.inf,
        latency_p50=latency_p50,
        latency_p99=latency_p99,
        duration=duration,
        policy=load.policy,
        plan=repr(plan),
        seed=seed,
        violations=tuple(violations),
        continued=load.continued,
        compared=compared,
        differed=differed,
        faults_fired=tally_faults(plan, load.batches, load.last_generation),
    )


def _check_arguments(
    requests: int,
    concurrency: int,
    max_tokens: int,
    min_success: float,
    plan: FaultPlan,
    fault_errors: Sequence[type[Exception]],
) -> None:
    """Raise ConfigError for an argument of ``run_chaos`` that cannot work."""
    for name, value, minimum in (("requests", requests, 1), ("concurrency", concurrency, 1),
                                 ("max_tokens", max_tokens, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    if not 0 <= min_success <= 1:
        raise ConfigError(f"min_success must be in [0, 1], got {min_success!r}")
    if not isinstance(plan, FaultPlan):
        raise ConfigError(f"plan must be a FaultPlan, got {plan!r}")
    if not all(isinstance(c, type) and issubclass(c, Exception) for c in fault_errors):
        raise ConfigError(f"fault_errors must be exception classes, got {fault_errors!r}")


def _request_mix(requests: int, max_tokens: int, seed: int) -> list[Request]:
    """The requests of a run, drawn from ``seed``: prompts, 1 to ``max_tokens`` tokens, sampling
    seeds, and about 80% idempotent."""
    rng = random.Random(seed)
    return [
        Request(
            f"chaos-{i}",
            f"chaos prompt {rng.randrange(10**6)}",
            SamplingParams(max_tokens=rng.randint(1, max_tokens), seed=rng.randrange(1000)),
            idempotent=rng.random() < 0.8,
        )
        for i in range(requests)
    ]


@attrs.define(eq=False)
class _Load:
    """The load through one worker, and what it records as it goes."""

    requests: Sequence[Request]
    concurrency: int
    on_progress: Callable[[], None] | None
    records: dict[str, RequestRecord] = attrs.Factory(dict)
    """Each request's record, by id, from its submit on."""
    restarts_at: list[float] = attrs.Factory(list)
    """``trio.current_time()`` of each restart (a generation beyond the first)."""
    policy: str = "?"
    """The worker's policy, as its repr."""
    intensity: RestartIntensity | None = None
    deterministic: bool | None = None
    """What the worker says of its runner (``worker.deterministic``)."""
    generations: int = 0
    """Generations beyond the first once the load is through."""
    continued: int = 0
    """Streams continued after a fault during the load."""
    batches: range = range(0)
    """The ``seq`` of each batch the worker dispatched during the load (not the probe); empty
    for a worker without ``statistics()``."""
    last_generation: int = 0
    """The worker's generation once the load is through (or cut short)."""

    async def drive(self, worker: Any) -> bool:
        """Run the load; then whether the same handle still serves (True: stopped on purpose)."""
        self.deterministic = getattr(worker, "deterministic", None)
        continued_before = _continued(worker)
        policy = getattr(worker, "policy", None)
        self.policy = repr(policy) if policy is not None else "?"
        self.intensity = getattr(policy, "intensity", None)
        first_generation = getattr(worker, "generation", 1)
        limiter = trio.CapacityLimiter(self.concurrency)

        async def bounded(request: Request) -> None:
            async with limiter:
                await self.consume(worker, request)
            if self.on_progress is not None:
                self.on_progress()

        batches_before = _batches(worker)
        try:
            async with trio.open_nursery() as watchers:
                watchers.start_soon(self.watch_restarts, worker)
                async with trio.open_nursery() as nursery:
                    for request in self.requests:
                        nursery.start_soon(bounded, request)
                watchers.cancel_scope.cancel()
        finally:  # also when the worker fails out of its context: its faults fired all the same
            batches_after = _batches(worker)
            if batches_before is not None and batches_after is not None:
                self.batches = range(batches_before, batches_after)
            self.last_generation = getattr(worker, "generation", 0)
        self.continued = _continued(worker) - continued_before
        self.generations = getattr(worker, "generation", first_generation) - first_generation
        state = getattr(worker, "state", None)
        if state is not None and getattr(state.value, "name", "") in ("STOPPED", "FAILED"):
            return True  # its policy stopped it: nothing more to serve, nothing to blame
        probe = Request("chaos-after", "after the faults", SamplingParams(max_tokens=1))
        try:
            async with _owning(stream := worker.generate(probe)):
                finals = [chunk async for chunk in stream if chunk.finish_reason is not None]
        except InferenceError:
            return False
        return len(finals) == 1

    async def consume(self, worker: Any, request: Request) -> None:
        """Submit ``request`` and read its stream to the end, recording every chunk and end."""
        record = RequestRecord(request, time.perf_counter())
        self.records[request.id] = record
        try:
            stream = worker.generate(request)
        except InferenceError as exc:
            record.end, record.error, record.ended = "rejected", exc, time.perf_counter()
            record.ends += 1
            return
        try:
            async with _owning(stream):
                async for chunk in stream:
                    if record.end is not None:
                        record.after_end += 1
                    record.tokens.extend(chunk.token_ids)
                    record.text.append(chunk.text)
                    if chunk.finish_reason is not None:
                        record.finals += 1
                        if chunk.usage is not None:
                            record.usage_tokens = chunk.usage.completion_tokens
                        record.end, record.ended = "finished", time.perf_counter()
                        record.ends += 1
        except Exception as exc:
            record.end, record.error, record.ended = "failed", exc, time.perf_counter()
            record.ends += 1

    async def watch_restarts(self, worker: Any) -> None:
        """Note the time of each restart, from the worker's state transitions (until cancelled)."""
        state = getattr(worker, "state", None)
        if state is None:
            return
        last = getattr(worker, "generation", 0)
        while True:
            await state.wait_transition()
            generation = getattr(worker, "generation", last)
            if generation > last:
                self.restarts_at.extend([trio.current_time()] * (generation - last))
                last = generation


def _batches(worker: Any) -> int | None:
    """``worker.statistics().batches`` (batches dispatched so far, and the next one's ``seq``),
    or None for a worker without statistics."""
    statistics = getattr(worker, "statistics", None)
    batches = getattr(statistics(), "batches", None) if callable(statistics) else None
    return batches if isinstance(batches, int) else None


def _continued(worker: Any) -> int:
    """``worker.statistics().continued``, or 0 for a worker without statistics."""
    statistics = getattr(worker, "statistics", None)
    return int(getattr(statistics(), "continued", 0)) if callable(statistics) else 0


async def _fault_free_texts(
    worker_factory: Callable[[FaultPlan], AbstractAsyncContextManager[Any]],
    specs: Sequence[Request],
    concurrency: int,
    texts: dict[str, str],
    failed: list[str],
) -> None:
    """Each request's text through ``worker_factory(FaultPlan.none())`` into ``texts`` (the ids
    of those that failed into ``failed``)."""
    limiter = trio.CapacityLimiter(concurrency)

    async def one(worker: Any, request: Request) -> None:
        async with limiter:
            pieces: list[str] = []
            try:
                async with _owning(stream := worker.generate(request)):
                    async for chunk in stream:
                        pieces.append(chunk.text)
            except InferenceError:
                failed.append(request.id)
                return
            texts[request.id] = "".join(pieces)

    async with worker_factory(FaultPlan.none()) as worker, trio.open_nursery() as nursery:
        for request in specs:
            nursery.start_soon(one, worker, request)


def _owning(stream: Any) -> AbstractAsyncContextManager[Any]:
    """The stream's own context (a RequestStream cancels when left), or one that closes it."""
    if hasattr(stream, "__aenter__"):
        owned: AbstractAsyncContextManager[Any] = stream
        return owned
    if hasattr(stream, "aclose"):
        return contextlib.aclosing(stream)
    return contextlib.nullcontext(stream)
