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
from collections.abc import Container, Mapping
from pathlib import Path
from typing import Any, final

import attrs
import cattrs

from .._errors import ConfigError, shown
from ..tier._runner import resolve_factory
from ._config_checks import MAX_WORKERS, value_problems
from ._config_reading import (
    MAX_DEPTH,
    KeyPath,
    Problem,
    config_error,
    in_file_order,
    read,
    read_toml,
    too_deep,
)
from ._config_tables import BackoffConfig, BatchingConfig, PolicyConfig, ServerConfig, WorkerConfig

__all__ = [
    "BackoffConfig",
    "BatchingConfig",
    "PolicyConfig",
    "ServeConfig",
    "ServerConfig",
    "WorkerConfig",
]

_converter = cattrs.Converter()
"""Unstructures a config for :meth:`ServeConfig.to_dict` (tuples as lists)."""


@final
@attrs.frozen
class ServeConfig:
    """The whole service: ``[server]``, ``[batching]`` and ``[[workers]]``."""

    server: ServerConfig = attrs.Factory(ServerConfig)
    batching: BatchingConfig = attrs.Factory(BatchingConfig)
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
        deep = too_deep(data)
        if deep is not None:
            raise config_error(
                (f"{deep}: nested too deeply (arrays and tables more than {MAX_DEPTH} deep)",)
            )
        workers = data.get("workers")
        if isinstance(workers, list | tuple) and len(workers) > MAX_WORKERS:  # before the work
            raise config_error(
                (f"workers: must hold at most {MAX_WORKERS} tables, got {len(workers)}",)
            )
        problems: list[Problem] = []
        unread: set[KeyPath] = set()
        config: ServeConfig = read(data, cls, (), problems, unread)
        problems += config._check(unread)
        if problems:
            raise config_error(tuple(p.text for p in in_file_order(problems, data)))
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> ServeConfig:
        """Read and validate a TOML file (see :meth:`from_dict`).

        Raises:
            ConfigError: the file cannot be read, is not TOML (or nested too deeply to parse),
                or has problems.
        """
        return cls.from_dict(read_toml(path))

    def to_dict(self, *, secrets: bool = False) -> dict[str, Any]:
        """The effective config as plain data (what ``config check`` prints): each API key
        replaced by ``"<hidden>"`` unless ``secrets``."""
        data: dict[str, Any] = _converter.unstructure(self)
        if not secrets:
            data["server"]["api_keys"] = ["<hidden>"] * len(self.server.api_keys)
        return data

    def validate(self) -> None:
        """Check every value; raise one ConfigError listing every problem."""
        problems = self._check()
        if problems:
            raise config_error(tuple(p.text for p in problems))

    def _check(self, unread: Container[KeyPath] = frozenset()) -> list[Problem]:
        """Every problem with a value, of type or of range; none at a path in ``unread`` (a
        stand-in for a value the data lacked, reported already)."""
        return value_problems(self.server, self.batching, self.workers, unread)

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
            raise config_error(tuple(problems))
