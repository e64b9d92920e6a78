"""``run_chaos``: drive load through a worker while faults fire, and check the invariants.

The invariants (each violation is reported with the request ids involved):

* ``one_outcome``: every accepted request ends exactly once: a final chunk, or a typed error.
* ``chunks_in_order``: no chunk after the end, at most one final chunk, never more tokens than
  ``max_tokens``, as many as ``usage`` says, and (given ``expected``) exactly the right tokens:
  nothing duplicated, lost or reordered.
* ``typed_errors``: every error is an ``InferenceError``, retryable where its class says so.
* ``intensity``: no window of the policy's ``within`` holds more restarts than it allows.
* ``stable_handle``: after every fault, the same worker handle still serves a request (unless
  its policy stopped it), and the worker did not fail out of its context.
* ``no_leftovers``: no task and no child process is left once the worker's context has exited.
* ``success``: at least ``min_success`` of the requests that no fault touched succeed.
* ``same_text``: for a deterministic runner (``worker.deterministic``, or ``fault_free=True``),
  the text each request gets under faults is the text it gets in a run with no faults (same
  requests, same seeds): in full when it finished, a prefix of it when it failed. A stream
  continued after a fault (``Request.continuation``) must read exactly as if nothing happened.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, final

import attrs
import trio

from .._errors import (
    CircuitOpen,
    ConfigError,
    ContextPoisoned,
    InferenceError,
    NetworkError,
    OutOfMemory,
    RateLimited,
    RequestTimeout,
    RunnerError,
    ServerError,
    Unrecoverable,
    WorkerStopped,
)
from .._types import Request, SamplingParams
from ._plan import FaultPlan

__all__ = ["REMOTE_FAULT_ERRORS", "ChaosReport", "Violation", "assert_survives", "run_chaos"]

LEFTOVER_GRACE = 1.0
"""Seconds the ``no_leftovers`` check waits for tasks that are about to end."""

_FAULT_CAUSED: tuple[type[Exception], ...] = (
    ContextPoisoned,
    OutOfMemory,
    RunnerError,
    Unrecoverable,
    WorkerStopped,
)
"""Errors that injected faults cause (HungWorker and ChildDied are ContextPoisoned)."""

REMOTE_FAULT_ERRORS: tuple[type[Exception], ...] = (
    RateLimited,
    ServerError,
    NetworkError,
    CircuitOpen,
    RequestTimeout,
)
"""What a faulty remote backend causes through a ``RemoteRunner``: pass them as
``run_chaos(..., fault_errors=REMOTE_FAULT_ERRORS)`` when the backend injects faults too."""


@final
@attrs.frozen
class Violation:
    """One broken invariant."""

    invariant: str
    """Its name (see the module docstring)."""
    message: str
    """What was wrong."""
    request_ids: tuple[str, ...] = ()
    """The requests involved."""

    def __str__(self) -> str:
        ids = f" (requests {', '.join(self.request_ids[:10])}" if self.request_ids else ""
        more = f" and {len(self.request_ids) - 10} more)" if len(self.request_ids) > 10 else ")"
        return f"{self.invariant}: {self.message}{ids + more if ids else ''}"


@final
@attrs.frozen
class ChaosReport:
    """What a chaos run did and whether the worker survived it."""

    requests: int
    """Requests submitted."""
    outcomes: dict[str, int]
    """How requests ended: ``finished``, ``rejected: <class>`` or ``failed: <class>``."""
    restarts: int
    """Tier restarts (generations beyond the first)."""
    restarts_by_cause: dict[str, int]
    """Restart-causing errors seen by requests, by class."""
    succeeded_untouched: float
    """Share of the requests no fault touched that finished (1.0 when none)."""
    tokens_per_s: float
    """Tokens delivered to consumers per second of the run."""
    latency_p50: float
    """Seconds from submit to the end, median."""
    latency_p99: float
    """Seconds from submit to the end, 99th percentile."""
    duration: float
    """Seconds the run took."""
    policy: str
    """The worker's policy, as its repr."""
    plan: str
    """The fault plan, as its repr (replayable)."""
    seed: int
    """The seed of the request mix."""
    violations: tuple[Violation, ...]
    """Every broken invariant."""
    continued: int = 0
    """Runs that continued a stream cut by a fault (``WorkerStatistics.continued``)."""
    compared: int = 0
    """Requests whose text was compared with a fault-free run (0: no such run)."""

    @property
    def ok(self) -> bool:
        """Whether every invariant held."""
        return not self.violations

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"{self.requests} requests in {self.duration:.2f}s "
            f"({self.tokens_per_s:,.0f} tokens/s, latency p50 {self.latency_p50 * 1e3:.1f} ms, "
            f"p99 {self.latency_p99 * 1e3:.1f} ms), {self.restarts} restarts",
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            f"untouched by a fault and served: {self.succeeded_untouched:.2%}; "
            f"streams continued after a fault: {self.continued}",
            f"plan: {self.plan}; seed {self.seed}",
        ]
        lines += [f"VIOLATION {v}" for v in self.violations] or ["all invariants hold"]
        return "\n".join(lines)


def assert_survives(report: ChaosReport) -> None:
    """Fail (AssertionError) listing every violated invariant, and how to replay the run."""
    if not report.ok:
        listing = "\n".join(f"  - {v}" for v in report.violations)
        raise AssertionError(
            f"{len(report.violations)} invariant(s) violated:\n{listing}\n"
            f"replay with plan={report.plan} seed={report.seed}"
        )


@attrs.define
class _Result:
    request: Request
    submitted: float
    tokens: list[int] = attrs.Factory(list)
    text: list[str] = attrs.Factory(list)
    finals: int = 0
    after_end: int = 0
    usage_tokens: int | None = None
    end: str | None = None
    error: BaseException | None = None
    ended: float | None = None
    ends: int = 0


def _child_pids() -> set[int]:
    """Pids of this process's children (Linux /proc; empty elsewhere)."""
    me = str(os.getpid())
    pids: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                pids.add(int(entry))
    return pids


def _task_count() -> int:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    count = 0
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


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
    ``worker_factory(plan)`` yields, and check the invariants (see the module docstring).

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
    rng = random.Random(seed)
    specs = [
        Request(
            f"chaos-{i}",
            f"chaos prompt {rng.randrange(10**6)}",
            SamplingParams(max_tokens=rng.randint(1, max_tokens), seed=rng.randrange(1000)),
            idempotent=rng.random() < 0.8,
        )
        for i in range(requests)
    ]
    results: dict[str, _Result] = {}
    restarts_at: list[float] = []
    violations: list[Violation] = []
    tasks_before = _task_count()
    children_before = _child_pids()
    start = time.perf_counter()
    policy_repr = "?"
    intensity = None

    async def consume(worker: Any, request: Request) -> None:
        result = _Result(request, time.perf_counter())
        results[request.id] = result
        try:
            stream = worker.generate(request)
        except InferenceError as exc:
            result.end, result.error, result.ended = "rejected", exc, time.perf_counter()
            result.ends += 1
            return
        try:
            async with _owning(stream):
                async for chunk in stream:
                    if result.end is not None:
                        result.after_end += 1
                    result.tokens.extend(chunk.token_ids)
                    result.text.append(chunk.text)
                    if chunk.finish_reason is not None:
                        result.finals += 1
                        if chunk.usage is not None:
                            result.usage_tokens = chunk.usage.completion_tokens
                        result.end, result.ended = "finished", time.perf_counter()
                        result.ends += 1
        except Exception as exc:
            result.end, result.error, result.ended = "failed", exc, time.perf_counter()
            result.ends += 1

    async def watch_restarts(worker: Any) -> None:
        state = getattr(worker, "state", None)
        if state is None:
            return
        last = getattr(worker, "generation", 0)
        while True:
            await state.wait_transition()
            generation = getattr(worker, "generation", last)
            if generation > last:
                restarts_at.extend([trio.current_time()] * (generation - last))
                last = generation

    generations = 0
    deterministic: bool | None = None
    continued = 0

    def continued_now(worker: Any) -> int:
        statistics = getattr(worker, "statistics", None)
        return int(getattr(statistics(), "continued", 0)) if callable(statistics) else 0

    async def drive(worker: Any) -> bool:
        """Run the load; then whether the same handle still serves (None: stopped on purpose)."""
        nonlocal generations, policy_repr, intensity, deterministic, continued
        deterministic = getattr(worker, "deterministic", None)
        continued_before = continued_now(worker)
        policy = getattr(worker, "policy", None)
        policy_repr = repr(policy) if policy is not None else "?"
        intensity = getattr(policy, "intensity", None)
        first_generation = getattr(worker, "generation", 1)
        limiter = trio.CapacityLimiter(concurrency)

        async def bounded(request: Request) -> None:
            async with limiter:
                await consume(worker, request)
            if on_progress is not None:
                on_progress()

        async with trio.open_nursery() as watchers:
            watchers.start_soon(watch_restarts, worker)
            async with trio.open_nursery() as nursery:
                for request in specs:
                    nursery.start_soon(bounded, request)
            watchers.cancel_scope.cancel()
        continued = continued_now(worker) - continued_before
        generations = getattr(worker, "generation", first_generation) - first_generation
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

    failure: Exception | None = None
    handle_serves: bool | None = None
    with trio.move_on_after(timeout) as deadline:
        try:
            async with worker_factory(plan) as worker:
                handle_serves = await drive(worker)
        except Exception as exc:  # an escalation, a give-up: the worker did not survive
            failure = exc
    duration = time.perf_counter() - start
    if deadline.cancelled_caught:
        violations.append(Violation("one_outcome", f"the run passed its timeout of {timeout:g}s"))
        generations = len(restarts_at)
    if failure is not None:
        violations.append(Violation("stable_handle", f"the worker failed: {failure!r}"))
        generations = len(restarts_at)
    if handle_serves is False:
        violations.append(
            Violation("stable_handle", "the worker handle no longer serves after the faults")
        )

    # one terminal outcome each
    open_ids = tuple(r.id for r in specs if r.id not in results or results[r.id].ends != 1)
    if open_ids:
        violations.append(
            Violation("one_outcome", "requests without exactly one outcome", open_ids)
        )
    # chunks in order
    bad_chunks = []
    for result in results.values():
        request = result.request
        wrong = (
            result.after_end
            or result.finals > 1
            or len(result.tokens) > request.params.max_tokens
            or (result.usage_tokens is not None and result.usage_tokens != len(result.tokens))
        )
        if expected is not None and not wrong:
            want = list(expected(request))
            got = result.tokens
            wrong = got != want[: len(got)] or (result.end == "finished" and got != want)
        if wrong:
            bad_chunks.append(request.id)
    if bad_chunks:
        violations.append(
            Violation(
                "chunks_in_order",
                "chunks duplicated, lost, reordered or after the end",
                tuple(bad_chunks),
            )
        )
    # typed errors
    untyped = [
        r.request.id
        for r in results.values()
        if r.error is not None
        and (
            not isinstance(r.error, InferenceError)
            or (type(r.error).retryable_by_default and not r.error.retryable)
        )
    ]
    if untyped:
        violations.append(
            Violation("typed_errors", "errors that are not typed InferenceErrors", tuple(untyped))
        )
    # restart intensity
    if intensity is not None:
        window = intensity.within
        for t in restarts_at:
            inside = sum(1 for u in restarts_at if t - window <= u <= t)
            if inside > intensity.max_restarts:
                violations.append(
                    Violation(
                        "intensity",
                        f"{inside} restarts within {window:g}s, more than {intensity.max_restarts}",
                    )
                )
                break
    # leftovers
    # Tasks that only need a moment to see their connection closed (a server's handlers for
    # the runner's HTTP connections, in this same process) get LEFTOVER_GRACE seconds.
    with trio.move_on_after(LEFTOVER_GRACE):
        while _task_count() > tasks_before:  # noqa: ASYNC110 - no event says a task ended
            await trio.sleep(0.01)
    leftover_tasks = _task_count() - tasks_before
    if leftover_tasks > 0:
        violations.append(Violation("no_leftovers", f"{leftover_tasks} task(s) left behind"))
    leftover_children = _child_pids() - children_before
    if leftover_children:
        violations.append(
            Violation("no_leftovers", f"child processes left behind: {sorted(leftover_children)}")
        )
    # the same text as without faults (a deterministic runner)
    compared = 0
    if fault_free or (fault_free is None and deterministic is True):
        reference: dict[str, str] = {}
        clean_failed: list[str] = []
        with trio.move_on_after(timeout) as scope:
            await _fault_free_texts(worker_factory, specs, concurrency, reference, clean_failed)
        if scope.cancelled_caught:
            problem = f"the run without faults passed its timeout of {timeout:g}s"
            violations.append(Violation("same_text", problem))
        if clean_failed:
            problem = "requests failed in the run without faults"
            violations.append(Violation("same_text", problem, tuple(clean_failed)))
        differ = []
        for result in results.values():
            clean = reference.get(result.request.id)
            if clean is None:
                continue
            compared += 1
            text = "".join(result.text)
            if text != clean if result.end == "finished" else not clean.startswith(text):
                differ.append(result.request.id)
        if differ:
            violations.append(
                Violation("same_text", "text differs from the run without faults", tuple(differ))
            )
    # success: a request that no fault touched (it did not end with an error a fault causes)
    # must finish; one that did not is a bug of the worker (or an error nobody planned)
    caused = (*_FAULT_CAUSED, *fault_errors)
    untouched = [r for r in results.values() if r.error is None or not isinstance(r.error, caused)]
    finished = sum(1 for r in untouched if r.end == "finished")
    share = finished / len(untouched) if untouched else 1.0
    if share < min_success:
        failed = tuple(r.request.id for r in results.values() if r.end != "finished")
        violations.append(
            Violation(
                "success",
                f"only {share:.2%} of the requests no fault touched were served "
                f"(at least {min_success:.2%} expected)",
                failed,
            )
        )
    outcomes: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    for result in results.values():
        if result.end == "finished":
            outcomes["finished"] += 1
        elif result.error is not None:
            name = type(result.error).__name__
            outcomes[f"{result.end}: {name}"] += 1
            if isinstance(result.error, caused):
                causes[name] += 1
        else:
            outcomes["open"] += 1
    latencies = sorted(r.ended - r.submitted for r in results.values() if r.ended is not None)
    tokens = sum(len(r.tokens) for r in results.values())
    return ChaosReport(
        requests=requests,
        outcomes=dict(outcomes),
        restarts=generations,
        restarts_by_cause=dict(causes),
        succeeded_untouched=share,
        tokens_per_s=tokens / duration if duration > 0 else math.inf,
        latency_p50=statistics.median(latencies) if latencies else 0.0,
        latency_p99=latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies
        else 0.0,
        duration=duration,
        policy=policy_repr,
        plan=repr(plan),
        seed=seed,
        violations=tuple(violations),
        continued=continued,
        compared=compared,
    )


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
