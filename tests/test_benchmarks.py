"""The benchmarks run (tiny sizes): they must not rot. Their numbers are not asserted."""

import pytest

from benchmarks import bench_supervisor


def test_bench_supervisor_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    result = bench_supervisor.main(["--quick", "--repeat", "1"])
    assert set(result) >= {"quick", "sizes", "environment", "results"}
    for row in result["results"].values():
        assert row["ours"] > 0 and row["baseline"] > 0
        assert isinstance(row["met"], bool)
    assert "ratio" in capsys.readouterr().out


def test_bench_worker_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_worker

    result = bench_worker.main(["--quick", "--repeat", "1"])
    assert set(result) >= {"quick", "sizes", "environment", "results"}
    assert "ratio" in capsys.readouterr().out


def test_bench_http_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_http

    result = bench_http.main(["--quick", "--repeat", "1"])
    assert result["results"]["requests_per_s"]["ours"] > 0
    assert "time to first token" in capsys.readouterr().out
