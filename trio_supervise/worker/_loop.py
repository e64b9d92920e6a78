"""The worker's restart loop: one tier incarnation after another, under the worker's policy.

Theory of operation
-------------------
The loop is ``supervised``'s, built from the same toolkit (:mod:`trio_supervise.supervision`),
with one step added: when an incarnation ends and the pure policy has decided, the worker
*settles* that decision (re-queues or fails what the tier left, or stops everything) before the
decision's event is emitted. Settlement is control flow, so it never rides an event callback:
observers see the same events in the same order as from ``supervised`` (STARTED, READY, FAILED,
then RESUMED, RESTARTING, STOPPED, ESCALATED or GAVE_UP), each emitted after what it reports has
happened, and a broken observer changes no request's outcome.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ..supervision import (
    ChildStopped,
    Decider,
    Decision,
    Directive,
    Emitter,
    EventKind,
    Policy,
    PolicyState,
    Readiness,
    RestartType,
    decide,
    emit_decision,
    fatal_error,
    run_incarnation,
)
from ..tier._tier import RestartRequested

__all__ = ["WorkerDecider", "run_tiers"]


@attrs.define(frozen=True)
class WorkerDecider:
    """The worker's decider: an operator restart is resumed (uncounted), the rest as given."""

    inner: Decider

    def __call__(self, exc: Exception) -> Directive:
        if isinstance(exc, RestartRequested):
            return Directive.RESUME
        return decide(self.inner, exc)

    def __repr__(self) -> str:
        return repr(self.inner)


Incarnation = Callable[..., Awaitable[object]]
"""``incarnation(generation, *, task_status)``: run one tier; ``task_status.started(value)``
once it is ready."""


async def run_tiers(
    name: str,
    policy: Policy,
    emitter: Emitter,
    incarnation: Incarnation,
    settle: Callable[[Decision, Exception | None], None],
    task_status: trio.TaskStatus[Any],
) -> None:
    """Run incarnations under ``policy`` until it says STOP (return) or ESCALATE or gives up
    (raise, as :func:`~trio_supervise.supervised` does).

    ``settle(decision, error)`` is called once per ended incarnation, after its FAILED event and
    before its decision's event. The first incarnation's ``started(value)`` is passed on to
    ``task_status``.

    Raises:
        RestartIntensityExceeded: the policy gave up (chained to the last failure).
        Exception: the incarnation's error, when the policy escalated it.
        ChildStopped: a STOP before the first incarnation was ever ready, when ``task_status``
            waits for it.
    """
    waiting = task_status is not trio.TASK_STATUS_IGNORED
    passed_on = False
    state: PolicyState = policy.initial_state(0)
    generation = 0
    while True:
        generation += 1
        state = policy.on_started(state, trio.current_time())
        emitter.emit(name, generation, EventKind.STARTED)

        def on_ready(value: object, generation: int = generation) -> None:
            nonlocal passed_on
            emitter.emit(name, generation, EventKind.READY)
            if not passed_on:
                passed_on = True
                task_status.started(value)

        readiness = Readiness(on_ready)
        child = functools.partial(incarnation, generation)
        error = await run_incarnation(child, readiness, trio.CancelScope())
        decision, state = policy.on_exit(
            state, error, trio.current_time(), restart=RestartType.PERMANENT, ready=readiness.ready
        )
        if error is not None:
            emitter.emit(name, generation, EventKind.FAILED, error=error)
        settle(decision, error)
        emit_decision(emitter, name, generation, decision, error)
        directive = decision.directive
        if directive is Directive.ESCALATE:
            raise fatal_error(decision, error, repr(name))
        if directive is Directive.STOP:
            if waiting and not passed_on:
                raise ChildStopped(
                    f"{name!r} stopped before it was ready: {decision.reason}"
                ) from error
            return
        await trio.sleep(decision.delay)
