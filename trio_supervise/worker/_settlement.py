"""Settlement: the outcome of every request that was on a tier when the policy decided.

A tier that ends leaves its unsettled jobs (``tier.take_unsettled()``: the jobs in flight, and
at most one job it took as its dispatch gate closed, which never left the queue in spirit). The
worker's ``settle`` step (called in line by its restart loop, ``supervise``) settles them here as
soon as the policy has decided, before the decision's event is emitted:

* RESTART (or an operator restart, resumed): a request with attempts left runs again, ahead of
  everything queued, when it is idempotent and got no chunk on its last run, or when it is
  continued (:mod:`._continuation`: it delivered output, and its next run goes on from there);
  any other gets a ``ContextPoisoned`` of its own (a copy of the error when it was one, else a
  new one chained to it).
* STOP, ESCALATE, give-up: the failing batch's requests get their own copy of its error; every
  other open request ``WorkerStopped``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._errors import ContextPoisoned, WorkerStopped
from ..tier._port import Job
from ..tier._requests import RequestState, error_for_request
from ._admission import Admission

__all__ = ["requeue", "settle_restart", "settle_stop", "stop_all"]


def settle_restart(
    in_flight: Iterable[Job],
    error: BaseException | None,
    max_attempts: int,
    deterministic: bool | None,
) -> tuple[list[RequestState], list[RequestState]]:
    """Fail what may not run again; return what may, in batch order, to be queued first, and
    those of them that are continued (they delivered output already)."""
    again: list[RequestState] = []
    continued: list[RequestState] = []
    for job in sorted(in_flight, key=lambda j: j.seq or 0):
        for state in job.open_states():
            run = state.run_again(deterministic, max_attempts)
            if run is not None:
                again.append(state)
                if run == "continued":
                    continued.append(state)
            elif isinstance(error, ContextPoisoned):
                state.fail(error_for_request(error))
            else:
                poisoned = ContextPoisoned(
                    f"the worker restarted while request {state.id!r} was running"
                )
                poisoned.__cause__ = error
                state.fail(poisoned)
    return again, continued


def settle_stop(
    in_flight: Iterable[Job], open_states: Iterable[RequestState], name: str, reason: str
) -> None:
    """The failing batch's requests get their own error; every other open one WorkerStopped."""
    for job in in_flight:
        if job.error is not None:
            for state in job.open_states():
                state.fail(error_for_request(job.error))
    for state in list(open_states):
        state.fail(WorkerStopped(f"worker {name!r} {reason} before request {state.id!r} finished"))


def requeue(
    admission: Admission,
    unsettled: tuple[list[Job], Job | None],
    error: BaseException | None,
    deterministic: bool | None,
) -> None:
    """A restart: fail what may not run again; queue the rest first, then the held job."""
    jobs, held = unsettled
    again, continued = settle_restart(jobs, error, admission.max_attempts, deterministic)
    first = [Job(again)] if again else []
    if held is not None:  # never left the queue: it goes back right behind them
        first.append(held)
    admission.counts["requeued"] += len(again)
    for state in continued:
        admission.count_continued(state)
    if first:
        admission.queue.put_first(first)


def stop_all(admission: Admission, in_flight: Iterable[Job], reason: str) -> None:
    """No more requests: the failing batch's get their own error, every other open one (queued
    ones too) ``WorkerStopped``."""
    admission.accepting = False
    settle_stop(in_flight, admission.open.values(), admission.name, reason)
    admission.queue.clear()
