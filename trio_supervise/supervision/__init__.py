"""Supervision, generic: it knows nothing of inference, devices or requests.

The pure restart policy, sans-I/O (no Trio, no clock):

* ``_decider``: from an exception to a :class:`Directive` (``rules``, ``on``, ``decide``).
* ``_pacing``: how often and how soon a child restarts (:class:`RestartIntensity`,
  :class:`Backoff` and its seeded jitter generator).
* ``_policy``: :class:`Policy`, the three together, deciding each exit (:class:`Decision`).

Driving it on Trio:

* ``_events``: every decision as an immutable :class:`SupervisionEvent`, for observers only.
* ``_toolkit``: what every driver shares (running an incarnation, its readiness, turning a
  decision into its event or its exception).
* ``_supervised``: ``supervised(child, policy)``, one child restarted in the caller's task, and
  ``supervise``, its loop, which a worker drives with a ``settle`` step in line.
* ``_supervisor``: :class:`Supervisor`, many children with OTP strategies; ``_specs`` holds
  the values it is built from and reports, ``_children`` its children's slots and tasks.
* ``_errors``: the errors of supervision itself, the root of the library's taxonomy.
"""

# What the other layers use, from the module that defines it.
from ._decider import Decider, Directive, Rule, Rules, decide, on, rules
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
from ._pacing import Backoff, RestartIntensity, next_uniform
from ._policy import Decision, Policy, PolicyState, RestartType
from ._specs import ChildInfo, ChildSpec, ChildStatus, Strategy, SupervisorStatistics
from ._supervised import Settle, supervise, supervised
from ._supervisor import Supervisor, SupervisorHandle
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
    "Settle",
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
    "supervise",
    "supervised",
]
