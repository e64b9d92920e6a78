"""trio-supervise: Erlang-grade supervision for GPU inference workers on Trio.

The public API lives here; modules with a leading underscore are private.
"""

from ._errors import (
    ChildStopped,
    ContextPoisoned,
    InferenceError,
    InvalidPolicy,
    OutOfMemory,
    ReadinessTimeout,
    RestartIntensityExceeded,
    SuperviseError,
    TooManyChildren,
    Unrecoverable,
)
from ._events import EventKind, EventSubscription, SupervisionEvent
from ._policy import (
    DEVICE_POLICY,
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

__version__ = "0.1.0.dev0"

__all__ = [
    "DEVICE_POLICY",
    "Backoff",
    "ChildInfo",
    "ChildSpec",
    "ChildStatus",
    "ChildStopped",
    "ContextPoisoned",
    "Decider",
    "Decision",
    "Directive",
    "EventKind",
    "EventSubscription",
    "InferenceError",
    "InvalidPolicy",
    "OutOfMemory",
    "Policy",
    "PolicyState",
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
    "Unrecoverable",
    "__version__",
    "decide",
    "on",
    "rules",
    "supervised",
]
