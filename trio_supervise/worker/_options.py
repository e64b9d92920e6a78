"""A worker's arguments, checked: a bad one is a ``ConfigError`` that says what was expected.

The rule of each field (what it must be) is written once, here: :func:`check_options` applies it
to the keyword arguments of ``Worker`` and ``open_worker`` (``max_pending must be an int >= 1,
got 0``), and the serve config to its ``[[workers]]`` tables, with bounds of its own, at each
key path (``workers[0].max_pending: must be >= 1, got 0``).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, Unpack, final

import attrs
import msgspec

from .._errors import ConfigError
from ..devices import DeviceContext
from ..supervision import Policy
from ..tier._runner import DEVICE_POLICY, resolve_factory, runner_attributes

__all__ = [
    "ARGUMENT_NAMES",
    "DEVICE",
    "FLAG",
    "HEARTBEAT_TIMEOUT",
    "ISOLATED",
    "ISOLATION",
    "ISOLATIONS",
    "MAX_ATTEMPTS",
    "MAX_PENDING",
    "TIMEOUT",
    "Count",
    "Flag",
    "Seconds",
    "Text",
    "WorkerOptions",
    "check_arguments",
    "check_options",
    "check_ray",
    "is_int",
    "is_number",
]


def _unavailable_in_parent(**kwargs: Any) -> Any:
    raise AssertionError("a process-isolated worker builds its runner in the child")


def is_int(value: object) -> bool:
    """Whether ``value`` is an int (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or a float (a bool is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@attrs.frozen
class Count:
    """What a count must be: an int ``>= low`` (and ``<= high`` where the config bounds it)."""

    low: int
    high: int | None = None

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` (``"must be >= 1"``), or None."""
        if not is_int(value):
            return "must be an integer"
        assert isinstance(value, int)
        if value < self.low:
            return f"must be >= {self.low}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high}"
        return None

    def at_most(self, high: int) -> Count:
        """This rule with a maximum."""
        return attrs.evolve(self, high=high)


@attrs.frozen
class Seconds:
    """What a timeout must be: a finite number of seconds ``> 0`` (and ``<= most``)."""

    most: float = math.inf

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` (``"must be > 0"``), or None."""
        if not is_number(value):
            return "must be a number"
        assert isinstance(value, int | float)
        if not abs(value) <= sys.float_info.max:  # inf, nan, or an int too large for a float
            return "must be a finite number"
        if value <= 0:
            return "must be > 0"
        if value > self.most:
            return f"must be <= {self.most:g}"
        return None

    def at_most(self, most: float) -> Seconds:
        """This rule with a maximum."""
        return attrs.evolve(self, most=most)


@attrs.frozen
class Flag:
    """What a switch must be: a bool."""

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value``, or None."""
        return None if isinstance(value, bool) else "must be true or false"


@attrs.frozen
class Text:
    """What a string field must be: a str that ``valid`` accepts, one of ``expected``."""

    valid: Callable[[str], object]
    expected: str
    """What it must be, as a phrase: ``"'inline', 'process' or 'ray'"``."""

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value``, or None."""
        if not isinstance(value, str):
            return "must be a string"
        return None if self.valid(value) else f"must be {self.expected}"


def _is_device(text: str) -> bool:
    return text in ("auto", "cpu") or (text.startswith("cuda:") and text[5:].isdigit())


ISOLATIONS = ("inline", "process", "ray")
ISOLATED = ("process", "ray")
"""The isolations that ``standby`` and ``standby_load`` need (``ray_options`` needs ``ray``)."""

# The rules of a worker's fields, for the keyword arguments and the serve config alike (which
# bounds counts and timeouts further, and says each problem at its key path).
ISOLATION = Text(ISOLATIONS.__contains__, "'inline', 'process' or 'ray'")
DEVICE = Text(_is_device, "'auto', 'cpu' or 'cuda:N'")
"""A device named by a string (the keyword arguments also take a callable)."""
MAX_PENDING = Count(1)
MAX_ATTEMPTS = Count(1)
TIMEOUT = Seconds()
"""``hang_timeout``, ``readiness_timeout`` (both may be None), ``drain_timeout``,
``heartbeat_timeout``."""
FLAG = Flag()
"""``standby``, ``standby_load``."""
HEARTBEAT_TIMEOUT = 10.0
"""The default ``heartbeat_timeout``: seconds a child process or actor may stay silent."""


def _count(name: str, value: object, rule: Count) -> int:
    if rule.problem(value) is not None:
        raise ConfigError(f"{name} must be an int >= {rule.low}, got {value!r}")
    assert isinstance(value, int)
    return value


def _seconds(name: str, value: object, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    problem = TIMEOUT.problem(value)
    if problem is None:
        assert isinstance(value, int | float)
        return float(value)
    if not isinstance(value, bool) and isinstance(value, int | float) and value > 0:  # infinite
        raise ConfigError(f"{name} must be finite, got {value!r}")
    raise ConfigError(
        f"{name} must be a number > 0{' or None' if allow_none else ''}, got {value!r}"
    )


def _flag(name: str, value: object) -> bool:
    if FLAG.problem(value) is not None:
        raise ConfigError(f"{name} must be a bool, got {value!r}")
    return bool(value)


class WorkerArguments(TypedDict, total=False):
    """The keyword arguments of a worker, as ``Worker``, ``open_worker`` and
    ``WorkerOptions.check`` take them (each is described at :func:`~trio_supervise.open_worker`;
    the defaults are :func:`check_options`'s)."""

    runner_args: Mapping[str, Any] | None
    device: str | Callable[[], DeviceContext]
    policy: Policy | None
    max_pending: int
    max_attempts: int
    hang_timeout: float | None
    readiness_timeout: float | None
    drain_timeout: float
    name: str | None
    isolation: str
    heartbeat_timeout: float
    standby: bool
    standby_load: bool
    ray_options: Mapping[str, Any] | None
    ray_address: str | None
    ray_frames: str


ARGUMENT_NAMES = WorkerArguments.__optional_keys__
"""The names of :class:`WorkerArguments`."""


def check_arguments(
    caller: str,
    runner_factory: str | Callable[..., Any],
    options: Mapping[str, Any],
    *,
    also: frozenset[str] = frozenset(),
) -> WorkerOptions:
    """:func:`check_options` for a caller that took ``**options``: a keyword it does not know is
    a ``TypeError`` that names the caller and the keyword, and lists those it takes (``also``:
    the caller's own, such as ``on_event``)."""
    unknown = sorted(set(options) - ARGUMENT_NAMES)
    if unknown:
        takes = ", ".join(sorted(ARGUMENT_NAMES | also))
        raise TypeError(
            f"{caller} got an unexpected keyword argument {unknown[0]!r}; it takes {takes}"
        )
    return check_options(runner_factory, **options)


@final
@attrs.frozen
class WorkerOptions:
    """The checked arguments of one worker (see :func:`~trio_supervise.open_worker`): what
    ``worker.options`` holds, and what ``Worker.from_options`` takes.

    Build one with :meth:`~trio_supervise.WorkerOptions.check`, which takes ``open_worker``'s
    keyword arguments (``on_event`` apart) and raises ``ConfigError`` for a bad one, as
    ``Worker(...)`` does.
    """

    @classmethod
    def check(
        cls, runner_factory: str | Callable[..., Any], **options: Unpack[WorkerArguments]
    ) -> WorkerOptions:
        """Check ``open_worker``'s arguments (``on_event`` apart) into one value."""
        return check_arguments("WorkerOptions.check()", runner_factory, options)

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
    ray_frames: str = "direct"
    """With ``isolation="ray"``: how a batch's frames travel (:data:`RAY_FRAMES`)."""


RAY_OPTIONS = frozenset(
    {"num_gpus", "num_cpus", "memory", "resources", "accelerator_type", "runtime_env",
     "scheduling_strategy", "name", "namespace", "label_selector"}
)  # fmt: skip
"""The keys of ``ray_options``; restarts, retries and the actor's concurrency are the worker's."""


RAY_FRAMES = ("direct", "ray")
"""How a Ray worker's frames travel: ``"direct"`` (the default), on a TCP connection from the
worker to its actor, as on a child process's socket (through Ray where the actor's node cannot be
reached); ``"ray"``, through Ray's streaming calls (a worker outside the cluster's network)."""
FRAMES = Text(RAY_FRAMES.__contains__, "'direct' or 'ray'")
"""The rule of ``ray_frames``."""


def check_ray(
    ray_options: Mapping[str, Any] | None, ray_address: str | None, ray_frames: str = "direct"
) -> dict[str, Any]:
    """Check ``ray_options``, ``ray_address`` and ``ray_frames``, and that Ray is installed
    (not imported).

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
        if value is not None and not (is_number(value) and value >= 0):
            raise ConfigError(f"ray_options.{key} must be a number >= 0, got {value!r}")
    for key in ("name", "namespace"):
        value = options.get(key)
        if value is not None and not (isinstance(value, str) and value):
            raise ConfigError(f"ray_options.{key} must be a non-empty str, got {value!r}")
    if ray_address is not None and not (isinstance(ray_address, str) and ray_address):
        raise ConfigError(f"ray_address must be a non-empty str or None, got {ray_address!r}")
    if FRAMES.problem(ray_frames) is not None:
        raise ConfigError(f"ray_frames must be {FRAMES.expected}, got {ray_frames!r}")
    return options


def check_options(
    runner_factory: str | Callable[..., Any],
    *,
    runner_args: Mapping[str, Any] | None = None,
    device: str | Callable[[], DeviceContext] = "auto",
    policy: Policy | None = None,
    max_pending: int = 1024,
    max_attempts: int = 2,
    hang_timeout: float | None = None,
    readiness_timeout: float | None = None,
    drain_timeout: float = 30.0,
    name: str | None = None,
    isolation: str = "inline",
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    standby: bool = False,
    standby_load: bool = False,
    ray_options: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
    ray_frames: str = "direct",
) -> WorkerOptions:
    """Check every argument of a worker.

    Raises:
        ConfigError: the first bad argument, with what was expected and what was got.
    """
    if ISOLATION.problem(isolation) is not None:
        raise ConfigError(f"isolation must be {ISOLATION.expected}, got {isolation!r}")
    isolated = isolation in ISOLATED
    if isolation == "ray":
        checked_ray = check_ray(ray_options, ray_address, ray_frames)
    elif ray_options or ray_address is not None or ray_frames != "direct":
        raise ConfigError(
            f"ray_options, ray_address and ray_frames need isolation='ray', got {isolation!r}"
        )
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
    if isinstance(device, str) and DEVICE.problem(device) is not None:
        raise ConfigError(f"device must be {DEVICE.expected}, got {device!r}")
    # A process-isolated runner is never imported here: DEVICE_POLICY unless one is given.
    _, default_policy, _ = runner_attributes(factory) if isolation == "inline" else (1, None, True)
    chosen = policy if policy is not None else default_policy or DEVICE_POLICY
    if not isinstance(chosen, Policy):
        raise ConfigError(f"policy must be a Policy or None, got {policy!r}")
    pending = _count("max_pending", max_pending, MAX_PENDING)
    attempts = _count("max_attempts", max_attempts, MAX_ATTEMPTS)
    hang = _seconds("hang_timeout", hang_timeout)
    readiness = _seconds("readiness_timeout", readiness_timeout)
    drain = _seconds("drain_timeout", drain_timeout, allow_none=False)
    heartbeat = _seconds("heartbeat_timeout", heartbeat_timeout, allow_none=False)
    assert drain is not None and heartbeat is not None
    spare, spare_loaded = _flag("standby", standby), _flag("standby_load", standby_load)
    if (spare or spare_loaded) and not isolated:
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
        max_pending=pending,
        max_attempts=attempts,
        hang_timeout=hang,
        readiness_timeout=readiness,
        drain_timeout=drain,
        heartbeat_timeout=heartbeat,
        standby=spare or spare_loaded,
        standby_load=spare_loaded,
        ray_options=checked_ray,
        ray_address=ray_address,
        ray_frames=ray_frames,
    )
