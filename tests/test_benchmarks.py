"""The benchmarks run (tiny sizes): they must not rot. Their numbers are not asserted.

The ``--quick`` suite runs once for the module (``python -m benchmarks`` in-process, with
``--repeat 1``); each script's own ``main`` is checked with a stand-in ``measure``, so nothing
is measured twice. The ``transformers`` suite is in it where PyTorch and ``transformers`` are
installed (its ``--quick`` sizes leave out the kill rows: a child's start takes seconds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import __main__ as suite
from benchmarks import bench_http, bench_ray, bench_supervisor, bench_transformers, bench_worker
from benchmarks._common import Measurements, Row

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"label", "unit", "ours", "baseline", "ratio", "target", "met", "shortfall"}
HAS_TRANSFORMERS = "transformers" not in suite.SKIPPED
"""PyTorch and transformers are installed: the quick suite runs the transformers suite too."""
HAS_RAY = "ray" not in suite.SKIPPED
"""Ray is installed: the quick suite runs the Ray suite too."""


@dataclasses.dataclass(frozen=True)
class QuickSuite:
    """What one ``python -m benchmarks --quick --repeat 1`` run left behind."""

    record: dict[str, Any]
    out: str
    json_path: Path
    md_path: Path


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory: pytest.TempPathFactory) -> QuickSuite:
    tmp = tmp_path_factory.mktemp("bench")
    json_path, md_path = tmp / "out" / "results.json", tmp / "results.md"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        record = suite.main(
            ["--quick", "--repeat", "1", "--json", str(json_path), "--markdown", str(md_path)]
        )
    return QuickSuite(record, out.getvalue(), json_path, md_path)


def test_the_quick_suite_writes_json_with_every_suite_and_row(quick_suite: QuickSuite) -> None:
    written = json.loads(quick_suite.json_path.read_text())
    assert written == json.loads(json.dumps(quick_suite.record))
    assert set(written) == {"quick", "busy", "wall_s", "environment", "suites", "missed"}
    assert written["quick"] is True and written["busy"] == 0
    optional = {"transformers"} if HAS_TRANSFORMERS else set()
    optional |= {"ray"} if HAS_RAY else set()
    assert set(written["suites"]) == {"supervisor", "worker", "http", *optional}
    for entry in written["suites"].values():
        assert set(entry) == {"sizes", "wall_s", "results", "notes", "tables"}
        assert entry["sizes"]["repeat"] == 1
        for row in entry["results"].values():
            assert set(row) >= ROW_KEYS
            assert row["ours"] > 0
            assert (row["met"] is None) == (row["target"] is None) == (row["shortfall"] is None)
    supervisor = written["suites"]["supervisor"]["results"]
    assert set(supervisor) == {
        "restarts_per_s",
        "restarts_per_s_short_window",
        "children_ready_s",
        "children_bytes_per_child",
        "storm_ready_again_s",
    }
    storm = supervisor["storm_ready_again_s"]
    assert storm["baseline"] > 0 and storm["ratio"] > 0 and storm["target"] is None
    http = written["suites"]["http"]
    assert set(http["results"]) == {
        "stream_requests_per_s",
        "stream_ttft_p50_s",
        "stream_ttft_p50_one_client_s",
        "whole_requests_per_s",
        "whole_latency_p50_s",
        "whole_latency_p50_one_client_s",
        "uvicorn_stream_requests_per_s",
        "uvicorn_stream_ttft_p50_s",
        "uvicorn_whole_requests_per_s",
        "remote_front_requests_per_s",
        "remote_front_ttft_p50_s",
        "two_processes_requests_per_s",
    }
    for key in ("stream_requests_per_s", "stream_ttft_p50_s", "whole_requests_per_s"):
        assert http["results"][key]["target"] is not None
    assert http["results"]["remote_front_requests_per_s"]["target"] == 0.7
    assert http["results"]["remote_front_ttft_p50_s"]["target"] == 1.5
    # The grid: a row per (replicas, clients), and nothing bad under any of them.
    grid = http["tables"][0].splitlines()
    assert grid[2].startswith("| replicas | clients |")
    assert len(grid) == 4 + 2  # QUICK: 1 replica count x 2 client counts
    assert all(line.rstrip().endswith("| 0 |") for line in grid[4:])
    assert set(written["suites"]["worker"]["results"]["tokens_per_s"]) >= {
        "ours_chunks",
        "baseline_chunks",
    }
    if HAS_RAY:
        ray_rows = written["suites"]["ray"]["results"]
        assert set(ray_rows) == {
            "ray_tokens_per_s",
            "ray_streams_tokens_per_s",
            "ray_round_trip_s",
            "ray_round_trip_within_s",
            "ray_streams_round_trip_s",
            "ray_restart_cold_p50_s",
            "ray_restart_standby_p50_s",
            "ray_bridge_call_s",
        }
        targets = {key: row["target"] for key, row in ray_rows.items() if row["target"]}
        assert targets == {"ray_tokens_per_s": 0.8, "ray_round_trip_within_s": 0.001}
        for key, row in ray_rows.items():  # beside the process tier, but the 1 ms bound
            assert (row["baseline"] is None) == (key == "ray_round_trip_within_s")
    if HAS_TRANSFORMERS:
        transformers = written["suites"]["transformers"]
        results = transformers["results"]
        assert set(results) == {"tokens_per_s", "lag_p99_s", "lag_p99_vs_idle_s",
                                "short_behind_long_s"}  # QUICK  # fmt: skip
        tokens = results["tokens_per_s"]
        assert tokens["baseline"] > 0 and tokens["target"] == 0.95
        assert tokens["tokens_agree"] is True  # the worker's greedy tokens are the loop's
        assert 0 <= tokens["determinism_same"] <= tokens["determinism_of"] == 8
        lag = results["lag_p99_s"]
        assert lag["baseline"] is None and lag["target"] == 5e-3 and lag["samples"] > 0
        assert results["lag_p99_vs_idle_s"]["baseline"] > 0
        assert any(
            note.startswith("kill-to-next-token: left out") for note in transformers["notes"]
        )
    missed = [
        f"{name}.{key}"
        for name, entry in written["suites"].items()
        for key, row in entry["results"].items()
        if row["met"] is False
    ]
    assert written["missed"] == missed


def test_the_quick_suite_prints_and_writes_a_markdown_table(quick_suite: QuickSuite) -> None:
    text = quick_suite.md_path.read_text()
    assert quick_suite.out == text
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[first:]))
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["benchmark", "ours", "baseline", "ratio", "target", "met"]
    assert re.fullmatch(r"\|(-+:?\|)+", table[1])
    rows = sum(len(entry["results"]) for entry in quick_suite.record["suites"].values())
    assert len(table) == 2 + rows
    assert len({len(line) for line in table}) == 1  # padded into columns
    storm = next(line for line in table if line.startswith("| storm:"))
    assert re.search(r"\| no target +\| - +\|$", storm)
    for line in table[2:]:
        met = line.strip("|").split("|")[-1].strip()
        assert re.fullmatch(r"yes|-|MISSED by (<0\.1|\d+(\.\d)?)%", met)


def test_busy_processes_run_for_the_body_and_are_reaped() -> None:
    with suite.busy_processes(2) as hogs:
        assert len(hogs) == 2 and all(hog.poll() is None for hog in hogs)
    assert all(hog.returncode is not None for hog in hogs)
    for hog in hogs:  # reaped: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(hog.pid, 0)


def test_the_idle_and_busy_table_has_both_columns_per_row() -> None:
    def run(ours: float) -> suite.SuiteRun:
        rows = Measurements([Row("r", "round trip", "s", ours, 1e-5, 2.0, False)])
        return suite.SuiteRun(suite.SUITES[1], bench_worker.QUICK, rows, 1.0)

    table = suite.idle_and_busy_table([run(1.5e-5)], [run(2.5e-5)], 2).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    assert cells[0] == [
        "benchmark", "target", "idle: ours", "ratio", "met",
        "2 CPUs busy: ours", "ratio", "met",
    ]  # fmt: skip
    assert cells[2] == ["round trip", "<= 2.0", "15.0 us", "1.50", "yes", "25.0 us", "2.50",
                        "MISSED by 25%"]  # fmt: skip


def test_a_missed_target_says_by_how_much() -> None:
    throughput = Row("t", "tokens/s", "tok/s", 192.0, 100.0, 2.0, higher_is_better=True)
    latency = Row("l", "restart", "s", 1.5e-3, None, 1e-3, higher_is_better=False)
    met = Row("m", "round trip", "s", 3.0, 2.0, 2.0, higher_is_better=False)
    info = Row("i", "storm", "s", 3.0, 1.0, None, higher_is_better=False)
    assert throughput.verdict == "MISSED by 4.0%"
    assert latency.verdict == "MISSED by 50%"
    assert (met.verdict, met.shortfall) == ("yes", 0.0)
    assert (info.verdict, info.shortfall) == ("-", None)


def test_a_suite_left_out_for_want_of_its_extra_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = suite.SUITES[1]
    monkeypatch.setattr(suite, "SUITES", (worker,))
    monkeypatch.setattr(suite, "SKIPPED", {"transformers": "PyTorch is not installed"})
    rows = Measurements((Row("r", "round trip", "s", 1.5e-5, 1e-5, 2.0, False),))
    run = suite.SuiteRun(worker, bench_worker.QUICK, rows, 1.0)
    text = suite.markdown_report([run], suite.json_record([run], quick=True, wall_s=1.0))
    assert "\n- transformers: skipped: PyTorch is not installed\n" in text


MODULES = [bench_supervisor, bench_worker, bench_http, bench_ray, bench_transformers]


@pytest.mark.parametrize("module", MODULES)
def test_each_script_reports_on_its_own(
    module: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A script's ``main`` runs its ``measure`` (a stand-in here: the suite measured already)
    at the sizes asked for, prints the table and notes, and returns the results."""
    row = Row("k", "a benchmark", "s", 3.0, 2.0, 1.2, higher_is_better=False)
    measured = Measurements(rows=(row,), extras={"k": {"extra": 1.0}}, notes=("a note",))
    asked: list[object] = []

    def measure(sizes: object) -> Measurements:
        asked.append(sizes)
        return measured

    monkeypatch.setattr(module, "measure", measure)
    result = module.main(["--quick", "--repeat", "1"])
    assert asked == [dataclasses.replace(module.QUICK, repeat=1)]
    assert set(result) == {"quick", "sizes", "environment", "results"}
    assert result["results"] == {"k": {**row.as_dict(), "extra": 1.0}}
    out = capsys.readouterr().out
    assert re.search(r"^a benchmark .* 1\.50 +<= 1\.2 +MISSED by 25%$", out, re.MULTILINE)
    assert out.endswith("a note\n")


@pytest.mark.parametrize(
    "script", [f"{module.__name__.rsplit('.', 1)[1]}.py" for module in MODULES]
)
def test_each_script_runs_as_a_file(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout
