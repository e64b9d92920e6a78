"""The module graph of ``trio_supervise``: the folders are layers, and imports point down.

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

# The layers, lowest first: a module may import its own layer and those below it, never one above.
# A folder is one layer; the two foundation modules share one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("supervision", ("trio_supervise.supervision",)),
    ("foundation", ("trio_supervise._errors", "trio_supervise._types")),
    ("devices", ("trio_supervise.devices",)),
    ("openai", ("trio_supervise.openai",)),
    ("tier", ("trio_supervise.tier",)),
    ("runners", ("trio_supervise.runners",)),
    ("isolation", ("trio_supervise.isolation",)),
    ("worker", ("trio_supervise.worker",)),
    ("testing", ("trio_supervise.testing",)),
    ("serve", ("trio_supervise.serve",)),
    (
        "front",
        ("trio_supervise", "trio_supervise._cli", "trio_supervise._demo", "trio_supervise._top"),
    ),
)


def layer_of(name: str) -> int:
    """The rank of the layer that module ``name`` belongs to (its folder, or its own name)."""
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or (p != "trio_supervise" and name.startswith(p + ".")) for p in prefixes):
            return rank
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in tests/test_layers.py")


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


def test_every_module_belongs_to_a_layer() -> None:
    for name in graph():
        layer_of(name)


def test_no_import_runs_up_the_layers() -> None:
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_supervision_knows_nothing_of_inference() -> None:
    """The supervision folder is generic: it imports only itself (no errors of inference, no
    devices, no requests)."""
    edges = graph()
    supervision = {name for name in edges if name.startswith("trio_supervise.supervision")}
    assert supervision, "no supervision folder"
    for name in supervision:
        assert edges[name] <= supervision, f"{name} imports {sorted(edges[name] - supervision)}"


@pytest.mark.parametrize("layer", ["tier", "runners", "isolation", "devices", "openai"])
def test_the_child_tier_never_reaches_the_parent_tier(layer: str) -> None:
    """What runs a batch (and what runs in a child process or a Ray actor) never reaches the
    worker, the harness or the server, not even through another module."""
    edges = graph()
    (prefixes,) = [p for name, p in LAYERS if name == layer]
    members = [name for name in edges if name.startswith(prefixes[0])]
    assert members, f"no module in {layer}"
    parent = ("trio_supervise.worker", "trio_supervise.serve", "trio_supervise.testing")
    for name in members:
        reached = {m for m in reachable(edges, name) if m.startswith(parent)}
        assert reached == set(), f"{name} reaches {sorted(reached)}"


def test_an_inline_worker_never_imports_process_isolation() -> None:
    code = (
        "import sys, trio_supervise;"
        "assert 'trio_supervise.isolation.process' not in sys.modules, sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
