"""Every example runs, as a user would run it, and does what its docstring says."""

import os
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
def test_every_example_runs_as_a_script(path: Path, request: pytest.FixtureRequest) -> None:
    extra = {}
    if path.name == "ray_cluster.py":  # on the session's Ray, as on a cluster: RAY_ADDRESS
        extra["RAY_ADDRESS"] = request.getfixturevalue("ray_address")
    env = dict(os.environ, **extra)  # after the fixture: its Ray's auth mode is in os.environ
    result = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=False,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_supervised_tasks_example(capsys: pytest.CaptureFixture[str]) -> None:
    import trio
    import trio.testing

    namespace = runpy.run_path(str(EXAMPLES / "supervised_tasks.py"))
    events = trio.run(namespace["main"], clock=trio.testing.MockClock(autojump_threshold=0))
    poller = [e.kind.name for e in events if e.supervisor == "poller"]
    assert poller.count("RESTARTING") == 4
    assert poller[-2:] == ["FAILED", "STOPPED"]
    app = [(e.child, e.kind.name) for e in events if e.supervisor == "app"]
    assert app[-1] == ("heartbeat", "STOPPED")
    assert ("poller", "STOPPED") in app
    out = capsys.readouterr().out
    assert "heartbeat: running, incarnation 1" in out
    assert "poller: stopped, incarnation 5" in out


def test_embed_worker_example(capsys: pytest.CaptureFixture[str]) -> None:
    import trio
    import trio.testing

    namespace = runpy.run_path(str(EXAMPLES / "embed_worker.py"))
    result = trio.run(namespace["main"], clock=trio.testing.MockClock(autojump_threshold=0))
    assert result["generation"] == 2  # one poisoning, one rebuilt tier
    assert result["finished"] == 4  # every prompt was served, each at its first attempt
    assert result["continued"] == 1  # the one caught mid-stream went on where it stopped
    log = result["log"]
    assert not any("ContextPoisoned" in line for line in log)
    assert sum("served by generation 2" in line for line in log) >= 1
    assert "generation 2, requests 4: 4 finished, 0 failed" in capsys.readouterr().out


def test_remote_front_example() -> None:
    import trio

    namespace = runpy.run_path(str(EXAMPLES / "remote_front.py"))

    async def bounded() -> dict[str, object]:
        with trio.fail_after(30):
            result: dict[str, object] = await namespace["main"]()
            return result

    seen = trio.run(bounded)
    assert seen["text"]
    assert seen["statuses"] == [200, 200, 200, 200]  # B's failures moved to A, untouched
    assert seen["breakers"] == ["closed", "open"]
