"""A worker's arguments, checked: a bad one is a ``ConfigError`` that says what was expected."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import msgspec

from .._errors import ConfigError
from ..devices import DeviceContext
from ..supervision import Policy
from ..tier._runner import DEVICE_POLICY, resolve_factory, runner_attributes

__all__ = ["WorkerOptions", "check_options"]


def _unavailable_in_parent(**kwargs: Any) -> Any:
    raise AssertionError("a process-isolated worker builds its runner in the child")


def _positive(name: str, value: object, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(
            f"{name} must be a number > 0{' or None' if allow_none else ''}, got {value!r}"
        )
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return float(value)


@attrs.frozen
class WorkerOptions:
    """The checked arguments of one worker (see :func:`~trio_supervise.open_worker`)."""

    name: str
    isolation: str
    factory: Callable[..., Any]
    """The runner factory (inline); a process-isolated worker never imports it."""
    factory_path: str
    """The factory's import path (process isolation), else ``""``."""
    runner_args: dict[str, Any]
    device: str | Callable[[], DeviceContext]
    policy: Policy
    """The policy given, else the factory's ``default_policy``, else ``DEVICE_POLICY``."""
    probe_policy: bool
    """Process isolation with no policy given: learn the runner's own from a probe child."""
    max_pending: int
    max_attempts: int
    hang_timeout: float | None
    readiness_timeout: float | None
    drain_timeout: float
    heartbeat_timeout: float
    standby: bool
    standby_load: bool
    ray_options: dict[str, Any] = attrs.field(factory=dict)
    """With ``isolation="ray"``: the actor's options for ``.options()``."""
    ray_address: str | None = None
    """With ``isolation="ray"``: the cluster to join (None: ``RAY_ADDRESS``, else local)."""


RAY_OPTIONS = frozenset(
    {"num_gpus", "num_cpus", "memory", "resources", "accelerator_type", "runtime_env",
     "scheduling_strategy", "name", "namespace", "label_selector"}
)  # fmt: skip
"""The keys of ``ray_options``; restarts, retries and the actor's concurrency are the worker's."""


def check_ray(ray_options: Mapping[str, Any] | None, ray_address: str | None) -> dict[str, Any]:
    """Check ``ray_options`` and ``ray_address``, and that Ray is installed (not imported).

    Raises:
        ConfigError: Ray is not installed (naming the extra), or a bad option.
    """
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "isolation='ray' needs Ray, which is not installed: pip install 'trio-supervise[ray]'"
        )
    if ray_options is not None and not isinstance(ray_options, Mapping):
        raise ConfigError(f"ray_options must be a mapping, got {ray_options!r}")
    options = dict(ray_options or {})
    unknown = sorted(set(options) - RAY_OPTIONS)
    if unknown:
        raise ConfigError(
            f"ray_options takes {', '.join(sorted(RAY_OPTIONS))}; got {', '.join(unknown)}"
            " (Ray's restarts and retries are off: the worker's policy decides)"
        )
    for key in ("num_gpus", "num_cpus", "memory"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not value >= 0):  # fmt: skip
            raise ConfigError(f"ray_options.{key} must be a number >= 0, got {value!r}")
    for key in ("name", "namespace"):
        value = options.get(key)
        if value is not None and not (isinstance(value, str) and value):
            raise ConfigError(f"ray_options.{key} must be a non-empty str, got {value!r}")
    if ray_address is not None and not (isinstance(ray_address, str) and ray_address):
        raise ConfigError(f"ray_address must be a non-empty str or None, got {ray_address!r}")
    return options


def check_options(
    runner_factory: str | Callable[..., Any],
    *,
    runner_args: Mapping[str, Any] | None,
    device: str | Callable[[], DeviceContext],
    policy: Policy | None,
    max_pending: int,
    max_attempts: int,
    hang_timeout: float | None,
    readiness_timeout: float | None,
    drain_timeout: float,
    name: str | None,
    isolation: str,
    heartbeat_timeout: float,
    standby: bool,
    standby_load: bool,
    ray_options: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
) -> WorkerOptions:
    """Check every argument of a worker.

    Raises:
        ConfigError: the first bad argument, with what was expected and what was got.
    """
    if isolation not in ("inline", "process", "ray"):
        raise ConfigError(f"isolation must be 'inline', 'process' or 'ray', got {isolation!r}")
    isolated = isolation != "inline"
    if isolation == "ray":
        checked_ray = check_ray(ray_options, ray_address)
    elif ray_options or ray_address is not None:
        raise ConfigError(f"ray_options and ray_address need isolation='ray', got {isolation!r}")
    else:
        checked_ray = {}
    if isolated:
        if not isinstance(runner_factory, str):
            raise ConfigError(
                f"isolation={isolation!r} takes the runner factory as an import path "
                "'module:factory' (the parent never imports the runner), "
                f"got {runner_factory!r}"
            )
        if not isinstance(device, str):
            raise ConfigError(f"isolation={isolation!r} takes the device as a str, got {device!r}")
        factory_path = runner_factory
        factory: Callable[..., Any] = _unavailable_in_parent
    else:
        factory = resolve_factory(runner_factory)
        factory_path = ""
    if runner_args is not None and not isinstance(runner_args, Mapping):
        raise ConfigError(
            f"runner_args must be a mapping of keyword arguments, got {runner_args!r}"
        )
    args = dict(runner_args or {})
    if isolated:
        try:
            msgspec.msgpack.encode(args)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ConfigError(
                f"runner_args must be plain data that msgspec can encode for a child process: {exc}"
            ) from exc
    if not (callable(device) or isinstance(device, str)):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda:N' or a callable, got {device!r}")
    if isinstance(device, str) and not (
        device in ("auto", "cpu") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda:N', got {device!r}")
    # A process-isolated runner is never imported here: DEVICE_POLICY unless one is given.
    _, default_policy, _ = runner_attributes(factory) if isolation == "inline" else (1, None, True)
    chosen = policy if policy is not None else default_policy or DEVICE_POLICY
    if not isinstance(chosen, Policy):
        raise ConfigError(f"policy must be a Policy or None, got {policy!r}")
    for label, value in (("max_pending", max_pending), ("max_attempts", max_attempts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{label} must be an int >= 1, got {value!r}")
    hang = _positive("hang_timeout", hang_timeout)
    readiness = _positive("readiness_timeout", readiness_timeout)
    drain = _positive("drain_timeout", drain_timeout, allow_none=False)
    heartbeat = _positive("heartbeat_timeout", heartbeat_timeout, allow_none=False)
    assert drain is not None and heartbeat is not None
    if (standby or standby_load) and not isolated:
        raise ConfigError("standby and standby_load need isolation='process' or 'ray'")
    default_name = runner_factory.rpartition(":")[2] if isinstance(runner_factory, str) else ""
    return WorkerOptions(
        name=name or default_name or str(getattr(factory, "__name__", "worker")),
        isolation=isolation,
        factory=factory,
        factory_path=factory_path,
        runner_args=args,
        device=device,
        policy=chosen,
        # A process-isolated runner's own default_policy is learnt from a probe child in run().
        probe_policy=isolated and policy is None,
        max_pending=max_pending,
        max_attempts=max_attempts,
        hang_timeout=hang,
        readiness_timeout=readiness,
        drain_timeout=drain,
        heartbeat_timeout=heartbeat,
        standby=bool(standby or standby_load),
        standby_load=bool(standby_load),
        ray_options=checked_ray,
        ray_address=ray_address,
    )
