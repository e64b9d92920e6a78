"""The config reference in docs/serving.md matches the attrs classes that serve/config.py exports.

The convention it parses: under "## Config reference", each class has a ``### `` heading that
names it in backticks and parentheses, e.g. ``### `[server]` (`ServerConfig`)``, followed by a
table whose rows read ``| `key` | default | meaning |``. The default is either
``required`` (no attrs default) or a Python literal in backticks, compared by value and type
with the attrs default (a ``Factory`` is called; an attrs-instance default is documented as
``{}``, the table left empty, and compared as ``cls(**{})``; a tuple default as a list).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_supervise.serve import config as config_module

DOC = Path(__file__).parents[2] / "docs" / "serving.md"
HEADING = re.compile(r"^### .*\(`(\w+)`\)\s*$")
ROW = re.compile(r"^\| `(\w+)` \| ([^|]+?) \| .*\|\s*$")
REQUIRED = object()


def config_classes() -> dict[str, type]:
    exported = {name: getattr(config_module, name) for name in config_module.__all__}
    return {name: obj for name, obj in exported.items() if inspect.isclass(obj) and attrs.has(obj)}


def reference() -> dict[str, dict[str, str]]:
    """``{class name: {key: default text}}`` from the config reference section."""
    text = DOC.read_text()
    section = text.split("\n## Config reference\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, dict[str, str]] = {}
    current: str | None = None
    for line in section.splitlines():
        heading = HEADING.match(line)
        if heading:
            current = heading.group(1)
            assert current not in tables, f"{current} documented twice"
            tables[current] = {}
            continue
        row = ROW.match(line)
        if row and current is not None:
            key, default = row.groups()
            assert key not in tables[current], f"{current}.{key} documented twice"
            tables[current][key] = default.strip()
    return tables


def documented_value(text: str) -> Any:
    if text == "required":
        return REQUIRED
    assert text.startswith("`") and text.endswith("`"), f"not a `literal`: {text!r}"
    return ast.literal_eval(text[1:-1])


def attrs_default(field: attrs.Attribute[Any]) -> Any:
    default = field.default
    if default is attrs.NOTHING:
        return REQUIRED
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory()  # type: ignore[union-attr]
    return default


def test_every_config_class_is_documented() -> None:
    assert set(reference()) == set(config_classes())


@pytest.mark.parametrize("name", sorted(config_classes()))
def test_documented_keys_and_defaults_match_the_class(name: str) -> None:
    cls = config_classes()[name]
    documented = reference()[name]
    fields = {f.name: f for f in attrs.fields(cls)}
    assert list(documented) == list(fields), f"{name}: keys differ from the class's fields"
    for key, text in documented.items():
        value, default = documented_value(text), attrs_default(fields[key])
        if attrs.has(type(default)):
            assert value == {}, f"{name}.{key}: an attrs default is documented as `{{}}`"
            value = type(default)()
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        assert value == default and type(value) is type(default), (
            f"{name}.{key}: documented {text}, the class says {default!r}"
        )


def test_every_field_the_codec_refuses_is_documented_as_refused() -> None:
    from trio_supervise.openai import UNHONOURED

    rows = re.findall(r"^\| `(\w+)`(?: \(vLLM\))? \| 400 unless ([^|]+) \|", DOC.read_text(), re.M)
    documented = [field for field, _ in rows]
    assert documented == list(UNHONOURED)  # the same fields, in the order they are checked
    for field, accepted in rows:
        neutral = UNHONOURED[field][1].split(" (")[0]
        assert accepted.replace("`", "").strip() == neutral, field
