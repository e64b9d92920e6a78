"""Reading a serve config's data into its attrs classes, each problem of shape at its key path.

:func:`read` builds the tables and arrays in one pass (scalars are left for the value checks);
:func:`read_toml` reads a file's TOML; :func:`in_file_order` sorts problems by where their keys
are in the data; :func:`config_error` makes the one :class:`ConfigError` that lists them.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, NamedTuple, Union, get_args, get_origin, get_type_hints

import attrs

from .._errors import ConfigError, shown
from ..worker._options import is_int

__all__ = [
    "MAX_DEPTH",
    "KeyPath",
    "Problem",
    "config_error",
    "dotted",
    "in_file_order",
    "read",
    "read_toml",
    "too_deep",
]

MAX_DEPTH = 64
"""Arrays and tables inside one another, the top-level table included, at most."""
_MAX_FILE_BYTES = 16 * 1024 * 1024

KeyPath = tuple[str | int, ...]

SECRET = "api_keys"
"""The key whose values are never shown in a problem."""
"""Where a value is: ``("workers", 1, "name")`` is ``workers[1].name``."""


class Problem(NamedTuple):  # not attrs: tests/serve/test_serving_docs.py documents attrs classes
    """One problem: its text, and the key path that places it in file order."""

    order: KeyPath
    text: str


def dotted(path: KeyPath) -> str:
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


def too_deep(data: Mapping[str, Any]) -> str | None:
    """Where ``data`` nests arrays and tables more than ``MAX_DEPTH`` deep (its first keys), or
    None. Iterative, so that no depth of nesting can exhaust the stack."""
    stack: list[tuple[object, KeyPath]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_DEPTH and isinstance(node, Mapping | list | tuple):
            return dotted(path[:3])
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


def in_file_order(problems: list[Problem], data: Mapping[str, Any]) -> list[Problem]:
    """``problems`` sorted by where their paths are in ``data``; keys that are not in it (a
    missing field, a default) come after those that are."""
    positions: dict[int, dict[Any, int]] = {}  # of each table's keys, by id(table): found once

    def order(problem: Problem) -> tuple[tuple[int, int], ...]:
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


def read(value: object, type_: Any, path: KeyPath, problems: list[Problem], unread: set[KeyPath]
          ) -> Any:  # fmt: skip
    """``value`` read as a ``type_`` in one pass: tables and arrays built, scalars left as they
    are for the value checks (an int made a float where a float is expected). Each
    problem of shape goes to ``problems`` and the rest is still read: a table or an array of the
    wrong kind reads as an empty one, extra and non-string keys are left out, a missing required
    value reads as None; such a stand-in's path goes to ``unread``, where no check reports it."""

    def problem(order: KeyPath, text: str, where: KeyPath = path) -> None:
        problems.append(Problem(order, f"{dotted(where)}: {text}"))

    def wrong(kind: str) -> None:
        got = "a value that is not shown (a secret)" if SECRET in path else shown(value)
        problem(path, f"must be {kind}, got {got}")
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
                kwargs[name] = read(table[name], types[name], at, problems, unread)
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
        return tuple(read(v, item, (*path, i), problems, unread) for i, v in enumerate(value))
    if get_origin(type_) is dict:
        if not isinstance(value, Mapping):
            wrong("a table")
            return {}
        for key in value:
            if not isinstance(key, str):
                problem((*path, key), f"a key must be a string, got {shown(key)}")
        return {key: v for key, v in value.items() if isinstance(key, str)}
    if type_ is float and is_int(value):
        assert isinstance(value, int)
        return float(value) if abs(value) <= sys.float_info.max else value  # else not finite
    return value


def read_small_file(path: str | Path, limit: int, what: str) -> bytes:
    """A file of at most ``limit`` bytes (``what`` it is, for the errors).

    Raises:
        ConfigError: it cannot be read, or is larger.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    if len(raw) > limit:
        raise ConfigError(f"{path}: too large for {what} (over {limit} bytes)")
    return raw


def read_toml(path: str | Path) -> Any:
    """The data of a TOML file.

    Raises:
        ConfigError: the file cannot be read, is too large, is not TOML, or is nested too deeply
            to parse.
    """
    raw = read_small_file(path, _MAX_FILE_BYTES, "config")
    try:
        data = tomllib.loads(raw.decode())
    except RecursionError:
        raise ConfigError(
            f"{path}: nested too deeply to parse (arrays or tables inside one another; "
            f"a config may nest them {MAX_DEPTH} deep)"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {exc.start}") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of thousands of digits
        reason = str(exc).split("; use sys.", 1)[0]  # not Python's advice to raise the limit
        raise ConfigError(f"{path}: not valid TOML: {reason}") from exc
    return data


def config_error(problems: tuple[str, ...]) -> ConfigError:
    """The one error that lists every problem (``problems``), counted."""
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return ConfigError(f"invalid config ({count}):\n" + "\n".join(problems), problems)
