"""The value checks of a serve config: every value's type and range, each problem at its key path.

A ``[[workers]]`` field is checked by the rule of the worker's own argument
(:mod:`trio_supervise.worker._options`: the one place that says what each must be), with the
config's own bounds added (maxima, and a millisecond at least for a timeout); the problem reads
``workers[0].hang_timeout: must be > 0, got -1.0``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Container

from .._errors import ConfigError, shown
from ..worker._options import (
    DEVICE,
    FLAG,
    FRAMES,
    ISOLATED,
    ISOLATION,
    MAX_ATTEMPTS,
    MAX_PENDING,
    TIMEOUT,
    Count,
    Seconds,
    Text,
    check_ray,
    is_int,
    is_number,
)
from ._config_reading import KeyPath, Problem, dotted
from ._config_tables import BatchingConfig, PolicyConfig, ServerConfig, WorkerConfig

__all__ = ["MAX_WORKERS", "value_problems"]

_MIN_TIMEOUT = 0.001
"""The shortest timeout a config may set: a millisecond."""
_MAX_REPLICAS = 1024
"""Replicas of one worker, and of all workers together, at most."""
MAX_WORKERS = 1024
"""``[[workers]]`` tables at most (each has a replica, so more could not pass anyway)."""
_MAX_WAIT = 60.0
_SEND_TIMEOUT = TIMEOUT.at_most(2_000_000.0)
"""``TCP_USER_TIMEOUT`` is a 32-bit count of milliseconds."""
_SERVER_TIMEOUTS = ("drain_timeout", "request_timeout", "within", "body_timeout",
                    "keep_alive_timeout", "send_timeout")  # fmt: skip

# The worker's own rules (worker/_options.py), bounded for a config; and the config's own.
_PENDING = MAX_PENDING.at_most(1_000_000)
_ATTEMPTS = MAX_ATTEMPTS.at_most(100)
_RESTARTS = Count(0, 10_000)
_REPLICAS = Count(1, _MAX_REPLICAS)
_CONNECTIONS = Count(1, 1_000_000)
_BATCH_SIZE = Count(1, 4096)
_MODEL_LEN = Count(1, 10_000_000)
_HOST = Text(str.strip, "a non-empty host name or address")
_PATH = Text(str.strip, "a non-empty file path")
_NAME = Text(bool, "a non-empty name")
_RUNNER = Text(lambda text: text.count(":") == 1 and all(text.split(":")),
               "an import path 'module:factory'")  # fmt: skip


def _timeout_rule(value: object, rule: Seconds = TIMEOUT) -> str | None:
    """What is wrong with a timeout in a config: ``rule``'s problem, or under a millisecond."""
    problem = rule.problem(value)
    if problem is None and isinstance(value, int | float) and value < _MIN_TIMEOUT:
        return f"must be >= {_MIN_TIMEOUT} (a millisecond)"
    return problem


def _number_rule(value: object, low: float, high: float = math.inf) -> str | None:
    """What is wrong with a value that must be a finite number in ``[low, high]``, or None."""
    if not is_number(value):
        return "must be a number"
    assert isinstance(value, int | float)
    if not abs(value) <= sys.float_info.max:  # inf, nan, or an int too large for a float
        return "must be a finite number"
    if value < low:
        return f"must be >= {low:g}"
    if value > high:
        return f"must be <= {high:g}"
    return None


class _Report:
    """The problems found so far; none at a path in ``unread`` (a stand-in for a value the data
    lacked, reported already)."""

    def __init__(self, unread: Container[KeyPath]) -> None:
        self.problems: list[Problem] = []
        self.unread = unread

    def need(self, ok: bool, path: KeyPath, rule: str, value: object) -> bool:
        if not ok and path not in self.unread:
            self.problems.append(Problem(path, f"{dotted(path)}: {rule}, got {shown(value)}"))
        return ok

    def check(self, path: KeyPath, rule: str | None, value: object) -> bool:
        return self.need(rule is None, path, rule or "", value)


def value_problems(
    server: ServerConfig,
    batching: BatchingConfig,
    workers: tuple[WorkerConfig, ...],
    unread: Container[KeyPath] = frozenset(),
) -> list[Problem]:
    """Every problem with a value, of type or of range (see :class:`_Report` for ``unread``)."""
    report = _Report(unread)
    _server(report, server)
    b, check = batching, report.check
    check(("batching", "max_batch_size"), _BATCH_SIZE.problem(b.max_batch_size), b.max_batch_size)
    check(("batching", "max_wait"), _number_rule(b.max_wait, 0, _MAX_WAIT), b.max_wait)
    _workers(report, workers)
    return report.problems


def _server(report: _Report, s: ServerConfig) -> None:
    check = report.check
    check(("server", "host"), _HOST.problem(s.host), s.host)
    if report.need(is_int(s.port), ("server", "port"), "must be an integer", s.port):
        report.need(0 <= s.port <= 65535, ("server", "port"), "must be in [0, 65535]", s.port)
    for key in _SERVER_TIMEOUTS:
        value = getattr(s, key)
        rule = _SEND_TIMEOUT if key == "send_timeout" else TIMEOUT
        check(("server", key), _timeout_rule(value, rule), value)
    restarts = s.max_worker_restarts
    check(("server", "max_worker_restarts"), _RESTARTS.problem(restarts), restarts)
    connections = s.max_connections
    check(("server", "max_connections"), _CONNECTIONS.problem(connections), connections)
    check(("server", "reuse_port"), FLAG.problem(s.reuse_port), s.reuse_port)
    check(("server", "metrics_need_key"), FLAG.problem(s.metrics_need_key), s.metrics_need_key)
    check(("server", "tracing"), FLAG.problem(s.tracing), s.tracing)
    if s.tracing is True and importlib.util.find_spec("opentelemetry") is None:
        report.problems.append(Problem(("server", "tracing"), (
            "server.tracing: needs OpenTelemetry, which is not installed: "
            "pip install 'trio-supervise[otel]'")))  # fmt: skip
    if s.api_key_file is not None:
        check(("server", "api_key_file"), _PATH.problem(s.api_key_file), s.api_key_file)
    for i, key in enumerate(s.api_keys):
        if not (isinstance(key, str) and key.strip() == key and key and key.isprintable()):
            kind = "a string" if isinstance(key, str) else type(key).__name__
            report.problems.append(Problem(("server", "api_keys", i), (
                f"server.api_keys[{i}]: must be a non-empty string of printable characters "
                f"with no space around it, got {kind} that is not shown (a secret)")))  # fmt: skip


def _workers(report: _Report, workers: tuple[WorkerConfig, ...]) -> None:
    need = report.need
    need(bool(workers), ("workers",), "must name at least one worker", list(workers))
    need(len(workers) <= MAX_WORKERS, ("workers",),
         f"must hold at most {MAX_WORKERS} tables", len(workers))  # fmt: skip
    counts = [w.replica_count for w in workers]  # those out of range are reported each
    total = sum(n for n in counts if _REPLICAS.problem(n) is None)
    need(total <= _MAX_REPLICAS, ("workers",),
         f"must have at most {_MAX_REPLICAS} replicas in all", total)  # fmt: skip
    names: set[str] = set()
    addresses: set[str | None] = set()  # of the Ray workers: one Ray per process
    for i, w in enumerate(workers):
        _worker(report, w, ("workers", i), names, addresses)
    need(len(addresses) <= 1, ("workers", "ray_address"),
         "must be the same for every Ray worker", sorted(map(str, addresses)))  # fmt: skip


def _worker(report: _Report, w: WorkerConfig, at: KeyPath, names: set[str],
            addresses: set[str | None]) -> None:  # fmt: skip
    """The problems of one ``[[workers]]`` table; its name joins ``names``, and its Ray address
    (a Ray worker's) ``addresses``."""
    need, check = report.need, report.check
    if check((*at, "name"), _NAME.problem(w.name), w.name):
        need(w.name not in names, (*at, "name"), "must be unique", w.name)
        names.add(w.name)
    check((*at, "runner"), _RUNNER.problem(w.runner), w.runner)
    check((*at, "device"), DEVICE.problem(w.device), w.device)
    check((*at, "replicas"), _REPLICAS.problem(w.replicas), w.replicas)
    need(len(w.replica_args) <= _MAX_REPLICAS, (*at, "replica_args"),
         f"must hold at most {_MAX_REPLICAS} entries (one per replica)",
         len(w.replica_args))  # fmt: skip
    need(not w.replica_args or not is_int(w.replicas)
         or w.replicas in (1, len(w.replica_args)), (*at, "replicas"),
         f"must be left out or {len(w.replica_args)} (one per replica_args entry)",
         w.replicas)  # fmt: skip
    # A check that uses other values runs only where their types are right: else each is
    # reported once, at its own key.
    check((*at, "isolation"), ISOLATION.problem(w.isolation), w.isolation)
    known = isinstance(w.isolation, str)
    flags = [check((*at, k), FLAG.problem(getattr(w, k)), getattr(w, k))
             for k in ("standby", "standby_load")]  # fmt: skip
    need(not (known and all(flags) and (w.standby or w.standby_load))
         or w.isolation in ISOLATED, (*at, "standby"),
         "needs isolation = 'process' or 'ray'", w.standby)  # fmt: skip
    address = w.ray_address
    if need(address is None or isinstance(address, str), (*at, "ray_address"),
            "must be a string", address):  # fmt: skip
        if w.isolation == "ray":
            try:
                check_ray(w.ray_options, address)
            except ConfigError as exc:
                if (*at, "ray_options") not in report.unread:
                    report.problems.append(Problem((*at, "ray_options"), f"{dotted(at)}: {exc}"))
            check((*at, "ray_frames"), FRAMES.problem(w.ray_frames), w.ray_frames)
            addresses.add(address)
        elif known:
            need(not w.ray_options and address is None, (*at, "ray_options"),
                 "needs isolation = 'ray'", w.ray_options or address)  # fmt: skip
            need(w.ray_frames == "direct", (*at, "ray_frames"), "needs isolation = 'ray'",
                 w.ray_frames)  # fmt: skip
    check((*at, "max_pending"), _PENDING.problem(w.max_pending), w.max_pending)
    check((*at, "max_attempts"), _ATTEMPTS.problem(w.max_attempts), w.max_attempts)
    for key in ("readiness_timeout", "hang_timeout"):
        value = getattr(w, key)
        check((*at, key), None if value is None else _timeout_rule(value), value)
    if w.policy is not None:
        _policy(report, w.policy, (*at, "policy"))
    if w.max_model_len is not None:
        check((*at, "max_model_len"), _MODEL_LEN.problem(w.max_model_len), w.max_model_len)


def _policy(report: _Report, p: PolicyConfig, at: KeyPath) -> None:
    """The problems of ``[workers.policy]``: the rules of Policy and Backoff, each at its key."""
    need, check = report.need, report.check
    if p.max_restarts is not None:
        check((*at, "max_restarts"), _RESTARTS.problem(p.max_restarts), p.max_restarts)
    if p.within is not None:
        check((*at, "within"), _timeout_rule(p.within), p.within)
    if p.backoff is not None:
        bo, where = p.backoff, (*at, "backoff")
        initial, maximum = (_number_rule(bo.initial, 0), _number_rule(bo.maximum, 0))
        check((*where, "initial"), initial, bo.initial)
        check((*where, "maximum"), maximum, bo.maximum)
        need(bool(initial or maximum) or bo.initial <= bo.maximum, (*where, "initial"),
             f"must be <= maximum ({shown(bo.maximum)})", bo.initial)  # fmt: skip
        check((*where, "multiplier"), _number_rule(bo.multiplier, 1), bo.multiplier)
        check((*where, "jitter"), _number_rule(bo.jitter, 0, 1), bo.jitter)
