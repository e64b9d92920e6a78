"""The service's configuration: TOML into frozen attrs classes, every problem with its path.

``ServeConfig.from_toml(path)`` / ``ServeConfig.from_dict(data)`` structure the data with cattrs
(unknown keys refused), then validate it; every problem found, in the structure and in the
values, is reported with its key path in one :class:`ConfigError`, before anything starts::

    workers[1].policy.within: must be > 0, got -1
"""

from __future__ import annotations

import inspect
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, final

import attrs
import cattrs

from .._errors import ConfigError
from .._policy import Backoff, Policy, RestartIntensity
from .._runner import resolve_factory
from .._worker_options import check_ray

__all__ = [
    "BackoffConfig",
    "BatchingConfig",
    "PolicyConfig",
    "ServeConfig",
    "ServerConfig",
    "WorkerConfig",
]


@final
@attrs.frozen
class BackoffConfig:
    """``[workers.policy.backoff]``: the delay before each restart."""

    initial: float = 0.0
    maximum: float = 0.0
    multiplier: float = 2.0
    jitter: float = 0.0


@final
@attrs.frozen
class PolicyConfig:
    """``[workers.policy]``: fields that override the runner's default policy."""

    max_restarts: int | None = None
    within: float | None = None
    backoff: BackoffConfig | None = None

    def apply(self, base: Policy) -> Policy:
        """``base`` with these fields overridden."""
        intensity = base.intensity
        if self.max_restarts is not None or self.within is not None:
            intensity = RestartIntensity(
                intensity.max_restarts if self.max_restarts is None else self.max_restarts,
                intensity.within if self.within is None else self.within,
            )
        backoff = base.backoff
        if self.backoff is not None:
            b = self.backoff
            backoff = Backoff(b.initial, b.maximum, b.multiplier, b.jitter)
        return attrs.evolve(base, intensity=intensity, backoff=backoff)


@final
@attrs.frozen
class WorkerConfig:
    """``[[workers]]``: one model, served by ``replicas`` workers."""

    name: str
    """The worker's name, and the ``model`` clients ask for."""
    runner: str
    """The runner factory's import path, ``"module:factory"``."""
    runner_args: dict[str, Any] = attrs.Factory(dict)
    device: str = "auto"
    replicas: int = 1
    replica_args: tuple[dict[str, Any], ...] = ()
    """Per-replica runner arguments, merged over ``runner_args`` (a backend per replica); when
    given, there is one replica per entry."""
    isolation: str = "inline"
    """``"inline"``, ``"process"`` or ``"ray"`` (an actor on a Ray cluster)."""
    standby: bool = False
    standby_load: bool = False
    ray_options: dict[str, Any] = attrs.Factory(dict)
    """With ``isolation = "ray"``: the actor's options (``num_gpus``, ``resources``, ...)."""
    ray_address: str | None = None
    """With ``isolation = "ray"``: the cluster to join (default: ``RAY_ADDRESS``, else a local
    Ray); one per server."""
    max_pending: int = 1024
    max_attempts: int = 2
    readiness_timeout: float | None = None
    hang_timeout: float | None = None
    policy: PolicyConfig | None = None

    @property
    def replica_count(self) -> int:
        """How many replicas: one per ``replica_args`` entry, else ``replicas``."""
        return len(self.replica_args) or self.replicas

    def args_of(self, index: int) -> dict[str, Any]:
        """The runner arguments of replica ``index``."""
        extra = self.replica_args[index] if self.replica_args else {}
        return {**self.runner_args, **extra}


@final
@attrs.frozen
class ServerConfig:
    """``[server]``."""

    host: str = "127.0.0.1"
    port: int = 8000
    drain_timeout: float = 30.0
    request_timeout: float = 60.0
    max_worker_restarts: int = 10
    within: float = 60.0
    reuse_port: bool = False
    """Bind with ``SO_REUSEPORT``, so that several ``serve`` processes share one port and the
    kernel spreads connections over them (one process is bound by one core)."""


@final
@attrs.frozen
class BatchingConfig:
    """``[batching]``: the dynamic batcher flushes at ``max_batch_size`` or ``max_wait``."""

    max_batch_size: int = 32
    max_wait: float = 0.005


_converter = cattrs.Converter(forbid_extra_keys=True)
_lenient = cattrs.Converter()


@final
@attrs.frozen
class ServeConfig:
    """The whole service: ``[server]``, ``[batching]`` and ``[[workers]]``."""

    server: ServerConfig = ServerConfig()
    batching: BatchingConfig = BatchingConfig()
    workers: tuple[WorkerConfig, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeConfig:
        """Structure and validate ``data``.

        Raises:
            ConfigError: every problem, each with its key path (``problems``).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config is a table of keys, got {data!r}")
        try:
            config = _converter.structure(dict(data), cls)
        except Exception as exc:  # cattrs groups every structural problem
            problems = [_path_first(line) for line in cattrs.transform_error(exc)]
            try:  # where only unknown keys were wrong, the values can still be checked
                _lenient.structure(dict(data), cls).validate()
            except ConfigError as more:
                problems += more.problems
            except Exception:
                pass  # the types were wrong too: those problems are listed already
            raise _config_error(tuple(problems)) from None
        config.validate()
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> ServeConfig:
        """Read, structure and validate a TOML file."""
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain data (what ``config check`` prints)."""
        data: dict[str, Any] = _converter.unstructure(self)
        return data

    def validate(self) -> None:
        """Check every value; raise one ConfigError listing every problem."""
        problems: list[str] = []

        def need(ok: bool, path: str, rule: str, value: object) -> None:
            if not ok:
                problems.append(f"{path}: {rule}, got {value!r}")

        s = self.server
        need(0 <= s.port <= 65535, "server.port", "must be in [0, 65535]", s.port)
        for key in ("drain_timeout", "request_timeout", "within"):
            value = getattr(s, key)
            need(_positive(value), f"server.{key}", "must be > 0", value)
        need(s.max_worker_restarts >= 0, "server.max_worker_restarts", "must be >= 0",
             s.max_worker_restarts)  # fmt: skip
        b = self.batching
        need(b.max_batch_size >= 1, "batching.max_batch_size", "must be >= 1", b.max_batch_size)
        need(_non_negative(b.max_wait), "batching.max_wait", "must be >= 0", b.max_wait)
        need(bool(self.workers), "workers", "must name at least one worker", list(self.workers))
        names: set[str] = set()
        addresses: set[str | None] = set()  # of the Ray workers: one Ray per process
        for i, w in enumerate(self.workers):
            at = f"workers[{i}]"
            need(bool(w.name), f"{at}.name", "must be a non-empty name", w.name)
            need(w.name not in names, f"{at}.name", "must be unique", w.name)
            names.add(w.name)
            need(w.runner.count(":") == 1 and all(w.runner.split(":")), f"{at}.runner",
                 "must be an import path 'module:factory'", w.runner)  # fmt: skip
            need(w.device in ("auto", "cpu") or (w.device.startswith("cuda:")
                 and w.device[5:].isdigit()), f"{at}.device",
                 "must be 'auto', 'cpu' or 'cuda:N'", w.device)  # fmt: skip
            need(w.replicas >= 1, f"{at}.replicas", "must be >= 1", w.replicas)
            need(not w.replica_args or w.replicas in (1, len(w.replica_args)), f"{at}.replicas",
                 f"must be left out or {len(w.replica_args)} (one per replica_args entry)",
                 w.replicas)  # fmt: skip
            need(w.isolation in ("inline", "process", "ray"), f"{at}.isolation",
                 "must be 'inline', 'process' or 'ray'", w.isolation)  # fmt: skip
            need(not (w.standby or w.standby_load) or w.isolation in ("process", "ray"),
                 f"{at}.standby", "needs isolation = 'process' or 'ray'", w.standby)  # fmt: skip
            if w.isolation == "ray":
                try:
                    check_ray(w.ray_options, w.ray_address)
                except ConfigError as exc:
                    problems.append(f"{at}: {exc}")
                addresses.add(w.ray_address)
            else:
                need(not w.ray_options and w.ray_address is None, f"{at}.ray_options",
                     "needs isolation = 'ray'", w.ray_options or w.ray_address)  # fmt: skip
            need(w.max_pending >= 1, f"{at}.max_pending", "must be >= 1", w.max_pending)
            need(w.max_attempts >= 1, f"{at}.max_attempts", "must be >= 1", w.max_attempts)
            for key in ("readiness_timeout", "hang_timeout"):
                value = getattr(w, key)
                need(value is None or _positive(value), f"{at}.{key}", "must be > 0", value)
            p = w.policy
            if p is not None:
                if p.max_restarts is not None:
                    need(p.max_restarts >= 0, f"{at}.policy.max_restarts", "must be >= 0",
                         p.max_restarts)  # fmt: skip
                if p.within is not None:
                    need(_positive(p.within), f"{at}.policy.within", "must be > 0", p.within)
                if p.backoff is not None:
                    try:
                        Backoff(p.backoff.initial, p.backoff.maximum, p.backoff.multiplier,
                                p.backoff.jitter)  # fmt: skip
                    except ValueError as exc:  # InvalidPolicy says what was wrong
                        problems.append(f"{at}.policy.backoff: {exc}")
        need(len(addresses) <= 1, "workers.ray_address", "must be the same for every Ray worker",
             sorted(map(str, addresses)))  # fmt: skip
        if problems:
            raise _config_error(tuple(problems))

    def check_runners(self) -> None:
        """Import each inline worker's runner factory and check its arguments against its
        signature (``config check`` and ``serve`` do, before anything starts). A process-isolated
        runner is not imported here: its child process reports a bad one.

        Raises:
            ConfigError: every problem, with its key path.
        """
        problems: list[str] = []
        for i, w in enumerate(self.workers):
            if w.isolation != "inline":
                continue
            try:
                factory = resolve_factory(w.runner)
            except ConfigError as exc:
                problems.append(f"workers[{i}].runner: {exc}")
                continue
            try:
                signature = inspect.signature(factory)
            except (TypeError, ValueError):
                continue  # a builtin or an odd callable: nothing to check against
            for r in range(w.replica_count):
                try:
                    signature.bind(**w.args_of(r))
                except TypeError as exc:
                    where = f"replica_args[{r}]" if w.replica_args else "runner_args"
                    problems.append(f"workers[{i}].{where}: {exc} (for {w.runner})")
                    break
        if problems:
            raise _config_error(tuple(problems))


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _non_negative(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def _path_first(line: str) -> str:
    """cattrs's ``"message @ $.a.b"`` as ``"a.b: message"``."""
    message, _, path = line.rpartition(" @ ")
    path = path.removeprefix("$").removeprefix(".") or "(top level)"
    return f"{path}: {message}"


def _config_error(problems: tuple[str, ...]) -> ConfigError:
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return ConfigError(f"invalid config ({count}):\n" + "\n".join(problems), problems)
