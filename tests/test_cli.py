import io

import pytest

import trio_supervise as ts
from trio_supervise._cli import demo_policy, main


def test_demo_prints_the_default_policy_giving_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--policy"]) == 0
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


@pytest.mark.slow
def test_the_served_demo_keeps_answering_through_its_faults() -> None:
    import trio

    from trio_supervise._demo import run_demo

    result = trio.run(lambda: run_demo(seconds=5.0, live=False))
    assert result["finished"] > 10
    assert result["restarts"] >= 1  # a poisoning happened, and requests kept finishing
