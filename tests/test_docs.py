"""The documentation cannot rot: every Python sample in README.md and docs/ runs, the tables that
restate the code are checked against it, and the API reference covers every public name.

The site itself is built by ``.ci/run`` (``python -m sphinx -W --keep-going -n ...``); these
tests need no build.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import trio_supervise as ts
from trio_supervise import ConfigError
from trio_supervise.worker._worker import WorkerState

ROOT = Path(__file__).parent.parent
DOCS_DIR = ROOT / "docs"
BUILT = ("_build", "_generated")  # what the build writes under docs/: not sources
DOCS = [
    ROOT / "README.md",
    *sorted(
        path
        for path in DOCS_DIR.glob("**/*.md")
        if not set(path.relative_to(DOCS_DIR).parts) & set(BUILT)
    ),
]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_samples_run(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = FENCE.findall(path.read_text())
    namespace: dict[str, object] = {"__name__": f"docs_sample_{path.stem}"}
    for index, sample in enumerate(samples):
        code = compile(sample, f"{path.name}[sample {index}]", "exec")
        exec(code, namespace)


TOML_FENCE = re.compile(r"^```toml\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_samples_are_valid(path: Path) -> None:
    """Every TOML sample is a valid serve config: its tables and values, and each inline
    runner's arguments against the runner's signature (``config check`` does the same)."""
    import tomllib

    from trio_supervise.serve import ServeConfig

    for sample in TOML_FENCE.findall(path.read_text()):
        data = tomllib.loads(sample)
        if _needs_missing_ray(data):
            # without Ray, a Ray sample is refused, by a problem that names the extra
            with pytest.raises(ConfigError, match=r"needs Ray"):
                ServeConfig.from_dict(data).check_runners()
            continue
        config = ServeConfig.from_dict(data)
        config.check_runners()


def _needs_missing_ray(data: dict[str, Any]) -> bool:
    workers = data.get("workers", [])
    uses_ray = any(isinstance(w, dict) and w.get("isolation") == "ray" for w in workers)
    return uses_ray and importlib.util.find_spec("ray") is None


# --- the request outcomes table in docs/concepts.md ----------------------------------------------

OUTCOME_ROW = re.compile(
    r"^\| `(\w+)` \| `(\w+)` \| (yes|no) \| (\d{3}) \| (yes|no) \| [^|]+ \|\s*$", re.MULTILINE
)


def outcome_rows() -> dict[str, tuple[str, bool, int, bool]]:
    """``{error: (base, retryable, status, retry_after)}`` from the outcomes table."""
    text = (DOCS_DIR / "concepts.md").read_text()
    section = text.split("\n## Request outcomes\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, bool, int, bool]] = {}
    for name, base, retryable, status, retry_after in OUTCOME_ROW.findall(section):
        assert name not in rows, f"{name} is in the outcomes table twice"
        rows[name] = (base, retryable == "yes", int(status), retry_after == "yes")
    return rows


def error_class(name: str) -> type[ts.InferenceError]:
    from trio_supervise.serve import pool

    cls = getattr(ts, name, None) or getattr(pool, name)
    assert isinstance(cls, type) and issubclass(cls, ts.InferenceError), name
    return cls


def test_every_request_error_is_in_the_outcomes_table() -> None:
    public = {
        name
        for name in ts.__all__
        if isinstance(getattr(ts, name), type)
        and issubclass(getattr(ts, name), ts.InferenceError)
        and getattr(ts, name) is not ts.InferenceError
    }
    assert public <= set(outcome_rows()), f"missing: {sorted(public - set(outcome_rows()))}"


@pytest.mark.parametrize("name", sorted(outcome_rows()))
def test_outcomes_table_matches_the_code(name: str) -> None:
    from trio_supervise.openai import error_status

    base, retryable, status, retry_after = outcome_rows()[name]
    cls = error_class(name)
    assert cls.__bases__[0].__name__ == base
    assert cls.retryable_by_default is retryable
    assert error_status(cls("documented")) == (status, 1.0 if retry_after else None)


# --- the API reference under docs/api/ -----------------------------------------------------------

AUTO = re.compile(r"^\.\. auto(?:class|exception|function|data):: ([\w.]+)$", re.MULTILINE)
AUTOMODULE = re.compile(r"^\.\. automodule:: ([\w.]+)\n   :members:$", re.MULTILINE)


def api_text() -> str:
    return "\n".join(path.read_text() for path in sorted((DOCS_DIR / "api").glob("*.md")))


def test_the_api_reference_documents_every_public_name_once() -> None:
    documented = AUTO.findall(api_text())
    expected = [f"trio_supervise.{name}" for name in ts.__all__]
    assert sorted(documented) == sorted(expected)


def load_conf() -> ModuleType:
    pytest.importorskip("sphinx")  # the docs tooling comes with the dev extra
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS_DIR / "conf.py")
    assert spec is not None and spec.loader is not None
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_every_public_module_has_a_reference_page() -> None:
    conf = load_conf()
    documented = set(AUTOMODULE.findall(api_text())) | {"trio_supervise"}
    assert set(conf.PUBLIC_MODULES) == documented
    for module_name in conf.PUBLIC_MODULES:
        assert importlib.import_module(module_name).__all__, module_name


# --- the worker state diagram, generated by docs/conf.py -----------------------------------------

S = WorkerState


def test_the_diagram_draws_every_transition_of_the_table() -> None:
    conf = load_conf()
    table = conf.worker_transitions()
    diagram: str = conf.worker_state_diagram(table)
    lines = diagram.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert f"    [*] --> {conf.INITIAL_STATE.name}" in lines
    drawn = [re.match(r"    (\w+) --> (\w+): (.+)$", line) for line in lines]
    edges = [match.groups() for match in drawn if match]
    assert [(a, b) for a, b, _ in edges] == [(a.name, b.name) for a, b, _ in table]
    for _, _, label in edges:  # mermaid refuses these in a transition's label
        assert not re.search(r"[:;#]", re.sub(r"#\d+;", "", label)), label
    ends = {line.split()[0] for line in lines if line.endswith("--> [*]")}
    assert ends == {state.name for state in conf.terminal_states(table)}
    assert {state.name for state in WorkerState} <= set(re.findall(r"\b[A-Z]{4,}\b", diagram))
    rows = conf.worker_transitions_table(table).splitlines()
    assert len(rows) == 2 + len(table)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (((S.STARTING, S.READY, 3),), "must be"),
        (((S.STARTING, S.READY, "a"), (S.STARTING, S.READY, "b")), "appears twice"),
        (((S.STARTING, S.READY, "a"),), "states without a transition: REBUILDING, STOPPED"),
    ],
)
def test_a_malformed_table_fails_the_build_clearly(table: Any, message: str) -> None:
    conf = load_conf()
    with pytest.raises(ValueError, match=re.escape(message)):
        conf.worker_state_diagram(table)


def test_labels_are_escaped_for_mermaid_and_markdown() -> None:
    conf = load_conf()
    table = (
        *conf.worker_transitions(),
        (S.STOPPED, S.FAILED, "a: b; c #1 | d"),
    )
    assert conf.worker_state_diagram(table).splitlines()[-2] == (
        "    STOPPED --> FAILED: a#58; b#59; c #35;1 | d"
    )
    assert conf.worker_transitions_table(table).splitlines()[-1] == (
        "| `STOPPED` | `FAILED` | a: b; c #1 \\| d |"
    )
