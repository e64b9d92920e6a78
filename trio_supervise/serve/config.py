"""The service's configuration: TOML into frozen attrs classes, every problem with its path.

``ServeConfig.from_toml(path)`` / ``ServeConfig.from_dict(data)`` read the data in one pass
(unknown keys refused; a table or an array of the wrong kind, a missing required key, reported
and the rest still read), then check every value, its type first: none is coerced (``"false"``
is not a bool, ``true`` not an int, ``2.9`` not an int; an int is accepted where a float is
expected). Every problem is reported with its key path in one :class:`ConfigError`, in file
order, before anything starts::

    server.port: must be an integer, got True
    workers[1].policy.within: must be > 0, got -1.0
"""

from __future__ import annotations

import inspect
import math
import sys
import tomllib
from collections.abc import Callable, Container, Mapping
from pathlib import Path
from types import UnionType
from typing import Any, NamedTuple, Union, final, get_args, get_origin, get_type_hints

import attrs
import cattrs

from .._errors import ConfigError, shown
from ..supervision import Backoff, Policy, RestartIntensity
from ..tier._runner import resolve_factory
from ..worker._options import check_ray

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
_MAX_SEND_TIMEOUT = 2_000_000.0
"""``TCP_USER_TIMEOUT`` is a 32-bit count of milliseconds."""
_MAX_DEPTH = 64
"""Arrays and tables inside one another, the top-level table included, at most."""
_MAX_FILE_BYTES = 16 * 1024 * 1024

_Path = tuple[str | int, ...]

_converter = cattrs.Converter()
"""Unstructures a config for :meth:`ServeConfig.to_dict` (tuples as lists)."""


class _Problem(NamedTuple):  # not attrs: tests/serve/test_serving_docs.py documents attrs classes
    """One problem: its text, and the key path that places it in file order."""

    order: _Path
    text: str


@final
@attrs.frozen
class ServeConfig:
    """The whole service: ``[server]``, ``[batching]`` and ``[[workers]]``."""

    server: ServerConfig = ServerConfig()
    batching: BatchingConfig = BatchingConfig()
    workers: tuple[WorkerConfig, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeConfig:
        """Read and validate ``data``, strictly: a value of the wrong type is a problem, never
        converted (an int where a float is expected excepted).

        Raises:
            ConfigError: every problem, of shape, type or value, each with its key path
                (``problems``), in file order.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config is a table of keys, got {shown(data)}")
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
        unread: set[_Path] = set()
        config: ServeConfig = _read(data, cls, (), problems, unread)
        problems += config._check(unread)
        if problems:
            raise _config_error(tuple(p.text for p in _in_file_order(problems, data)))
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> ServeConfig:
        """Read and validate a TOML file (see :meth:`from_dict`).

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
        problems = self._check()
        if problems:
            raise _config_error(tuple(p.text for p in problems))

    def _check(self, unread: Container[_Path] = frozenset()) -> list[_Problem]:
        """Every problem with a value, of type or of range; none at a path in ``unread`` (a
        stand-in for a value the data lacked, reported already)."""
        problems: list[_Problem] = []

        def need(ok: bool, path: _Path, rule: str, value: object) -> bool:
            if not ok and path not in unread:
                problems.append(_Problem(path, f"{_dotted(path)}: {rule}, got {shown(value)}"))
            return ok

        def check(path: _Path, rule: str | None, value: object) -> bool:
            return need(rule is None, path, rule or "", value)

        s = self.server
        check(("server", "host"),
              _text_rule(s.host, str.strip, "must be a non-empty host name or address"),
              s.host)  # fmt: skip
        if need(_is_int(s.port), ("server", "port"), "must be an integer", s.port):
            need(0 <= s.port <= 65535, ("server", "port"), "must be in [0, 65535]", s.port)
        for key in ("drain_timeout", "request_timeout", "within", "body_timeout",
                    "keep_alive_timeout", "send_timeout"):  # fmt: skip
            value = getattr(s, key)
            most = _MAX_SEND_TIMEOUT if key == "send_timeout" else math.inf
            check(("server", key), _timeout_rule(value, most), value)
        restarts = s.max_worker_restarts
        check(("server", "max_worker_restarts"), _count_rule(restarts, 0, _MAX_RESTARTS), restarts)
        check(("server", "max_connections"), _count_rule(s.max_connections, 1, _MAX_CONNECTIONS),
              s.max_connections)  # fmt: skip
        check(("server", "reuse_port"), _bool_rule(s.reuse_port), s.reuse_port)
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
        addresses: set[str | None] = set()  # of the Ray workers: one Ray per process
        for i, w in enumerate(self.workers):
            at: _Path = ("workers", i)
            if check((*at, "name"), _text_rule(w.name, bool, "must be a non-empty name"), w.name):
                need(w.name not in names, (*at, "name"), "must be unique", w.name)
                names.add(w.name)
            check((*at, "runner"), _text_rule(w.runner, _is_import_path,
                  "must be an import path 'module:factory'"), w.runner)  # fmt: skip
            check((*at, "device"), _text_rule(w.device, _is_device,
                  "must be 'auto', 'cpu' or 'cuda:N'"), w.device)  # fmt: skip
            check((*at, "replicas"), _count_rule(w.replicas, 1, _MAX_REPLICAS), w.replicas)
            need(len(w.replica_args) <= _MAX_REPLICAS, (*at, "replica_args"),
                 f"must hold at most {_MAX_REPLICAS} entries (one per replica)",
                 len(w.replica_args))  # fmt: skip
            need(not w.replica_args or not _is_int(w.replicas)
                 or w.replicas in (1, len(w.replica_args)), (*at, "replicas"),
                 f"must be left out or {len(w.replica_args)} (one per replica_args entry)",
                 w.replicas)  # fmt: skip
            # A check that uses other values runs only where their types are right: else each
            # is reported once, at its own key.
            check((*at, "isolation"), _text_rule(w.isolation, _ISOLATIONS.__contains__,
                  "must be 'inline', 'process' or 'ray'"), w.isolation)  # fmt: skip
            known = isinstance(w.isolation, str)
            flags = [check((*at, k), _bool_rule(getattr(w, k)), getattr(w, k))
                     for k in ("standby", "standby_load")]  # fmt: skip
            need(not (known and all(flags) and (w.standby or w.standby_load))
                 or w.isolation in ("process", "ray"), (*at, "standby"),
                 "needs isolation = 'process' or 'ray'", w.standby)  # fmt: skip
            address = w.ray_address
            if need(address is None or isinstance(address, str), (*at, "ray_address"),
                    "must be a string", address):  # fmt: skip
                if w.isolation == "ray":
                    try:
                        check_ray(w.ray_options, address)
                    except ConfigError as exc:
                        if (*at, "ray_options") not in unread:
                            problems.append(_Problem((*at, "ray_options"), f"{_dotted(at)}: {exc}"))
                    addresses.add(address)
                elif known:
                    need(not w.ray_options and address is None, (*at, "ray_options"),
                         "needs isolation = 'ray'", w.ray_options or address)  # fmt: skip
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
                         f"must be <= maximum ({shown(bo.maximum)})", bo.initial)  # fmt: skip
                    check((*where, "multiplier"), _number_rule(bo.multiplier, 1), bo.multiplier)
                    check((*where, "jitter"), _number_rule(bo.jitter, 0, 1), bo.jitter)
            if w.max_model_len is not None:
                check((*at, "max_model_len"), _count_rule(w.max_model_len, 1, _MAX_MODEL_LEN),
                      w.max_model_len)  # fmt: skip
        need(len(addresses) <= 1, ("workers", "ray_address"),
             "must be the same for every Ray worker", sorted(map(str, addresses)))  # fmt: skip
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


def _bool_rule(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _text_rule(value: object, valid: Callable[[str], object], rule: str) -> str | None:
    """What is wrong with a string that ``valid`` must accept (``rule`` where it does not), or
    None."""
    if not isinstance(value, str):
        return "must be a string"
    return None if valid(value) else rule


def _is_import_path(text: str) -> bool:
    return text.count(":") == 1 and all(text.split(":"))


def _is_device(text: str) -> bool:
    return text in ("auto", "cpu") or (text.startswith("cuda:") and text[5:].isdigit())


_ISOLATIONS = ("inline", "process", "ray")


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


def _timeout_rule(value: object, most: float = math.inf) -> str | None:
    """What is wrong with a timeout (a finite number of seconds, at least a millisecond, at
    most ``most``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not abs(value) <= sys.float_info.max:  # inf, nan, or an int too large for a float
        return "must be a finite number"
    if value <= 0:
        return "must be > 0"
    if value < _MIN_TIMEOUT:
        return f"must be >= {_MIN_TIMEOUT} (a millisecond)"
    if value > most:
        return f"must be <= {most:g}"
    return None


def _number_rule(value: object, low: float, high: float = math.inf) -> str | None:
    """What is wrong with a value that must be a finite number in ``[low, high]``, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not abs(value) <= sys.float_info.max:  # inf, nan, or an int too large for a float
        return "must be a finite number"
    if value < low:
        return f"must be >= {low:g}"
    if value > high:
        return f"must be <= {high:g}"
    return None


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


def _has(data: object, part: str | int) -> bool:
    """Whether the table or array ``data`` has the key or index ``part``."""
    if isinstance(data, Mapping):
        return part in data
    return isinstance(data, list | tuple) and isinstance(part, int) and 0 <= part < len(data)


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


def _read(value: object, type_: Any, path: _Path, problems: list[_Problem], unread: set[_Path]
          ) -> Any:  # fmt: skip
    """``value`` read as a ``type_`` in one pass: tables and arrays built, scalars left as they
    are for :meth:`ServeConfig._check` (an int made a float where a float is expected). Each
    problem of shape goes to ``problems`` and the rest is still read: a table or an array of the
    wrong kind reads as an empty one, extra and non-string keys are left out, a missing required
    value reads as None; such a stand-in's path goes to ``unread``, where no check reports it."""

    def problem(order: _Path, text: str, where: _Path = path) -> None:
        problems.append(_Problem(order, f"{_dotted(where)}: {text}"))

    def wrong(kind: str) -> None:
        problem(path, f"must be {kind}, got {shown(value)}")
        unread.add(path)

    if get_origin(type_) in (Union, UnionType):  # every union here is ``X | None``
        if value is None:
            return None
        type_ = get_args(type_)[0]
    if attrs.has(type_):
        table = value if isinstance(value, Mapping) else {}
        if table is not value:
            wrong("a table")
        fields = attrs.fields_dict(type_)
        extra = [key for key in table if key not in fields]
        if extra:
            problem((*path, extra[0]), f"extra fields found ({', '.join(sorted(map(str, extra)))})")
        types, kwargs = get_type_hints(type_), {}
        for name, field in fields.items():
            at = (*path, name)
            if name in table:
                kwargs[name] = _read(table[name], types[name], at, problems, unread)
            elif field.default is attrs.NOTHING:
                if table is value:  # else its table is reported
                    problem(at, "required field missing", at)
                kwargs[name] = None
                unread.add(at)
        return type_(**kwargs)
    if get_origin(type_) is tuple:
        if not isinstance(value, list | tuple):
            wrong("an array of tables ([[workers]])" if path == ("workers",) else "an array")
            return ()
        item = get_args(type_)[0]  # ``tuple[X, ...]``
        return tuple(_read(v, item, (*path, i), problems, unread) for i, v in enumerate(value))
    if get_origin(type_) is dict:
        if not isinstance(value, Mapping):
            wrong("a table")
            return {}
        for key in value:
            if not isinstance(key, str):
                problem((*path, key), f"a key must be a string, got {shown(key)}")
        return {key: v for key, v in value.items() if isinstance(key, str)}
    if type_ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value) if abs(value) <= sys.float_info.max else value  # else not finite
    return value


def _config_error(problems: tuple[str, ...]) -> ConfigError:
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return ConfigError(f"invalid config ({count}):\n" + "\n".join(problems), problems)
