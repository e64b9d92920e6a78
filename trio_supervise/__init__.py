"""trio-supervise: Erlang-grade supervision for GPU inference workers on Trio.

The public API lives here; modules with a leading underscore are private.
"""

from ._errors import (
    ContextPoisoned,
    InferenceError,
    InvalidPolicy,
    OutOfMemory,
    RestartIntensityExceeded,
    SuperviseError,
    Unrecoverable,
)
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

__version__ = "0.1.0.dev0"

__all__ = [
    "DEVICE_POLICY",
    "Backoff",
    "ContextPoisoned",
    "Decider",
    "Decision",
    "Directive",
    "InferenceError",
    "InvalidPolicy",
    "OutOfMemory",
    "Policy",
    "PolicyState",
    "RestartIntensity",
    "RestartIntensityExceeded",
    "RestartType",
    "Rule",
    "Rules",
    "SuperviseError",
    "Unrecoverable",
    "__version__",
    "decide",
    "on",
    "rules",
]
