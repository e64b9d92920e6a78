"""The public API, guarded: what each public module exports, and which classes are closed.

A name added to a module must be added to its ``__all__`` and to the snapshot below; a name
removed must be removed from the snapshot too, so neither can happen by accident. Concrete public
classes are ``@typing.final`` (which sets ``__final__`` at run time); exceptions, runners,
protocols and enums are not, and a class that is meant to be subclassed is listed in ``OPEN``
with the reason.
"""

from __future__ import annotations

import collections
import enum
import importlib
import inspect
import types

import pytest

import trio_supervise

# The public modules and the exact ``__all__`` of each.
API = {
    "trio_supervise": {
        "DEVICE_POLICY",
        "WORKER_TRANSITIONS",
        "Backoff",
        "Backpressure",
        "BadRequest",
        "Batch",
        "BreakerState",
        "ChildDied",
        "ChildInfo",
        "ChildSpec",
        "ChildStatus",
        "ChildStopped",
        "ChatMessage",
        "Chunk",
        "CircuitBreaker",
        "CircuitOpen",
        "ConfigError",
        "ContextPoisoned",
        "Continuation",
        "ContinuationMismatch",
        "Decider",
        "Decision",
        "Directive",
        "EventKind",
        "EventSubscription",
        "FinishReason",
        "HungWorker",
        "InferenceError",
        "InvalidPolicy",
        "ModelRunner",
        "NetworkError",
        "OutOfMemory",
        "Policy",
        "PolicyState",
        "RateLimited",
        "ReadinessTimeout",
        "RebuildCause",
        "Request",
        "RequestStream",
        "RequestTimeout",
        "RestartIntensity",
        "RestartIntensityExceeded",
        "RestartType",
        "Rule",
        "Rules",
        "RunnerError",
        "SamplingParams",
        "ServerError",
        "Strategy",
        "SuperviseError",
        "SupervisionEvent",
        "Supervisor",
        "SupervisorHandle",
        "SupervisorStatistics",
        "TokenLogprob",
        "TooManyChildren",
        "Unauthorized",
        "Unrecoverable",
        "Usage",
        "Worker",
        "WorkerOptions",
        "WorkerState",
        "WorkerStatistics",
        "WorkerStopped",
        "__version__",
        "classify_cuda_error",
        "decide",
        "on",
        "open_chunks",
        "open_worker",
        "rules",
        "supervised",
    },
    "trio_supervise.testing": {
        "REMOTE_FAULT_ERRORS",
        "ChaosReport",
        "Fault",
        "FaultPlan",
        "FaultyRunner",
        "InjectedError",
        "Trigger",
        "Violation",
        "assert_survives",
        "run_chaos",
    },
    "trio_supervise.serve": {
        "BackoffConfig",
        "BatchingConfig",
        "ModelNotFound",
        "PoolStream",
        "PolicyConfig",
        "ServeConfig",
        "ServerConfig",
        "ServerHandle",
        "WorkerConfig",
        "WorkerPool",
        "configure_logging",
        "serve",
    },
    "trio_supervise.serve.pool": {"ModelNotFound", "PoolStream", "Replica", "WorkerPool"},
    "trio_supervise.serve.server": {"ServerHandle", "serve"},
    "trio_supervise.devices": {
        "CpuDevice",
        "CupyDevice",
        "DeviceContext",
        "MemoryInfo",
        "cuda_available",
        "open_device",
    },
    "trio_supervise.runners.remote": {
        "REMOTE_POLICY",
        "RemoteRunner",
        "error_for_status",
        "retry_after_seconds",
    },
    "trio_supervise.runners.mock": {"MockRecord", "MockRunner"},
    "trio_supervise.runners.charlm": {
        "WEIGHTS_FILE",
        "CharLM",
        "CharModel",
        "CharTokenizer",
        "complete",
        "forward",
        "load_weights",
        "request_generator",
        "sample_next",
    },
}

# Packages whose ``__init__`` is a flat re-export: every public class or function defined in them
# (in them or below) must be in ``__all__``; names imported from elsewhere, like the errors that
# ``devices`` raises, are not theirs. (Runner modules keep public helpers outside ``__all__``.)
FLAT_PACKAGES = [
    "trio_supervise",
    "trio_supervise.testing",
    "trio_supervise.serve",
    "trio_supervise.devices",
]

FINAL = {
    "trio_supervise": [
        "Backoff",
        "Batch",
        "ChildInfo",
        "ChildSpec",
        "ChatMessage",
        "Chunk",
        "CircuitBreaker",
        "Continuation",
        "Decision",
        "EventSubscription",
        "Policy",
        "PolicyState",
        "Request",
        "RequestStream",
        "RestartIntensity",
        "Rule",
        "Rules",
        "SamplingParams",
        "SupervisionEvent",
        "Supervisor",
        "SupervisorHandle",
        "SupervisorStatistics",
        "TokenLogprob",
        "Usage",
        "Worker",
        "WorkerStatistics",
    ],
    "trio_supervise.testing": ["ChaosReport", "FaultPlan", "Trigger", "Violation"],
    "trio_supervise.serve": [
        "BackoffConfig",
        "BatchingConfig",
        "PolicyConfig",
        "ServeConfig",
        "ServerConfig",
        "WorkerConfig",
    ],
    "trio_supervise.serve.pool": ["PoolStream", "Replica", "WorkerPool"],
    "trio_supervise.serve.server": ["ServerHandle"],
    "trio_supervise.serve.app": ["App"],
    "trio_supervise.serve.metrics": ["Metrics"],
    "trio_supervise.devices": ["CupyDevice", "MemoryInfo"],
    "trio_supervise.runners.mock": ["MockRecord"],
    "trio_supervise.runners.charlm": ["CharModel", "CharTokenizer"],
}

RUNNERS = {
    ("trio_supervise.runners.mock", "MockRunner"),
    ("trio_supervise.runners.charlm", "CharLM"),
    ("trio_supervise.runners.remote", "RemoteRunner"),
    ("trio_supervise.testing", "FaultyRunner"),
}

# Concrete public classes left open on purpose, with the reason.
OPEN = {
    # docs/worker.md subclasses it (StickyDevice) to fail the probe as a poisoned CUDA context does.
    ("trio_supervise.devices", "CpuDevice"),
}


def public_classes() -> list[tuple[str, str, type]]:
    found = []
    for module_name in sorted(API.keys() | FINAL.keys()):
        module = importlib.import_module(module_name)
        for name in sorted(set(module.__all__) | set(FINAL.get(module_name, ()))):
            obj = getattr(module, name)
            if isinstance(obj, type):
                found.append((module_name, name, obj))
    return found


def is_protocol(cls: type) -> bool:
    return bool(getattr(cls, "_is_protocol", False))


@pytest.mark.parametrize("module_name", sorted(API))
def test_all_lists_existing_names_once_and_matches_the_snapshot(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    duplicates = [name for name, n in collections.Counter(names).items() if n > 1]
    assert not duplicates, f"{module_name}.__all__ lists these twice: {duplicates}"
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ lists names it does not have: {missing}"
    assert set(names) - API[module_name] == set(), "new public names: add them to API here"
    assert API[module_name] - set(names) == set(), "removed public names: drop them from API here"


@pytest.mark.parametrize("module_name", FLAT_PACKAGES)
def test_every_public_class_and_function_is_in_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    unlisted = sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and (obj.__module__ + ".").startswith(module_name + ".")
        and name not in module.__all__
    )
    assert unlisted == [], f"public in {module_name} but not in its __all__: {unlisted}"


def test_the_package_exports_no_stray_names() -> None:
    public = {
        name
        for name, obj in vars(trio_supervise).items()
        if not name.startswith("_") and not isinstance(obj, types.ModuleType)
    }
    assert public == API["trio_supervise"] - {"__version__"}


@pytest.mark.parametrize(
    ("module_name", "name"),
    [(module_name, name) for module_name, names in FINAL.items() for name in names],
)
def test_concrete_public_classes_are_final(module_name: str, name: str) -> None:
    cls = getattr(importlib.import_module(module_name), name)
    assert cls.__final__ is True


def test_exceptions_runners_protocols_and_enums_stay_open() -> None:
    checked = 0
    for module_name, name, cls in public_classes():
        if (
            issubclass(cls, BaseException)
            or (module_name, name) in RUNNERS
            or (module_name, name) in OPEN
            or is_protocol(cls)
        ):
            assert not getattr(cls, "__final__", False), f"{module_name}.{name} is @final"
            checked += 1
    assert checked > 30  # the errors alone are more


def test_every_public_class_is_final_or_open_on_purpose() -> None:
    undecided = sorted(
        f"{module_name}.{name}"
        for module_name, name, cls in public_classes()
        if not getattr(cls, "__final__", False)
        and not issubclass(cls, (BaseException, enum.Enum))
        and not is_protocol(cls)
        and (module_name, name) not in RUNNERS | OPEN
    )
    assert undecided == [], f"mark these @final, or list them in OPEN with a reason: {undecided}"


def test_the_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    assert trio_supervise.__version__ == version("trio-supervise")
