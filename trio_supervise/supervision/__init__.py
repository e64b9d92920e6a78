"""Supervision, generic: it knows nothing of inference, devices or requests.

* ``_policy``: the pure restart policy (a decider from exception to directive, the OTP restart
  intensity window, backoff with jitter), sans-I/O.
* ``_events``: every decision as an immutable :class:`SupervisionEvent`, for observers only.
* ``_supervised``: ``supervised(child, policy)``, one child restarted in the caller's task.
* ``_supervisor``: :class:`Supervisor`, many children with OTP strategies.
* ``_errors``: the errors of supervision itself, the root of the library's taxonomy.
"""

# What the other layers use, from the module that defines it.
from ._errors import (
    ChildStopped,
    InvalidPolicy,
    ReadinessTimeout,
    RestartIntensityExceeded,
    SuperviseError,
    TooManyChildren,
    leaves,
)
from ._events import Emitter, EventKind, EventSubscription, SupervisionEvent
from ._policy import (
    Backoff,
    Decider,
    Decision,
    Directive,
    Policy,
    PolicyState,
    RestartIntensity,
    RestartType,
    Rule,
    Rules,
    decide,
    next_uniform,
    on,
    rules,
)
from ._supervised import supervised
from ._supervisor import (
    ChildInfo,
    ChildSpec,
    ChildStatus,
    Strategy,
    Supervisor,
    SupervisorHandle,
    SupervisorStatistics,
)
from ._toolkit import (
    EventCallback,
    Readiness,
    callbacks,
    check_readiness_timeout,
    emit_decision,
    fatal_error,
    run_incarnation,
)

__all__ = [
    "Backoff",
    "ChildInfo",
    "ChildSpec",
    "ChildStatus",
    "ChildStopped",
    "Decider",
    "Decision",
    "Directive",
    "Emitter",
    "EventCallback",
    "EventKind",
    "EventSubscription",
    "InvalidPolicy",
    "Policy",
    "PolicyState",
    "Readiness",
    "ReadinessTimeout",
    "RestartIntensity",
    "RestartIntensityExceeded",
    "RestartType",
    "Rule",
    "Rules",
    "Strategy",
    "SuperviseError",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorHandle",
    "SupervisorStatistics",
    "TooManyChildren",
    "callbacks",
    "check_readiness_timeout",
    "decide",
    "emit_decision",
    "fatal_error",
    "leaves",
    "next_uniform",
    "on",
    "rules",
    "run_incarnation",
    "supervised",
]
