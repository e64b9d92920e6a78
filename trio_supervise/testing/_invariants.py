"""The invariants a chaos run checks, one function each.

Each function takes what the run recorded (``RequestRecord`` per request, the restart times, the
worker's end, what was left behind, the text of a run without faults) and returns its violations,
each a ``Violation`` named for the invariant with the request ids involved:

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

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import final

import attrs

from .._errors import (
    CircuitOpen,
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
from .._types import Request
from ..supervision import RestartIntensity

__all__ = [
    "FAULT_CAUSED",
    "REMOTE_FAULT_ERRORS",
    "RequestRecord",
    "Violation",
    "chunks_in_order",
    "intensity",
    "no_leftovers",
    "one_outcome",
    "same_text",
    "stable_handle",
    "success",
    "typed_errors",
    "untouched_share",
]

FAULT_CAUSED: tuple[type[Exception], ...] = (
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


@attrs.define
class RequestRecord:
    """What the run saw of one request, from its submit to its end."""

    request: Request
    submitted: float
    """``time.perf_counter()`` at the submit."""
    tokens: list[int] = attrs.Factory(list)
    text: list[str] = attrs.Factory(list)
    finals: int = 0
    """Chunks with a ``finish_reason``."""
    after_end: int = 0
    """Chunks that came after the request had ended."""
    usage_tokens: int | None = None
    """``completion_tokens`` of the final chunk's usage."""
    end: str | None = None
    """``finished``, ``rejected`` (at submit) or ``failed``; None while open."""
    error: BaseException | None = None
    ended: float | None = None
    """``time.perf_counter()`` at the (last) end."""
    ends: int = 0
    """How many times it ended: exactly once when all is well."""


def one_outcome(
    requests: Sequence[Request], records: Mapping[str, RequestRecord], overran: float | None
) -> list[Violation]:
    """Every accepted request ends exactly once, with a final chunk or a typed error, within the
    run's timeout (``overran``: the timeout the run passed, None when it ended in time)."""
    violations = []
    if overran is not None:
        violations.append(Violation("one_outcome", f"the run passed its timeout of {overran:g}s"))
    open_ids = tuple(r.id for r in requests if r.id not in records or records[r.id].ends != 1)
    if open_ids:
        violations.append(
            Violation("one_outcome", "requests without exactly one outcome", open_ids)
        )
    return violations


def chunks_in_order(
    records: Mapping[str, RequestRecord], expected: Callable[[Request], Sequence[int]] | None
) -> list[Violation]:
    """No chunk after the end, at most one final chunk, never more tokens than ``max_tokens``, as
    many as ``usage`` says and, given ``expected`` (``request -> token ids``), exactly those
    tokens: all of them when the request finished, a prefix when it failed."""
    bad_chunks = []
    for record in records.values():
        request = record.request
        wrong = (
            record.after_end
            or record.finals > 1
            or len(record.tokens) > request.params.max_tokens
            or (record.usage_tokens is not None and record.usage_tokens != len(record.tokens))
        )
        if expected is not None and not wrong:
            want = list(expected(request))
            got = record.tokens
            wrong = got != want[: len(got)] or (record.end == "finished" and got != want)
        if wrong:
            bad_chunks.append(request.id)
    if not bad_chunks:
        return []
    problem = "chunks duplicated, lost, reordered or after the end"
    return [Violation("chunks_in_order", problem, tuple(bad_chunks))]


def typed_errors(records: Mapping[str, RequestRecord]) -> list[Violation]:
    """Every error a request ends with is an ``InferenceError``, retryable where its class is."""
    untyped = [
        r.request.id
        for r in records.values()
        if r.error is not None
        and (
            not isinstance(r.error, InferenceError)
            or (type(r.error).retryable_by_default and not r.error.retryable)
        )
    ]
    if not untyped:
        return []
    return [Violation("typed_errors", "errors that are not typed InferenceErrors", tuple(untyped))]


def intensity(restarts_at: Sequence[float], limit: RestartIntensity | None) -> list[Violation]:
    """No window of ``limit.within`` seconds holds more than ``limit.max_restarts`` of the
    restarts (their times in ``restarts_at``); nothing to check without a limit."""
    if limit is None:
        return []
    window = limit.within
    for t in restarts_at:
        inside = sum(1 for u in restarts_at if t - window <= u <= t)
        if inside > limit.max_restarts:
            problem = f"{inside} restarts within {window:g}s, more than {limit.max_restarts}"
            return [Violation("intensity", problem)]
    return []


def stable_handle(failure: Exception | None, handle_serves: bool | None) -> list[Violation]:
    """The worker did not fail out of its context (``failure``: what it raised), and after the
    faults the same handle still served a request (``handle_serves``; True when its policy
    stopped it on purpose, None when the run never got that far)."""
    violations = []
    if failure is not None:
        violations.append(Violation("stable_handle", f"the worker failed: {failure!r}"))
    if handle_serves is False:
        violations.append(
            Violation("stable_handle", "the worker handle no longer serves after the faults")
        )
    return violations


def no_leftovers(tasks_left: int, children_left: Collection[int]) -> list[Violation]:
    """Once the worker's context has exited, no task (``tasks_left``: how many more than before
    the run) and no child process (``children_left``: their pids) is left behind."""
    violations = []
    if tasks_left > 0:
        violations.append(Violation("no_leftovers", f"{tasks_left} task(s) left behind"))
    if children_left:
        violations.append(
            Violation("no_leftovers", f"child processes left behind: {sorted(children_left)}")
        )
    return violations


def same_text(
    records: Mapping[str, RequestRecord],
    reference: Mapping[str, str],
    clean_failed: Sequence[str],
    clean_overran: float | None,
) -> list[Violation]:
    """Each request's text is the text it got in the run without faults (``reference``, by
    request id): all of it when it finished, a prefix when it failed. That run must itself have
    served every request (``clean_failed``: the ids it failed) within its timeout
    (``clean_overran``: the timeout it passed, None when it ended in time)."""
    violations = []
    if clean_overran is not None:
        problem = f"the run without faults passed its timeout of {clean_overran:g}s"
        violations.append(Violation("same_text", problem))
    if clean_failed:
        problem = "requests failed in the run without faults"
        violations.append(Violation("same_text", problem, tuple(clean_failed)))
    differ = []
    for record in records.values():
        clean = reference.get(record.request.id)
        if clean is None:
            continue
        text = "".join(record.text)
        if text != clean if record.end == "finished" else not clean.startswith(text):
            differ.append(record.request.id)
    if differ:
        violations.append(
            Violation("same_text", "text differs from the run without faults", tuple(differ))
        )
    return violations


def untouched_share(
    records: Mapping[str, RequestRecord], caused: tuple[type[Exception], ...]
) -> float:
    """The share of the requests no fault touched (none ended with one of the ``caused``
    errors) that finished; 1.0 when there are none."""
    untouched = [r for r in records.values() if r.error is None or not isinstance(r.error, caused)]
    finished = sum(1 for r in untouched if r.end == "finished")
    return finished / len(untouched) if untouched else 1.0


def success(
    records: Mapping[str, RequestRecord],
    caused: tuple[type[Exception], ...],
    min_success: float,
) -> list[Violation]:
    """At least ``min_success`` of the requests no fault touched finished: a request that did not
    end with an error a fault causes (``caused``) and still failed is a bug of the worker (or an
    error nobody planned)."""
    share = untouched_share(records, caused)
    if share >= min_success:
        return []
    failed = tuple(r.request.id for r in records.values() if r.end != "finished")
    problem = (
        f"only {share:.2%} of the requests no fault touched were served "
        f"(at least {min_success:.2%} expected)"
    )
    return [Violation("success", problem, failed)]
