"""The service's configuration: TOML into frozen attrs classes, every problem with its path.

``ServeConfig.from_toml(path)`` / ``ServeConfig.from_dict(data)`` structure the data with cattrs
(unknown keys refused, no type coerced: ``"false"`` is not a bool, ``true`` not an int, ``2.9``
not an int; an int is accepted where a float is expected), then validate it; every problem found,
in the types and in the values, is reported with its key path in one :class:`ConfigError`, in
file order, before anything starts::

    server.port: must be an integer, got True
    workers[1].policy.within: must be > 0, got -1.0
"""

from __future__ import annotations

import inspect
import math
import tomllib
from collections.abc import Container, Iterator, Mapping
from pathlib import Path
from types import UnionType
from typing import Any, NamedTuple, Union, final, get_args, get_origin

import attrs
import cattrs
import cattrs.cols
import cattrs.gen
import cattrs.v

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
    max_model_len: int | None = None
    """The largest ``max_tokens`` a request may ask for (a 400 past it); None: the runner's own
    ``max_model_len`` attribute (an inline runner's), else 4096. A runner that can count the
    prompt also checks prompt plus completion against its own (``CharLM``: 4096)."""

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
    body_timeout: float = 30.0
    """Seconds a client has to send a request's whole body once its headers arrived; past it,
    408 and the connection closes."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle connection (or one whose headers are still arriving) stays open."""
    max_connections: int = 1000
    """Requests served at once (health, readiness and metrics probes aside); one over it gets a
    503 with ``Connection: close`` at once."""
    send_timeout: float = 30.0
    """Seconds a client may take none of the data sent to it (it stopped reading) before its
    connection is dropped (``TCP_USER_TIMEOUT``)."""


@final
@attrs.frozen
class BatchingConfig:
    """``[batching]``: the dynamic batcher flushes at ``max_batch_size`` or ``max_wait``."""

    max_batch_size: int = 32
    max_wait: float = 0.005


_MIN_TIMEOUT = 0.001
"""The shortest timeout a config may set: a millisecond."""
_MAX_REPLICAS = 1024
"""Replicas of one worker, and of all workers together, at most."""
_MAX_WORKERS = 1024
"""``[[workers]]`` tables at most (each has a replica, so more could not pass anyway)."""
_MAX_PENDING = 1_000_000
_MAX_ATTEMPTS = 100
_MAX_BATCH_SIZE = 4096
_MAX_WAIT = 60.0
_MAX_RESTARTS = 10_000
_MAX_CONNECTIONS = 1_000_000
_MAX_MODEL_LEN = 10_000_000
_MAX_DEPTH = 64
"""Arrays and tables inside one another, the top-level table included, at most."""
_MAX_FILE_BYTES = 16 * 1024 * 1024

_Path = tuple[str | int, ...]


def _origin(type_: Any) -> Any:
    return get_origin(type_)


class _WrongType(TypeError):
    """A value of the wrong type; ``expected`` says what it must be, for the message."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _structure_bool(value: object, _: object) -> bool:
    if not isinstance(value, bool):
        raise _WrongType("true or false")
    return value


def _structure_int(value: object, _: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _WrongType("an integer")
    return int(value)


def _structure_float(value: object, _: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _WrongType("a number")
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        raise _WrongType("a finite number") from None


def _structure_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        raise _WrongType("a string")
    return value


def _strict(base: Any, kind: Any, expected: str) -> Any:
    """cattrs's own hook ``base``, which first refuses a value that is not a ``kind``."""

    def structure(value: object, type_: Any) -> Any:
        if not isinstance(value, kind):
            raise _WrongType(expected)
        return base(value, type_)

    return structure


_converter = cattrs.Converter(forbid_extra_keys=True)
"""Structures strictly: a value of the wrong type is an error, never converted (an int where a
float is expected excepted); a table must be a mapping, an array a list."""
for _type, _hook in (
    (bool, _structure_bool),
    (int, _structure_int),
    (float, _structure_float),
    (str, _structure_str),
):
    _converter.register_structure_hook(_type, _hook)
_converter.register_structure_hook_factory(
    attrs.has,
    lambda cl: _strict(cattrs.gen.make_dict_structure_fn(cl, _converter), Mapping, "a table"),
)
_converter.register_structure_hook_factory(
    lambda t: _origin(t) is tuple,
    lambda t: _strict(
        cattrs.cols.homogenous_tuple_structure_factory(t, _converter), list | tuple, "an array"
    ),
)
_converter.register_structure_hook_factory(
    lambda t: _origin(t) is dict,
    lambda t: _strict(cattrs.cols.mapping_structure_factory(t, _converter), Mapping, "a table"),
)


class _Problem(NamedTuple):  # not attrs: tests/test_serving_docs.py documents attrs classes
    """One problem: its text, and the key path that places it in file order."""

    order: _Path
    text: str


class _Fault(NamedTuple):
    """One problem cattrs found while structuring."""

    path: _Path
    shown: str
    """``path`` as the message shows it, ``workers[0].name``."""
    exc: BaseException
    type: Any
    """The type expected at ``path``, where cattrs knows it."""
    owner: type | None
    """The attrs class that has ``path``'s last key as a field, if any."""
    key: bool = False
    """Whether the key at ``path`` itself was refused (a table's key), not its value."""


@final
@attrs.frozen
class ServeConfig:
    """The whole service: ``[server]``, ``[batching]`` and ``[[workers]]``."""

    server: ServerConfig = ServerConfig()
    batching: BatchingConfig = BatchingConfig()
    workers: tuple[WorkerConfig, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeConfig:
        """Structure and validate ``data``, strictly: a value of the wrong type is a problem,
        never converted (an int where a float is expected excepted).

        Raises:
            ConfigError: every problem, of type or of value, each with its key path
                (``problems``), in file order.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config is a table of keys, got {_show(data)}")
        try:
            return cls._from_dict(dict(data))
        except RecursionError:
            raise _config_error(("(top level): nested too deeply",)) from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        deep = _too_deep(data)
        if deep is not None:
            raise _config_error(
                (f"{deep}: nested too deeply (arrays and tables more than {_MAX_DEPTH} deep)",)
            )
        workers = data.get("workers")
        if isinstance(workers, list | tuple) and len(workers) > _MAX_WORKERS:  # before the work
            raise _config_error(
                (f"workers: must hold at most {_MAX_WORKERS} tables, got {len(workers)}",)
            )
        problems: list[_Problem] = []
        bad: set[_Path] = set()  # where a value was wrong: checks that use it are skipped
        current = dict(data)  # repaired in place; what a repair changes is copied first
        copies: dict[int, Any] = {id(current): current}
        config: ServeConfig | None = None
        for _ in range(4):  # each try repairs what the last refused, to check the rest
            try:
                config = _converter.structure(current, cls)
                break
            except (cattrs.ClassValidationError, cattrs.IterableValidationError) as exc:
                faults = list(_faults(exc))
            except Exception as exc:  # not expected: report it rather than a traceback
                problems.append(_Problem((), f"(top level): {cattrs.v.format_exception(exc, cls)}"))
                break
            for fault in faults:
                if not _covered(fault.path, bad):  # else a placeholder of ours was refused
                    problems.append(_describe(fault, current))
                if not isinstance(fault.exc, cattrs.ForbiddenExtraKeysError):
                    bad.add(fault.path)
            if not all(_repair(current, fault, copies) for fault in faults):
                break  # nothing fits in place of a wrong value: no values checked
        if config is not None:
            problems += config._check(bad)
        if problems or config is None:
            texts = tuple(p.text for p in _in_file_order(problems, data))
            raise _config_error(texts or ("(top level): not a config",))
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> ServeConfig:
        """Read, structure and validate a TOML file (see :meth:`from_dict`).

        Raises:
            ConfigError: the file cannot be read, is not TOML (or nested too deeply to parse),
                or has problems.
        """
        try:
            with open(path, "rb") as file:
                raw = file.read(_MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}") from exc
        if len(raw) > _MAX_FILE_BYTES:
            raise ConfigError(f"{path}: too large for a config (over {_MAX_FILE_BYTES} bytes)")
        try:
            data = tomllib.loads(raw.decode())
        except RecursionError:
            raise ConfigError(
                f"{path}: nested too deeply to parse (arrays or tables inside one another; "
                f"a config may nest them {_MAX_DEPTH} deep)"
            ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {exc.start}") from None
        except ValueError as exc:  # TOMLDecodeError, or an integer of thousands of digits
            reason = str(exc).split("; use sys.", 1)[0]  # not Python's advice to raise the limit
            raise ConfigError(f"{path}: not valid TOML: {reason}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain data (what ``config check`` prints)."""
        data: dict[str, Any] = _converter.unstructure(self)
        return data

    def validate(self) -> None:
        """Check every value; raise one ConfigError listing every problem."""
        problems = self._check(set())
        if problems:
            raise _config_error(tuple(p.text for p in problems))

    def _check(self, bad: set[_Path]) -> list[_Problem]:
        """Every problem with a value; a check that uses a path under one in ``bad`` (a value
        of the wrong type, replaced to check the rest) is skipped."""
        problems: list[_Problem] = []

        def need(ok: bool, path: _Path, rule: str, value: object, uses: tuple[_Path, ...] = ()
                 ) -> None:  # fmt: skip
            if not ok and not any(_covered(p, bad) for p in (path, *uses)):
                problems.append(_Problem(path, f"{_dotted(path)}: {rule}, got {_show(value)}"))

        def check(path: _Path, rule: str | None, value: object) -> None:
            need(rule is None, path, rule or "", value)

        s = self.server
        need(isinstance(s.host, str) and bool(s.host.strip()), ("server", "host"),
             "must be a non-empty host name or address", s.host)  # fmt: skip
        need(_is_int(s.port) and 0 <= s.port <= 65535, ("server", "port"),
             "must be in [0, 65535]", s.port)  # fmt: skip
        for key in ("drain_timeout", "request_timeout", "within", "body_timeout",
                    "keep_alive_timeout", "send_timeout"):  # fmt: skip
            value = getattr(s, key)
            check(("server", key), _timeout_rule(value), value)
        restarts = s.max_worker_restarts
        check(("server", "max_worker_restarts"), _count_rule(restarts, 0, _MAX_RESTARTS), restarts)
        check(("server", "max_connections"), _count_rule(s.max_connections, 1, _MAX_CONNECTIONS),
              s.max_connections)  # fmt: skip
        b = self.batching
        check(("batching", "max_batch_size"), _count_rule(b.max_batch_size, 1, _MAX_BATCH_SIZE),
              b.max_batch_size)  # fmt: skip
        check(("batching", "max_wait"), _number_rule(b.max_wait, 0, _MAX_WAIT), b.max_wait)
        need(bool(self.workers), ("workers",), "must name at least one worker", list(self.workers))
        need(len(self.workers) <= _MAX_WORKERS, ("workers",),
             f"must hold at most {_MAX_WORKERS} tables", len(self.workers))  # fmt: skip
        counts = [w.replica_count for w in self.workers]  # those out of range are reported each
        total = sum(n for n in counts if _count_rule(n, 1, _MAX_REPLICAS) is None)
        need(total <= _MAX_REPLICAS, ("workers",),
             f"must have at most {_MAX_REPLICAS} replicas in all", total)  # fmt: skip
        names: set[str] = set()
        ray_uses: list[_Path] = []  # the Ray workers' ray_address and isolation
        addresses: set[str | None] = set()  # of the Ray workers: one Ray per process
        for i, w in enumerate(self.workers):
            at: _Path = ("workers", i)
            name_ok = isinstance(w.name, str) and bool(w.name)
            need(name_ok, (*at, "name"), "must be a non-empty name", w.name)
            need(not (name_ok and w.name in names), (*at, "name"), "must be unique", w.name)
            if name_ok and not _covered((*at, "name"), bad):
                names.add(w.name)
            need(isinstance(w.runner, str) and w.runner.count(":") == 1
                 and all(w.runner.split(":")), (*at, "runner"),
                 "must be an import path 'module:factory'", w.runner)  # fmt: skip
            need(w.device in ("auto", "cpu") or (isinstance(w.device, str)
                 and w.device.startswith("cuda:") and w.device[5:].isdigit()), (*at, "device"),
                 "must be 'auto', 'cpu' or 'cuda:N'", w.device)  # fmt: skip
            check((*at, "replicas"), _count_rule(w.replicas, 1, _MAX_REPLICAS), w.replicas)
            need(len(w.replica_args) <= _MAX_REPLICAS, (*at, "replica_args"),
                 f"must hold at most {_MAX_REPLICAS} entries (one per replica)",
                 len(w.replica_args))  # fmt: skip
            need(not w.replica_args or w.replicas in (1, len(w.replica_args)), (*at, "replicas"),
                 f"must be left out or {len(w.replica_args)} (one per replica_args entry)",
                 w.replicas, uses=((*at, "replica_args"),))  # fmt: skip
            need(w.isolation in ("inline", "process", "ray"), (*at, "isolation"),
                 "must be 'inline', 'process' or 'ray'", w.isolation)  # fmt: skip
            need(not (w.standby or w.standby_load) or w.isolation in ("process", "ray"),
                 (*at, "standby"), "needs isolation = 'process' or 'ray'", w.standby,
                 uses=((*at, "isolation"), (*at, "standby_load")))  # fmt: skip
            if w.isolation == "ray":
                uses: tuple[_Path, ...] = ((*at, "ray_options"), (*at, "ray_address"))
                try:
                    check_ray(w.ray_options, w.ray_address)
                except ConfigError as exc:
                    if not any(_covered(p, bad) for p in uses):
                        problems.append(_Problem((*at, "ray_options"), f"{_dotted(at)}: {exc}"))
                addresses.add(w.ray_address)
                ray_uses += [(*at, "isolation"), (*at, "ray_address")]
            else:
                need(not w.ray_options and w.ray_address is None, (*at, "ray_options"),
                     "needs isolation = 'ray'", w.ray_options or w.ray_address,
                     uses=((*at, "isolation"), (*at, "ray_address")))  # fmt: skip
            check((*at, "max_pending"), _count_rule(w.max_pending, 1, _MAX_PENDING), w.max_pending)
            check((*at, "max_attempts"), _count_rule(w.max_attempts, 1, _MAX_ATTEMPTS),
                  w.max_attempts)  # fmt: skip
            for key in ("readiness_timeout", "hang_timeout"):
                value = getattr(w, key)
                check((*at, key), None if value is None else _timeout_rule(value), value)
            p = w.policy
            if p is not None:
                if p.max_restarts is not None:
                    rule = _count_rule(p.max_restarts, 0, _MAX_RESTARTS)
                    check((*at, "policy", "max_restarts"), rule, p.max_restarts)
                if p.within is not None:
                    check((*at, "policy", "within"), _timeout_rule(p.within), p.within)
                if p.backoff is not None:  # the rules of Backoff, each at its own key
                    bo, where = p.backoff, (*at, "policy", "backoff")
                    initial, maximum = (_number_rule(bo.initial, 0), _number_rule(bo.maximum, 0))
                    check((*where, "initial"), initial, bo.initial)
                    check((*where, "maximum"), maximum, bo.maximum)
                    need(bool(initial or maximum) or bo.initial <= bo.maximum, (*where, "initial"),
                         f"must be <= maximum ({_show(bo.maximum)})", bo.initial,
                         uses=((*where, "maximum"),))  # fmt: skip
                    check((*where, "multiplier"), _number_rule(bo.multiplier, 1), bo.multiplier)
                    check((*where, "jitter"), _number_rule(bo.jitter, 0, 1), bo.jitter)
            if w.max_model_len is not None:
                check((*at, "max_model_len"), _count_rule(w.max_model_len, 1, _MAX_MODEL_LEN),
                      w.max_model_len)  # fmt: skip
        need(len(addresses) <= 1, ("workers", "ray_address"),
             "must be the same for every Ray worker", sorted(map(str, addresses)),
             uses=tuple(ray_uses))  # fmt: skip
        return problems

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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count_rule(value: object, low: int, high: int) -> str | None:
    """What is wrong with a count that must be an int in ``[low, high]``, or None."""
    if not _is_int(value):
        return "must be an integer"
    assert isinstance(value, int)
    if value < low:
        return f"must be >= {low}"
    if value > high:
        return f"must be <= {high}"
    return None


def _timeout_rule(value: object) -> str | None:
    """What is wrong with a timeout (a finite number of seconds, at least a millisecond)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if value <= 0:
        return "must be > 0"
    if value < _MIN_TIMEOUT:
        return f"must be >= {_MIN_TIMEOUT} (a millisecond)"
    return None


def _number_rule(value: object, low: float, high: float = math.inf) -> str | None:
    """What is wrong with a value that must be a finite number in ``[low, high]``, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if value < low:
        return f"must be >= {low:g}"
    if value > high:
        return f"must be <= {high:g}"
    return None


def _show(value: object) -> str:
    """``repr(value)``, cut short when long (a message names the value, not all of it)."""
    try:
        text = repr(value)
    except ValueError:  # an int of thousands of digits
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else "?"
    return text if len(text) <= 80 else text[:76] + " ..."


def _dotted(path: _Path) -> str:
    """``("workers", 1, "name")`` as ``workers[1].name``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text or "(top level)"


def _covered(path: _Path, bad: Container[_Path]) -> bool:
    """Whether ``path`` is, or is under, a path in ``bad``: each of its prefixes is looked up, so
    the cost is the path's length, not the number of bad paths."""
    return any(path[:n] in bad for n in range(len(path) + 1))


def _too_deep(data: Mapping[str, Any]) -> str | None:
    """Where ``data`` nests arrays and tables more than ``_MAX_DEPTH`` deep (its first keys), or
    None. Iterative, so that no depth of nesting can exhaust the stack."""
    stack: list[tuple[object, _Path]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= _MAX_DEPTH and isinstance(node, Mapping | list | tuple):
            return _dotted(path[:3])
        if isinstance(node, Mapping):
            stack += [(value, (*path, str(key))) for key, value in node.items()]
        elif isinstance(node, list | tuple):
            stack += [(value, (*path, i)) for i, value in enumerate(node)]
    return None


_MISSING = object()


def _has(data: object, part: str | int) -> bool:
    """Whether the table or array ``data`` has the key or index ``part``."""
    if isinstance(data, Mapping):
        return part in data
    return isinstance(data, list | tuple) and isinstance(part, int) and 0 <= part < len(data)


def _at(data: Any, path: _Path) -> object:
    """The value at ``path`` in the raw data, or ``_MISSING``."""
    for part in path:
        if not _has(data, part):
            return _MISSING
        data = data[part]
    return data


def _in_file_order(problems: list[_Problem], data: Mapping[str, Any]) -> list[_Problem]:
    """``problems`` sorted by where their paths are in ``data``; keys that are not in it (a
    missing field, a default) come after those that are."""
    positions: dict[int, dict[Any, int]] = {}  # of each table's keys, by id(table): found once

    def order(problem: _Problem) -> tuple[tuple[int, int], ...]:
        node: Any = data
        key: list[tuple[int, int]] = []
        for part in problem.order:
            if not _has(node, part):
                key.append((1, 0))
                node = None
                continue
            if isinstance(node, Mapping):
                if id(node) not in positions:
                    positions[id(node)] = {k: i for i, k in enumerate(node)}
                key.append((0, positions[id(node)][part]))
            else:
                key.append((0, int(part)))
            node = node[part]
        return tuple(key)

    return sorted(problems, key=order)


def _faults(exc: BaseException, path: _Path = (), shown: str = "", type_: Any = None,
            owner: type | None = None, key: bool = False) -> Iterator[_Fault]:  # fmt: skip
    """The leaves of a cattrs validation error, each with its key path (as cattrs's
    ``transform_error`` walks it)."""
    if isinstance(exc, cattrs.ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            where = f"{shown}.{note.name}" if shown else note.name
            yield from _faults(sub, (*path, note.name), where, note.type, exc.cl)
        for sub in without:
            yield _Fault(path, shown, sub, None, None)
    elif isinstance(exc, cattrs.IterableValidationError):
        with_items, without = exc.group_exceptions()
        for sub, item in with_items:
            is_key = item.startswith("Structuring mapping key")
            where = shown if is_key else f"{shown}[{item.index!r}]"
            yield from _faults(sub, (*path, item.index), where, item.type, key=is_key)
        for sub in without:
            yield _Fault(path, shown, sub, None, None)
    else:
        yield _Fault(path, shown, exc, type_, owner, key)


def _expected(type_: Any) -> str | None:
    """What a value of ``type_`` must be, in the words of a message."""
    options = [t for t in get_args(type_) if t is not type(None)] if _is_union(type_) else []
    if len(options) == 1:
        type_ = options[0]
    if attrs.has(type_) or get_origin(type_) is dict:
        return "a table"
    if get_origin(type_) is tuple:
        return "an array"
    return None


def _is_union(type_: Any) -> bool:
    return get_origin(type_) in (Union, UnionType)


def _describe(fault: _Fault, data: object) -> _Problem:
    """The problem a structuring fault is, as a message."""
    where = fault.shown or "(top level)"
    if isinstance(fault.exc, cattrs.ForbiddenExtraKeysError):
        extra = fault.exc.extra_fields
        node = _at(data, fault.path)
        first = next((k for k in node if k in extra), None) if isinstance(node, Mapping) else None
        names = ", ".join(sorted(map(str, extra)))
        order = fault.path if first is None else (*fault.path, first)
        return _Problem(order, f"{where}: extra fields found ({names})")
    if isinstance(fault.exc, KeyError):
        return _Problem(fault.path, f"{where}: required field missing")
    expected = fault.exc.expected if isinstance(fault.exc, _WrongType) else _expected(fault.type)
    if expected is None:
        text = cattrs.v.format_exception(fault.exc, fault.type)
    elif fault.path == ("workers",) and expected == "an array":
        text = f"must be an array of tables ([[workers]]), got {_show(_at(data, fault.path))}"
    elif fault.key:
        text = f"a key must be {expected}, got {_show(fault.path[-1])}"
    else:
        text = f"must be {expected}, got {_show(_at(data, fault.path))}"
    return _Problem(fault.path, f"{where}: {text}")


def _repair(data: dict[str, Any], fault: _Fault, copies: dict[int, Any]) -> bool:
    """Leave the value ``fault`` refused out of ``data`` (its default applies) or put a
    placeholder in its place, so that the rest can be structured and checked; False where
    nothing fits. ``data`` is changed in place (see :func:`_writable`)."""
    if isinstance(fault.exc, cattrs.ForbiddenExtraKeysError):
        table = _writable(data, fault.path, copies)
        for extra in fault.exc.extra_fields:
            table.pop(extra, None)
        return True
    if not fault.path:
        return False
    key, above = fault.path[-1], fault.path[:-1]
    parent = _at(data, above)
    if isinstance(parent, list | tuple) and isinstance(key, int):
        if _expected(fault.type) != "a table":
            return False
        _writable(data, above, copies)[key] = {}
        return True
    if not isinstance(parent, Mapping):
        return False
    if fault.owner is not None:  # a field: its default, or a placeholder when it has none
        field = attrs.fields_dict(fault.owner).get(str(key))
        if field is None:
            return False
        if field.default is attrs.NOTHING:
            if fault.type is not str:
                return False
            _writable(data, above, copies)[key] = ""
            return True
    _writable(data, above, copies).pop(key, None)
    return True


def _writable(data: dict[str, Any], path: _Path, copies: dict[int, Any]) -> Any:
    """The table or array at ``path`` in ``data``, which must be in ``copies``; it and those above
    it are copied the first time (a table to a dict, an array to a list), so that a repair never
    changes the caller's data and copies each table or array once, not once per repair.
    ``copies`` holds the copies by id, and keeps them alive so that no id is reused."""
    node: Any = data
    for part in path:
        child = node[part]
        if id(child) not in copies:
            child = dict(child) if isinstance(child, Mapping) else list(child)
            copies[id(child)] = node[part] = child
        node = child
    return node


def _config_error(problems: tuple[str, ...]) -> ConfigError:
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return ConfigError(f"invalid config ({count}):\n" + "\n".join(problems), problems)
