"""Every example runs, as a user would run it, and does what its docstring says."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import trio_supervise as ts

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_custom_policy_example() -> None:
    namespace = runpy.run_path(str(EXAMPLES / "custom_policy.py"))
    decisions = namespace["main"]()
    directives = [d.directive for d in decisions]
    assert directives[0] is ts.Directive.RESUME
    assert directives[-1] is ts.Directive.ESCALATE and decisions[-1].gave_up
    assert directives.count(ts.Directive.RESTART) == 4


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_example_runs_as_a_script(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
