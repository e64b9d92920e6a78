"""The module graph of ``trio_supervise``: no import cycle, and dependencies that point down.

The graph is read from the source (every ``import`` statement, also those inside functions and
under ``TYPE_CHECKING``), not from what happens to be imported at run time, so a lazy import
cannot hide a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import trio_supervise

PACKAGE = Path(trio_supervise.__file__).parent

# The parent tier of a worker: what callers hold, and what decides about requests.
PARENT_SIDE = {
    "trio_supervise.worker._worker",
    "trio_supervise.worker._open_worker",
    "trio_supervise.worker._admission",
    "trio_supervise.worker._settlement",
    "trio_supervise.worker._options",
    "trio_supervise.worker._state",
}
# The child tier and everything it is built from: none of it may know the parent tier.
CHILD_SIDE = [
    "trio_supervise.tier._tier",
    "trio_supervise.tier._port",
    "trio_supervise.tier._requests",
    "trio_supervise.tier._runner",
    "trio_supervise._types",
    "trio_supervise.isolation._host",
    "trio_supervise.isolation.process",
    "trio_supervise.isolation._child_process",
    "trio_supervise.isolation.ray",
    "trio_supervise.isolation._ray_actor",
    "trio_supervise.isolation._frames",
    "trio_supervise.devices",
    "trio_supervise.runners.mock",
    "trio_supervise.runners.charlm",
    "trio_supervise.runners.remote",
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_by(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # `from . import x` names a module when x is one
                full = f"{base}.{alias.name}"
                targets.add(full if full in known else base)
    return {target for target in targets if target in known and target != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_by(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in edges[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_is_read_from_every_import() -> None:
    edges = graph()
    # A relative import, a lazy one inside a function, and one under TYPE_CHECKING all count.
    assert "trio_supervise.tier._tier" in edges["trio_supervise.worker._worker"]
    assert "trio_supervise.isolation.process" in edges["trio_supervise.worker._worker"]
    assert "trio_supervise.devices._context" in edges["trio_supervise.devices._cpu"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_the_modules() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize("name", CHILD_SIDE)
def test_the_child_tier_never_reaches_the_parent_tier(name: str) -> None:
    edges = graph()
    assert name in edges, f"{name} is not a module any more: update CHILD_SIDE"
    assert reachable(edges, name) & PARENT_SIDE == set()


def test_the_parent_side_exists() -> None:
    assert graph().keys() >= PARENT_SIDE


def test_an_inline_worker_never_imports_process_isolation() -> None:
    code = (
        "import sys, trio_supervise;"
        "assert 'trio_supervise.isolation.process' not in sys.modules, sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
