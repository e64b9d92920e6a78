import io

import pytest

import trio_supervise as ts
from trio_supervise._cli import demo_policy, main


def test_demo_prints_the_default_policy_giving_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert repr(ts.DEVICE_POLICY) in out
    assert "4 restarts within 60s exceed max_restarts=3" in out


def test_demo_directives_follow_the_policy() -> None:
    directives = demo_policy(out=io.StringIO())
    d = ts.Directive
    assert directives == [
        d.RESUME,
        d.RESTART,
        d.RESTART,
        d.RESTART,
        d.RESUME,
        d.RESTART,
        d.RESTART,
        d.ESCALATE,
    ]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"trio-supervise {ts.__version__}"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
