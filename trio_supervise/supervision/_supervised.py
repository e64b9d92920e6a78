"""``supervised``: run one child under a restart policy, in the caller's own task.

Theory of operation
-------------------
Each incarnation is awaited inline, ``await child(task_status=readiness)``, inside a cancel scope
that only carries the readiness deadline. No nursery of our own stands between the child and
the caller, so what ``await run()`` raises is the child's exception itself, never a one-leaf
group, and a restart costs one cancel scope. ``readiness`` is our own task status: the first
incarnation's ``started(value)`` is passed on to the caller's ``task_status``, which is what
makes ``await nursery.start(run)`` return. When an incarnation ends, the pure policy decides
(``policy.on_exit``); this module only sleeps, loops, emits events and raises.

Only ``Exception`` is caught: ``trio.Cancelled``, ``KeyboardInterrupt`` and friends pass
through untouched and are never counted.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from ._decider import Directive
from ._errors import ChildStopped
from ._events import Emitter, EventKind
from ._policy import Decision, Policy, PolicyState, RestartType
from ._toolkit import (
    EventCallback,
    Readiness,
    callbacks,
    check_readiness_timeout,
    emit_decision,
    fatal_error,
    run_incarnation,
)

__all__ = ["ChildFunction", "Settle", "supervise", "supervised"]


class ChildFunction(Protocol):
    """An async function run as a supervised child: it takes ``task_status`` by keyword."""

    def __call__(self, *, task_status: trio.TaskStatus[Any]) -> Awaitable[object]: ...


def supervised(
    child: Callable[..., Awaitable[object]],
    policy: Policy,
    *,
    name: str,
    restart: RestartType = RestartType.PERMANENT,
    seed: int = 0,
    readiness_timeout: float | None = None,
    on_event: EventCallback | Sequence[EventCallback] | None = None,
) -> Callable[..., Awaitable[None]]:
    """Run ``child`` under ``policy``: restart, resume, stop or escalate as it decides.

    Returns an async function ``run(*, task_status=trio.TASK_STATUS_IGNORED)`` for
    ``await nursery.start(run)``, ``nursery.start_soon(run)`` or ``await run()``. Each call of
    ``run`` starts from ``policy.initial_state(seed)``.

    Args:
        child: ``async def child(*, task_status)``; calling ``task_status.started(value)``
            marks an incarnation ready. The first incarnation's value is passed on.
        policy: decides about every exit (see :class:`Policy`).
        name: the child's name, in events and errors.
        restart: ``PERMANENT`` (restart after any exit, a normal return counted),
            ``TRANSIENT`` (only after a failure) or ``TEMPORARY`` (never).
        seed: seeds the backoff's jitter, so runs are reproducible.
        readiness_timeout: seconds an incarnation may take to call ``started()``; past it, it
            fails with :class:`ReadinessTimeout`, decided by the policy.
        on_event: a callable (or several) given every :class:`SupervisionEvent`.

    Returns:
        The ``run`` function. It returns when the child stops for good (a STOP, or a normal
        return of a transient or temporary child).

    Raises:
        RestartIntensityExceeded: the restart intensity was exceeded, chained to the last
            failure.
        Exception: the child's own exception when the policy says ESCALATE.
        ChildStopped: from ``nursery.start(run)`` when the child stopped before it was ever
            ready (instead of Trio's "never called started").

    A failure before an incarnation reported ready is never resumed: a RESUME becomes a
    counted RESTART. ``trio.Cancelled`` and ``KeyboardInterrupt`` propagate and are not counted.

    Example::

        async def fetcher(*, task_status=trio.TASK_STATUS_IGNORED):
            task_status.started()
            ...

        run = supervised(fetcher, Policy(rules(default=Directive.RESTART)), name="fetcher")
        await nursery.start(run)
    """
    if not callable(child):
        raise TypeError(f"child must be an async function taking task_status, got {child!r}")
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a Policy, got {policy!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if not isinstance(restart, RestartType):
        raise TypeError(f"restart must be a RestartType, got {restart!r}")
    timeout = check_readiness_timeout(readiness_timeout)
    emitter = Emitter(name, callbacks(on_event))
    policy.initial_state(seed)  # validates the seed now rather than at the first run

    async def run(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await supervise(
            child, policy, name=name, emitter=emitter, restart=restart, seed=seed,
            readiness_timeout=timeout, task_status=task_status,
        )  # fmt: skip

    run.__name__ = run.__qualname__ = f"supervised_{name}"
    return run


Settle = Callable[[Decision, Exception | None], None]
"""``settle(decision, error)``: act on a decision before it is announced (see :func:`supervise`)."""


async def supervise(
    child: Callable[..., Awaitable[object]],
    policy: Policy,
    *,
    name: str,
    emitter: Emitter,
    task_status: trio.TaskStatus[Any],
    restart: RestartType = RestartType.PERMANENT,
    seed: int = 0,
    readiness_timeout: float | None = None,
    settle: Settle | None = None,
) -> None:
    """The loop behind :func:`supervised`, with its arguments checked already: run incarnations
    of ``child`` under ``policy`` until it says STOP (return), ESCALATE or gives up (raise).

    ``settle(decision, error)``, when given, is called in line once per ended incarnation, after
    its FAILED event and before the decision's event: what must happen because of a decision (a
    worker re-queues or fails the requests of the tier that ended) happens there, never in an
    event callback, which only observes. It is control flow: what it raises propagates.
    """
    waiting = task_status is not trio.TASK_STATUS_IGNORED
    passed_on = False
    state: PolicyState = policy.initial_state(seed)
    generation = 0
    while True:
        generation += 1
        now = trio.current_time()
        state = policy.on_started(state, now)
        emitter.emit(name, generation, EventKind.STARTED)
        scope = trio.CancelScope(
            deadline=math.inf if readiness_timeout is None else now + readiness_timeout
        )

        def on_ready(
            value: object, generation: int = generation, scope: trio.CancelScope = scope
        ) -> None:
            nonlocal passed_on
            scope.deadline = math.inf
            emitter.emit(name, generation, EventKind.READY)
            if not passed_on:
                passed_on = True
                task_status.started(value)

        readiness = Readiness(on_ready)
        error = await run_incarnation(child, readiness, scope)
        decision, state = policy.on_exit(
            state, error, trio.current_time(), restart=restart, ready=readiness.ready
        )
        if error is not None:
            emitter.emit(name, generation, EventKind.FAILED, error=error)
        if settle is not None:
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
