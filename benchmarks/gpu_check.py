"""The GPU check: run the ``gpu`` tests on a CUDA machine and print a short summary table.

``python benchmarks/gpu_check.py`` runs ``python -m pytest -q -m gpu tests/devices/test_gpu.py``
(and only that) in a child process, then prints: the GPU's name, the CuPy and CUDA versions, each
gpu test's result (read from pytest's ``--junitxml`` report), the event-loop lag measured while the
GPU was busy (DESIGN.md target: under 5 ms), how long a process-isolated worker took from a real
sticky CUDA error in its child to the next chunk served by a fresh child ("process recovery (cold)":
a new Python, CuPy import, CUDA context and kernel compile included), and a throughput comparison in
this process: a matmul loop through ``CupyDevice.run_sync`` against the same loop in plain CuPy
(DESIGN.md target: the framework within 3%, a ratio of at least 0.97), and how long a
``TransformersRunner`` child took from a real device-side assert (an out-of-range index in
PyTorch) to a fresh child's answer (where torch and transformers are on the machine; its tiny
model is built from a config, no download). The ratio is reported, not enforced.

Exit status: 0 when every gpu test passed; 1 when one failed or errored, or none ran; 2 when there
is no CUDA device (the message says "no CUDA device"); 3 when a Python package is missing.
The module imports only the standard library, so ``--help`` and ``--print-wheels`` work anywhere.

Preparing the GPU machine
-------------------------
The device machine (see /work/.library/device/README.md and KINDS.md) runs Python 3.12 with CuPy
for CUDA 13 and numpy, but has no trio, trio-util, outcome, sniffio, async_generator, msgspec
or pytest-trio, and no network. Carry them as wheels: in the repo root here (``.whl/`` is
git-ignored), run the command that ``python benchmarks/gpu_check.py --print-wheels`` prints::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        --platform manylinux1_x86_64 -d .whl trio==0.35.0 outcome==1.3.0.post0 sniffio==1.3.1 \\
        attrs==26.1.0 sortedcontainers==2.4.0 idna==3.13 trio-util==0.8.0 async-generator==1.10 \\
        pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 packaging==26.2 pygments==2.20.0 \\
        pytest-trio==0.8.0 hypothesis==6.155.2 msgspec==0.22.0

That is the whole closure of ``import trio_supervise`` (less numpy and CuPy, which the machine
has), of pytest and pytest-trio, and of hypothesis (``tests/conftest.py`` imports it), for
CPython 3.12 on Linux: every ``Requires-Dist`` of each wheel, extras and markers that do not
apply aside, is in the list (``unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist``).
All are pure-Python wheels but msgspec's, which has a compiled extension: pip picks the CPython
3.12 manylinux x86_64 one (``msgspec-0.22.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.
manylinux_2_28_x86_64.whl``; its only ``Requires-Dist`` are extras), whatever Python runs pip
here. About 3.2 MB together. They are the versions tested here; pytest and its helpers travel
too, so that the run does not depend on the machine's own versions.

Then, with the device tool, ``carry: [".whl"]`` and this command (from the repo root)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \\
        PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json

The child pytest runs with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`` and ``-p pytest_trio.plugin``:
the machine's own pytest plugins (pytest-cov, pytest-benchmark, pytest-xdist, ...) were built
for its pytest, not the carried one, and none of them is needed here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TEST_FILE = "tests/devices/test_gpu.py"

WHEELS = (
    "trio==0.35.0",
    "outcome==1.3.0.post0",
    "sniffio==1.3.1",
    "attrs==26.1.0",
    "sortedcontainers==2.4.0",
    "idna==3.13",
    "trio-util==0.8.0",
    "async-generator==1.10",
    "pytest==9.0.3",
    "pluggy==1.6.0",
    "iniconfig==2.3.0",
    "packaging==26.2",
    "pygments==2.20.0",
    "pytest-trio==0.8.0",
    "hypothesis==6.155.2",
    "msgspec==0.22.0",  # a compiled extension: the cp312 manylinux wheel (see PLATFORMS)
)
"""What the device machine lacks (or may hold in another version) for the gpu tests, pinned."""

PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)

REQUIRED_MODULES = (
    "trio",
    "trio_util",
    "outcome",
    "sniffio",
    "attrs",
    "msgspec",
    "numpy",
    "pytest",
    "pytest_trio",
    "hypothesis",
    "trio_supervise",
)

LAG_TARGET_MS = 5.0
"""DESIGN.md: event-loop lag under 5 ms while the GPU is busy."""
THROUGHPUT_TARGET = 0.97
"""DESIGN.md: framework throughput within 3% of a direct CuPy loop."""
STICKY_EXIT_CODE = 70
"""``trio_supervise.isolation._host.STICKY_EXIT_CODE`` (not imported: this module imports only
the standard library): a child that exits with it reported a sticky error and ``os._exit``ed on
its own."""


def wheel_commands() -> list[str]:
    """The shell commands that prepare the wheels here, check them, and use them there."""
    platforms = " ".join(f"--platform {p}" for p in PLATFORMS)
    download = (
        "python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 "
        f"--implementation cp {platforms} -d .whl {' '.join(WHEELS)}"
    )
    check = (
        'for f in .whl/*.whl; do echo "== $f"; '
        "unzip -p \"$f\" '*/METADATA' | grep '^Requires-Dist' | grep -v extra; done"
    )
    device = (
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; "
        "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json"
    )
    return [
        "# 1. here, in the repo root (.whl/ is git-ignored):",
        download,
        "# 2. here: each wheel's requirements (all must be in the list above):",
        check,
        '# 3. on the device machine, with carry [".whl"]:',
        device,
    ]


def cuda_problem() -> str | None:
    """Why there is no usable CUDA device, or None when CuPy sees one."""
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy is not installed ({exc})"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if count < 1 or not cupy.cuda.is_available():
        return "cupy.cuda.is_available() is False"
    return None


def missing_modules() -> list[str]:
    """The modules the tests and the benchmark need that cannot be found."""
    missing = []
    for name in REQUIRED_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def gpu_info() -> dict[str, Any]:
    """The GPU's name and the CuPy, CUDA runtime and driver versions."""
    import cupy

    def version(number: int) -> str:
        return f"{number // 1000}.{number % 1000 // 10}"

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return {
        "gpu": str(name),
        "devices": int(cupy.cuda.runtime.getDeviceCount()),
        "cupy": str(cupy.__version__),
        "cuda_runtime": version(int(cupy.cuda.runtime.runtimeGetVersion())),
        "cuda_driver": version(int(cupy.cuda.runtime.driverGetVersion())),
        "python": sys.version.split()[0],
    }


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """Each test case of a junit XML report: name, outcome, seconds, message and properties."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        message = ""
        for tag in ("skipped", "failure", "error"):  # the worst one wins
            element = case.find(tag)
            if element is not None:
                outcome = {"skipped": "skipped", "failure": "failed", "error": "error"}[tag]
                message = element.get("message") or (element.text or "")
        properties = {prop.get("name", ""): prop.get("value", "") for prop in case.iter("property")}
        cases.append(
            {
                "name": case.get("name", "?"),
                "outcome": outcome,
                "seconds": float(case.get("time") or 0.0),
                "message": " ".join(message.split())[:200],
                "properties": properties,
            }
        )
    return cases


def run_gpu_tests(extra: Sequence[str]) -> tuple[int, list[dict[str, Any]], float]:
    """Run the gpu tests in a child pytest; its return code, the test cases, and seconds."""
    env = dict(os.environ)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        report = Path(tmp) / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "gpu",
            TEST_FILE,
            "-p",
            "pytest_trio.plugin",
            f"--junitxml={report}",
            "-o",
            "junit_family=xunit1",
            *extra,
        ]
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        rc = subprocess.run(command, cwd=REPO, env=env, check=False).returncode
        seconds = time.perf_counter() - start
        cases = parse_junit(report) if report.exists() else []
    return rc, cases, seconds


def bench_throughput(size: int, matmuls: int, steps: int, repeat: int) -> dict[str, Any]:
    """Steps of ``matmuls`` matmuls then a stream synchronize, through ``CupyDevice.run_sync``
    (one thread hop per step) and directly in this thread; best of ``repeat``, interleaved."""
    import cupy
    import trio

    from trio_supervise.devices import CupyDevice

    device = CupyDevice(0)
    gpu = cupy.cuda.Device(0)
    try:
        with gpu:
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                a = cupy.random.random((size, size), dtype=cupy.float32)
                b = cupy.random.random((size, size), dtype=cupy.float32)
                c = cupy.empty((size, size), dtype=cupy.float32)
                stream.synchronize()

        def direct_step() -> None:
            for _ in range(matmuls):
                cupy.matmul(a, b, out=c)
            stream.synchronize()

        def direct_loop() -> float:
            with gpu, stream:
                start = time.perf_counter()
                for _ in range(steps):
                    direct_step()
                return time.perf_counter() - start

        held: dict[str, Any] = {}

        def allocate() -> None:
            xp = device.xp
            held["a"] = xp.random.random((size, size), dtype=xp.float32)
            held["b"] = xp.random.random((size, size), dtype=xp.float32)
            held["c"] = xp.empty((size, size), dtype=xp.float32)
            device.stream.synchronize()

        def framework_step() -> None:
            for _ in range(matmuls):
                cupy.matmul(held["a"], held["b"], out=held["c"])
            device.stream.synchronize()

        async def framework_main() -> float:
            start = time.perf_counter()
            for _ in range(steps):
                await device.run_sync(framework_step)
            return time.perf_counter() - start

        async def setup() -> None:
            await device.run_sync(allocate)
            await device.run_sync(framework_step)  # warm-up in the worker thread

        trio.run(setup)
        with gpu, stream:
            direct_step()  # warm-up in this thread
        direct_times: list[float] = []
        framework_times: list[float] = []
        for _ in range(repeat):
            direct_times.append(direct_loop())
            framework_times.append(trio.run(framework_main))
        held.clear()
    finally:
        device.close()

    direct = min(direct_times)
    framework = min(framework_times)
    flops = 2.0 * size**3 * matmuls * steps
    return {
        "size": size,
        "matmuls_per_step": matmuls,
        "steps": steps,
        "repeat": repeat,
        "direct_s": direct,
        "framework_s": framework,
        "ratio": direct / framework,
        "overhead_us_per_step": (framework - direct) / steps * 1e6,
        "direct_tflops": flops / direct / 1e12,
        "met": direct / framework >= THROUGHPUT_TARGET,
    }


def print_table(summary: dict[str, Any]) -> None:
    """The summary for people."""
    info = summary["environment"]
    rows: list[tuple[str, str]] = [
        ("GPU", f"{info['gpu']} ({info['devices']} device(s))"),
        ("CuPy", info["cupy"]),
        ("CUDA", f"runtime {info['cuda_runtime']}, driver {info['cuda_driver']}"),
        ("Python", info["python"]),
    ]
    tests = summary["tests"]
    rows.append(("pytest", f"rc {tests['returncode']} in {tests['seconds']:.1f} s"))
    for case in tests["cases"]:
        line = f"{case['outcome'].upper():7} {case['seconds']:6.2f} s"
        if case["message"] and case["outcome"] != "passed":
            line += f"  {case['message'][:120]}"
        rows.append((f"  {case['name']}", line))
    props: dict[str, str] = {}
    for case in tests["cases"]:
        props.update(case["properties"])
    if "max_lag_ms" in props:
        lag = float(props["max_lag_ms"])
        verdict = "met" if lag < LAG_TARGET_MS else "NOT met"
        rows.append(
            (
                "event-loop lag",
                f"max {lag:.2f} ms over {props.get('busy_s', '?')} s of GPU work, "
                f"{props.get('ticks_while_busy', '?')} ticks "
                f"(target < {LAG_TARGET_MS:g} ms: {verdict})",
            )
        )
    else:
        rows.append(("event-loop lag", "not measured (the lag test did not record it)"))
    if "sticky_status" in props:
        rows.append(
            (
                "sticky error",
                f"{props.get('sticky_error')} status {props['sticky_status']} -> "
                f"{props.get('sticky_classified')}; probe after it: {props.get('probe_after')}",
            )
        )
    if "recovery_ms" in props:
        exit_code = props.get("child_exit", "?")
        if exit_code == str(STICKY_EXIT_CODE):
            how = "os._exit after reporting it"
        elif exit_code.lstrip("-").isdigit() and int(exit_code) < 0:
            how = f"killed by signal {-int(exit_code)}"
        else:
            how = f"not os._exit({STICKY_EXIT_CODE}): stopped by the parent?"
        on = f" on {props['recovery_gpu']}" if props.get("recovery_gpu") not in (None, "") else ""
        rows.append(
            (
                "process recovery (cold)",
                f"{float(props['recovery_ms']):.0f} ms from the sticky fault to the next chunk "
                f"served by a fresh child{on} (request got {props.get('recovery_error', '?')}; "
                f"poisoned child exit {exit_code}: {how})",
            )
        )
    else:
        rows.append(
            ("process recovery (cold)", "not measured (the recovery test did not record it)")
        )
    if "assert_recovery_ms" in props:
        rows.append(
            (
                "PyTorch device-side assert",
                f"{float(props['assert_recovery_ms']):.0f} ms from the assert in a "
                f"TransformersRunner child to a fresh child's answer "
                f"({props.get('assert_error', '?')})",
            )
        )
    else:
        rows.append(("PyTorch device-side assert", "not measured (torch/transformers missing?)"))
    bench = summary.get("throughput")
    if isinstance(bench, dict) and "ratio" in bench:
        rows.append(
            (
                "throughput",
                f"{bench['steps']} steps of {bench['matmuls_per_step']} fp32 matmuls "
                f"{bench['size']}^3, best of {bench['repeat']}: direct {bench['direct_s']:.3f} s "
                f"({bench['direct_tflops']:.1f} TFLOP/s), run_sync {bench['framework_s']:.3f} s",
            )
        )
        verdict = "met" if bench["met"] else "NOT met"
        rows.append(
            (
                "  ratio",
                f"{bench['ratio']:.4f} ({bench['overhead_us_per_step']:.0f} us/step overhead; "
                f"target >= {THROUGHPUT_TARGET}: {verdict})",
            )
        )
    elif bench is not None:
        rows.append(("throughput", str(bench)))
    rows.append(("result", summary["verdict"]))
    width = max(len(key) for key, _ in rows)
    print()
    print("trio-supervise GPU check")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Run the gpu tests (tests/devices/test_gpu.py) on a CUDA machine and print a summary: "
            "GPU, versions, each test's result, event-loop lag, process-isolated recovery from a "
            "sticky error and framework/direct throughput. "
            "Exit 0: all passed; 1: a test failed or none ran; 2: no CUDA device; "
            "3: a package is missing (see --print-wheels)."
        )
    )
    parser.add_argument(
        "--print-wheels",
        action="store_true",
        help="print the commands that download the wheels the device machine lacks, and exit",
    )
    parser.add_argument("--json", type=Path, help="also write the summary to this JSON file")
    parser.add_argument("--skip-bench", action="store_true", help="skip the throughput loop")
    parser.add_argument("--size", type=int, default=4096, help="matmul size (default 4096)")
    parser.add_argument("--matmuls", type=int, default=4, help="matmuls per step (default 4)")
    parser.add_argument("--steps", type=int, default=50, help="steps per loop (default 50)")
    parser.add_argument("--repeat", type=int, default=5, help="loops per side (default 5)")
    parser.add_argument(
        "--pytest-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for the child pytest (repeatable), e.g. -x or -W...",
    )
    args = parser.parse_args(argv)

    if args.print_wheels:
        print("\n".join(wheel_commands()))
        return 0

    if str(REPO) not in sys.path:  # trio_supervise from this checkout, installed or not
        sys.path.append(str(REPO))
    problem = cuda_problem()
    if problem is not None:
        print(f"gpu_check: no CUDA device: {problem}", file=sys.stderr)
        return 2
    missing = missing_modules()
    if missing:
        print(
            f"gpu_check: missing Python packages: {', '.join(missing)}; carry them as wheels "
            "(python benchmarks/gpu_check.py --print-wheels) and put them on PYTHONPATH",
            file=sys.stderr,
        )
        return 3

    environment = gpu_info()
    rc, cases, seconds = run_gpu_tests(args.pytest_arg)
    bad = [case["name"] for case in cases if case["outcome"] != "passed"]
    failed = rc != 0 or not cases or bool(bad)
    if not cases:
        verdict = f"FAIL: no gpu test ran (pytest rc {rc})"
    elif failed:
        verdict = f"FAIL: {len(bad)} of {len(cases)} gpu tests not passed (pytest rc {rc})"
    else:
        verdict = f"OK: all {len(cases)} gpu tests passed"

    throughput: dict[str, Any] | str | None = None
    if not args.skip_bench:
        try:
            throughput = bench_throughput(args.size, args.matmuls, args.steps, args.repeat)
        except Exception as exc:  # report it; the tests' verdict stands
            throughput = f"failed: {type(exc).__name__}: {exc}"

    summary = {
        "environment": environment,
        "tests": {"returncode": rc, "seconds": seconds, "cases": cases},
        "throughput": throughput,
        "verdict": verdict,
    }
    print_table(summary)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
