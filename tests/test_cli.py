import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_supervise as ts
from trio_supervise import _cli
from trio_supervise._cli import bench_command, demo_policy, find_checkout, main


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


# --- bench ------------------------------------------------------------------------------------


def installed_layout(tmp_path: Path, *, stray_benchmarks: bool = False) -> Path:
    """A site-packages with the package in it (and, if asked, another project's ``benchmarks``
    package without a ``__main__``); returns the package's directory."""
    package = tmp_path / "site-packages" / "trio_supervise"
    package.mkdir(parents=True)
    if stray_benchmarks:
        (package.parent / "benchmarks").mkdir()
        (package.parent / "benchmarks" / "__init__.py").write_text("")
    return package


def checkout_layout(tmp_path: Path, main_source: str) -> Path:
    """A checkout: the package, and ``benchmarks/__main__.py`` next to it; returns the package's
    directory."""
    root = tmp_path / "checkout"
    (root / "trio_supervise").mkdir(parents=True)
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "__main__.py").write_text(main_source)
    return root / "trio_supervise"


@pytest.mark.parametrize("stray_benchmarks", [False, True])
def test_bench_from_an_installed_wheel_exits_2_and_says_where_the_benchmarks_are(
    tmp_path: Path, stray_benchmarks: bool
) -> None:
    package = installed_layout(tmp_path, stray_benchmarks=stray_benchmarks)
    assert find_checkout(package) is None
    err = io.StringIO()
    assert bench_command(["--quick"], package_dir=package, err=err) == 2
    assert re.fullmatch(
        r"trio-supervise bench: the benchmarks live in the source checkout, not in the "
        rf"installed package \({re.escape(str(package))}\)\.\n"
        r"Get them with the source: clone the trio-supervise repository, run "
        r"`pip install -e '\.\[dev\]'` in it, then `trio-supervise bench` \(or "
        r"`python -m benchmarks`\) from there\.\n",
        err.getvalue(),
    )


def test_bench_from_a_checkout_runs_its_benchmarks_with_the_arguments(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A stand-in suite: it shows which benchmarks package ran and with what, and exits 3.
    package = checkout_layout(tmp_path, "import sys\nprint(__file__, sys.argv[1:])\nsys.exit(3)\n")
    assert find_checkout(package) == package.parent
    status = bench_command(["--quick", "--json", "out.json"], package_dir=package)
    out = capfd.readouterr().out
    assert status == 3
    main_file = package.parent / "benchmarks" / "__main__.py"
    assert out == f"{main_file} ['--quick', '--json', 'out.json']\n"


def test_bench_passes_every_later_argument_through(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(_cli, "bench_command", lambda args: calls.append(list(args)) or 0)
    assert main(["bench", "--help", "--only", "http"]) == 0
    assert calls == [["--help", "--only", "http"]]


def test_help_lists_bench(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert re.search(r"^ +bench +run the CPU benchmarks", capsys.readouterr().out, re.MULTILINE)


def test_config_alone_says_what_it_takes_and_serve_help_says_what_it_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config"]) == 2
    assert "check" in capsys.readouterr().err  # its subcommands, not silence
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "OpenAI-compatible HTTP API" in out and "--api-key-file" in out and "--model" in out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "where each replica's runner lives" in capsys.readouterr().out


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``serve`` configures the root logger: put it back after the test."""
    root, access = logging.getLogger(), logging.getLogger("trio_supervise.access")
    handlers, level, access_level = list(root.handlers), root.level, access.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    access.setLevel(access_level)


def test_serve_log_flags_reach_the_logging_set_up(
    tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Set up before the config is read (a bad config is reported, exit 2, the flags hold)."""
    from trio_supervise.serve._logs import JsonFormatter

    def ours() -> logging.Handler:
        (handler,) = [h for h in logging.getLogger().handlers if h.get_name() == "trio_supervise"]
        return handler

    missing = str(tmp_path / "missing.toml")
    assert main(["serve", missing]) == 2
    assert type(ours().formatter) is logging.Formatter
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("trio_supervise.access").isEnabledFor(logging.INFO)
    flags = ["--log-json", "--log-level", "warning", "--no-access-log"]
    assert main(["serve", missing, *flags]) == 2
    assert isinstance(ours().formatter, JsonFormatter)  # and the first handler replaced
    assert logging.getLogger().level == logging.WARNING
    assert not logging.getLogger("trio_supervise.access").isEnabledFor(logging.CRITICAL)
    assert "missing.toml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", missing, "--log-level", "loud"])
    assert "invalid choice: 'loud'" in capsys.readouterr().err
