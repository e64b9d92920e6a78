"""Servers and load generators of the HTTP benchmarks as child processes of the benchmark.

:func:`running_server` starts ``python -m benchmarks.http_servers KIND ...`` and yields its port
once it says it is listening; :func:`load` runs ``python -m benchmarks.loadgen`` against it and
returns the JSON it prints. Every process is stopped (SIGTERM, then SIGKILL) and reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


def _environment() -> dict[str, str]:
    """This checkout first on the path, so the children import what the benchmark imports."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


@contextlib.contextmanager
def running_server(kind: str, *args: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A server process of ``kind`` (see :mod:`benchmarks.http_servers`): ``(port, process)``.

    Its stderr goes to a temporary file (a pipe nobody reads could fill and stall it), whose
    end is raised with the error when it fails to start."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.http_servers", kind, *args],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=ROOT,
            env=_environment(),
        )
        try:
            assert process.stdout is not None
            deadline = time.monotonic() + START_TIMEOUT_S
            line = ""
            while not line.startswith("listening "):
                line = process.stdout.readline()
                if (not line and process.poll() is not None) or time.monotonic() > deadline:
                    stop(process)
                    errors.seek(0)
                    raise RuntimeError(f"the {kind} server did not start: {errors.read()[-2000:]}")
            yield int(line.split()[1]), process
        finally:
            stop(process)
            if process.stdout is not None:
                process.stdout.close()


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM (a drain, for ours), then SIGKILL after 10 s; reaped either way."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load(
    port: int,
    *,
    concurrency: int,
    duration: float,
    stream: bool,
    max_tokens: int,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """One run of the load generator, in its own process: what it measured (its JSON)."""
    command = [
        sys.executable, "-m", "benchmarks.loadgen",
        f"http://127.0.0.1:{port}/v1/completions",
        "--concurrency", str(concurrency), "--duration", str(duration),
        "--max-tokens", str(max_tokens), *(["--stream"] if stream else []), *extra,
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=_environment(), timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(f"the load generator failed: {result.stderr[-2000:]}")
    measured: dict[str, Any] = json.loads(result.stdout)
    return measured
