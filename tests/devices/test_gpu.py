"""CupyDevice and ``classify_cuda_error`` on a real CUDA device.

Every test here is marked ``gpu``: ``conftest.py`` skips them where CuPy sees no device, so they
collect (and skip) cleanly anywhere. On a GPU machine run them with
``python benchmarks/gpu_check.py`` (which also prints a summary table) or
``python -m pytest -q -m gpu tests/devices/test_gpu.py``.

Measurements worth a summary (event-loop lag, the sticky status seen, the time a process-isolated
worker takes to recover from a sticky error) are appended to the test item's
``user_properties``, which ``--junitxml`` writes out; ``gpu_check.py`` reads them there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest
import trio

from trio_supervise import (
    ContextPoisoned,
    InferenceError,
    OutOfMemory,
    Request,
    RequestStream,
    SamplingParams,
    Worker,
    classify_cuda_error,
    open_worker,
)
from trio_supervise.devices import CupyDevice, MemoryInfo
from trio_supervise.devices._cuda_errors import STICKY_CUDA_STATUSES
from trio_supervise.isolation._host import STICKY_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]

TICK_S = 0.001
"""The ticker's sleep when measuring event-loop lag."""
MAX_LAG_S = 0.050
"""The event loop must never stall longer than this while the GPU is busy (DESIGN.md aims at
5 ms; this bound only catches a blocked loop, not a slow machine)."""
BUSY_TARGET_S = 1.0
"""How long the queued matmuls should keep the GPU busy."""
MIN_BUSY_S = 0.2
"""Below this the lag test would prove nothing: the GPU was not busy while we waited."""

MiB = 1 << 20
GiB = 1 << 30


def _record(request: pytest.FixtureRequest, name: str, value: object) -> None:
    """Keep a measurement in the report (``--junitxml`` writes it as a property).

    ``record_property`` would warn under the default junit family (xunit2), which the
    project's ``filterwarnings = error`` turns into a failure; ``user_properties`` does not.
    """
    request.node.user_properties.append((name, value))


@pytest.fixture
def device() -> Iterator[CupyDevice]:
    dev = CupyDevice(0)
    try:
        yield dev
    finally:
        dev.close()


AXPY_SOURCE = r"""
extern "C" __global__ void axpy(const float a, const float* x, const float* y, float* out,
                                const int n) {
    int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i < n) {
        out[i] = a * x[i] + y[i];
    }
}
"""


@pytest.mark.gpu
async def test_run_sync_runs_real_kernels_with_the_context_current(device: CupyDevice) -> None:
    xp = device.xp
    n = 1 << 20
    axpy = xp.RawKernel(AXPY_SOURCE, "axpy")
    default_pool = xp.get_default_memory_pool()

    def work() -> dict[str, Any]:
        default_used = default_pool.used_bytes()
        x = xp.arange(n, dtype=xp.float32)
        y = xp.ones(n, dtype=xp.float32)
        out = xp.empty_like(x)
        axpy(((n + 255) // 256,), (256,), (numpy.float32(2.0), x, y, out, numpy.int32(n)))
        elementwise = x * 2 + 1
        return {
            "stream": xp.cuda.get_current_stream().ptr,
            "device": xp.cuda.runtime.getDevice(),
            "pool_used": int(device.pool.used_bytes()),
            "default_pool_grew": int(default_pool.used_bytes()) - int(default_used),
            "raw": out.get(),
            "elementwise": elementwise.get(),
        }

    seen = await device.run_sync(work)
    expected = numpy.arange(n, dtype=numpy.float32) * 2 + 1  # exact in float32 below 2**24
    numpy.testing.assert_array_equal(seen["raw"], expected)
    numpy.testing.assert_array_equal(seen["elementwise"], expected)
    # The work ran with this context's stream, device and memory pool current.
    assert seen["stream"] == device.stream.ptr
    assert seen["device"] == device.device_id
    assert seen["pool_used"] >= 4 * n * 4
    assert seen["default_pool_grew"] == 0


@pytest.mark.gpu
async def test_synchronize_does_not_block_the_event_loop(
    device: CupyDevice, request: pytest.FixtureRequest
) -> None:
    xp = device.xp
    n = 8192
    arrays: dict[str, Any] = {}

    def setup() -> float:
        a = xp.random.random((n, n), dtype=xp.float32)
        b = xp.random.random((n, n), dtype=xp.float32)
        c = xp.empty((n, n), dtype=xp.float32)
        xp.matmul(a, b, out=c)  # warm-up: cuBLAS handle and kernels
        device.stream.synchronize()
        start = time.perf_counter()
        for _ in range(3):
            xp.matmul(a, b, out=c)
        device.stream.synchronize()
        arrays.update(a=a, b=b, c=c)
        return (time.perf_counter() - start) / 3

    per_matmul = await device.run_sync(setup)
    # Enough matmuls to keep the GPU busy about a second, few enough that launching them never
    # blocks on a full launch queue.
    count = max(4, min(200, math.ceil(BUSY_TARGET_S / max(per_matmul, 1e-6))))

    def enqueue() -> None:
        for _ in range(count):
            xp.matmul(arrays["a"], arrays["b"], out=arrays["c"])

    ticks: list[tuple[float, float]] = []  # (woke at, lag), on the real clock

    async def ticker() -> None:
        while True:
            before = time.perf_counter()
            await trio.sleep(TICK_S)
            after = time.perf_counter()
            ticks.append((after, after - before - TICK_S))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0.05)
        enqueue_start = time.perf_counter()
        await device.run_sync(enqueue)
        sync_start = time.perf_counter()
        await device.synchronize()
        sync_end = time.perf_counter()
        await trio.sleep(0.02)
        nursery.cancel_scope.cancel()

    busy = sync_end - sync_start
    while_busy = [lag for woke, lag in ticks if sync_start <= woke <= sync_end]
    during_job = [lag for woke, lag in ticks if enqueue_start <= woke <= sync_end + 0.02]
    max_lag = max(during_job, default=math.inf)
    _record(request, "max_lag_ms", round(max_lag * 1e3, 3))
    _record(request, "busy_s", round(busy, 3))
    _record(request, "ticks_while_busy", len(while_busy))
    _record(request, "matmuls", count)

    assert busy >= MIN_BUSY_S, (
        f"the GPU was busy only {busy:.3f} s after {count} matmuls of {n}x{n} "
        f"({per_matmul * 1e3:.2f} ms each): too short to test anything"
    )
    # The loop kept ticking the whole time: at least one tick per 10 ms on average...
    assert len(while_busy) >= busy / 0.010, (len(while_busy), busy)
    # ...and never stalled.
    assert max_lag < MAX_LAG_S, f"event loop stalled {max_lag * 1e3:.1f} ms while the GPU ran"


@pytest.mark.gpu
async def test_probe_memory_info_and_close() -> None:
    dev = CupyDevice(0)
    try:
        await dev.probe()
        info = dev.memory_info()
        assert isinstance(info, MemoryInfo)
        assert info.total is not None and info.free is not None
        assert 0 < info.free <= info.total
        assert info.total >= GiB
        assert 0 <= info.used <= MiB  # the probe's temporaries went back to the pool

        size = GiB
        held: list[Any] = []
        await dev.run_sync(lambda: held.append(dev.xp.empty(size, dtype=dev.xp.uint8)))
        holding = dev.memory_info()
        assert holding.used >= size
        assert holding.free is not None and holding.free <= info.free - size // 2

        await dev.run_sync(held.clear)
        assert dev.memory_info().used <= MiB
        assert dev.pool.total_bytes() >= size  # cached by the pool, not yet given back
    finally:
        dev.close()

    assert dev.closed
    assert dev.pool.total_bytes() == 0
    after = dev.memory_info()
    assert after.free is not None and after.free >= holding.free + size // 2
    with pytest.raises(ContextPoisoned):
        await dev.run_sync(lambda: None)
    with pytest.raises(ContextPoisoned):
        await dev.probe()
    dev.close()  # idempotent


@pytest.mark.gpu
async def test_out_of_memory_is_classified_and_the_context_survives(device: CupyDevice) -> None:
    xp = device.xp
    too_much = 10**15  # a petabyte: far more than any device has

    def attempt() -> BaseException | None:
        try:
            xp.empty(too_much, dtype=xp.uint8)
        except Exception as exc:
            return exc
        return None

    raw = await device.run_sync(attempt)
    assert raw is not None, "allocating a petabyte succeeded"
    assert type(raw).__name__ == "OutOfMemoryError", repr(raw)
    mapped = classify_cuda_error(raw)
    assert isinstance(mapped, OutOfMemory)
    assert mapped.retryable
    assert mapped.__cause__ is raw

    # run_sync classifies the same error itself.
    with pytest.raises(OutOfMemory) as caught:
        await device.run_sync(xp.empty, too_much, xp.uint8)
    assert type(caught.value.__cause__).__name__ == "OutOfMemoryError"

    # An OOM is not sticky: the context still works.
    await device.probe()


STICKY_SCRIPT = r'''
import json, os, sys

ADDRESS = int(sys.argv[1], 0)
result = {"address": hex(ADDRESS)}


def error_info(exc):
    from trio_supervise import classify_cuda_error

    mapped = classify_cuda_error(exc)
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "status": getattr(exc, "status", None),
        "message": str(exc)[:300],
        "classified": type(mapped).__name__,
        "retryable": getattr(mapped, "retryable", None),
    }


def emit():
    print("GPU_CHECK_RESULT " + json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: nothing more can be trusted after a sticky error


try:
    import cupy
    import trio

    from trio_supervise.devices import CupyDevice

    device = CupyDevice(0)
    trio.run(device.probe)
    result["probe_before"] = "ok"

    poke = cupy.RawKernel(
        r"""
        extern "C" __global__ void poke(int* p) { *p = 42; }
        """,
        "poke",
    )
    gpu = cupy.cuda.Device(0)
    with gpu:
        poke.compile()
        gpu.synchronize()
        try:
            poke((1,), (1,), (cupy.uint64(ADDRESS),))
            gpu.synchronize()
            result["sync_error"] = None
        except Exception as exc:
            result["sync_error"] = error_info(exc)

    async def probe_again(dev):
        await dev.probe()

    attempts = (("probe_after", lambda: device), ("fresh_probe_after", lambda: CupyDevice(0)))
    for key, make in attempts:
        try:
            trio.run(probe_again, make())
            result[key] = {"raised": False}
        except Exception as exc:
            result[key] = {"raised": True, **error_info(exc)}
except BaseException as exc:
    result["unexpected"] = f"{type(exc).__name__}: {exc}"[:500]
emit()
'''

BAD_ADDRESS = 0x10
"""Where the kernel writes: in page 0, which neither the host nor the GPU ever maps. (An
arbitrary far address could be host memory that the GPU reaches through HMM/ATS, where the
write would land silently instead of faulting.)"""


@pytest.mark.gpu
def test_sticky_error_is_context_poisoned_and_probe_fails_after_it(
    request: pytest.FixtureRequest,
) -> None:
    # A sticky error poisons the whole process, so it happens in a child process.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", STICKY_SCRIPT, hex(BAD_ADDRESS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("GPU_CHECK_RESULT ")]
    assert lines, f"no result (rc {proc.returncode})\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1].removeprefix("GPU_CHECK_RESULT "))
    context = f"{json.dumps(result, indent=1)}\nstderr:\n{proc.stderr[-3000:]}"

    sync_error = result.get("sync_error") or {}
    after = result.get("probe_after") or {}
    fresh = result.get("fresh_probe_after") or {}
    _record(request, "sticky_status", sync_error.get("status"))
    _record(request, "sticky_error", sync_error.get("type"))
    _record(request, "sticky_classified", sync_error.get("classified"))
    _record(request, "probe_after", after.get("classified") if after.get("raised") else "ok")

    assert "unexpected" not in result, context
    assert result.get("probe_before") == "ok", context
    assert sync_error, f"writing to {BAD_ADDRESS:#x} raised nothing\n{context}"
    assert sync_error["type"] in ("CUDARuntimeError", "CUDADriverError"), context
    assert sync_error["status"] in STICKY_CUDA_STATUSES, context
    assert sync_error["classified"] == "ContextPoisoned", context
    assert sync_error["retryable"] is True, context
    # The process's context is gone: the same device and a fresh one both fail their probe.
    assert after.get("raised") is True, context
    assert fresh.get("raised") is True, context


STICKY_RUNNER = "tests.support.gpu_runners:StickyRunner"
"""Imported by the worker's child process (it gets the parent's sys.path, tests/ included)."""
STICKY_DEVICE = "cuda:0"
PROCESS_TEST_TIMEOUT_S = 180.0
"""Two cold children (Python, CuPy, a CUDA context and an NVRTC compile each) and a poisoning:
seconds each on a warm machine; generous, for a first compile with an empty kernel cache."""


def _child_process(worker: Worker) -> Any:
    """The worker's current child process (a ``trio.Process``)."""
    tier: Any = worker._tier
    assert tier is not None and tier.home.process is not None
    return tier.home.process


def _assert_gone(pid: int) -> None:
    """Neither the process nor its process group is left (reaped, not a zombie)."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


async def _outcome(stream: RequestStream) -> tuple[str, object]:
    try:
        _, text, _, _ = await stream.collect()
    except InferenceError as exc:
        return "error", exc
    return "ok", text


@pytest.mark.gpu
async def test_process_worker_recovers_from_a_sticky_error(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from tests.support.gpu_runners import gpu_text

    marker = tmp_path / "fault-fired"
    report = tmp_path / "report.jsonl"
    runner_args = {"marker": str(marker), "report": str(report)}
    with trio.fail_after(PROCESS_TEST_TIMEOUT_S):
        async with open_worker(
            STICKY_RUNNER, runner_args=runner_args, device=STICKY_DEVICE, isolation="process"
        ) as worker:
            handle = worker
            first_process = _child_process(worker)
            first = int(first_process.pid)
            assert first != os.getpid()
            assert worker.generation == 1

            # The first batch of the first child writes through a bad pointer: a real sticky
            # CUDA error, which no retry in that process could cure.
            kind, error = await _outcome(
                worker.generate(
                    Request("a", "prompt a", SamplingParams(max_tokens=6, seed=3), idempotent=False)
                )
            )
            failed_at = time.time()
            assert marker.exists(), "the runner never reached its fault"
            fault_at = float(marker.read_text())
            _record(request, "recovery_error", type(error).__name__)
            assert kind == "error", f"the poisoned request succeeded: {error!r}"
            assert isinstance(error, ContextPoisoned), repr(error)
            assert error.retryable

            # The next request on the same handle is served by a fresh child, on the GPU.
            b = Request("b", "prompt b", SamplingParams(max_tokens=4, seed=3))
            text = ""
            served_at: float | None = None
            async with worker.generate(b) as stream:
                async for chunk in stream:
                    if served_at is None:
                        served_at = time.time()
                    text += chunk.text
            assert served_at is not None
            recovery = served_at - fault_at
            _record(request, "recovery_ms", round(recovery * 1e3, 1))
            _record(request, "recovery_after_error_ms", round((served_at - failed_at) * 1e3, 1))
            _record(request, "child_exit", first_process.returncode)

            assert worker is handle
            assert worker.generation == 2
            second = int(_child_process(worker).pid)
            assert second not in (first, os.getpid())
            _assert_gone(first)

            assert text == gpu_text(b), "the tokens are not the ones computed on the device"
            lines = [json.loads(line) for line in report.read_text().splitlines()]
            assert [line["requests"] for line in lines] == [["b"]], lines
            served = lines[-1]
            _record(request, "recovery_gpu", served.get("gpu"))
            assert served["pid"] == second, (served, first, second)
            assert served["device"] == STICKY_DEVICE
            assert served["array_module"] == "cupy"
            assert served["cuda_device"] == served["array_device"] == 0
            assert served["own_stream"] is True
            assert served["tokens"] == b.params.max_tokens

            stats = worker.statistics()
            assert stats.generation == 2
            assert stats.failed == 1 and stats.finished == 1, stats
    _assert_gone(second)
    # The poisoned child reported the error and os._exit()ed on its own (it was not stopped).
    assert first_process.returncode == STICKY_EXIT_CODE, (
        f"the poisoned child exited with {first_process.returncode}, not {STICKY_EXIT_CODE}"
    )


@pytest.mark.gpu
async def test_a_device_side_assert_in_a_transformers_child_is_cured_by_a_fresh_child(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A real device-side assert (an out-of-range index) in the child of a process tier running
    ``TransformersRunner`` on the GPU: ContextPoisoned, the child exits, and a fresh child serves
    the next request on the GPU."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.support.tiny_models import tiny_model

    model = tiny_model(tmp_path / "tiny", "llama")
    marker = tmp_path / "asserted"
    runner_args = {"marker": str(marker), "model": str(model), "dtype": "float32"}
    with trio.fail_after(PROCESS_TEST_TIMEOUT_S):
        async with open_worker(
            "tests.support.gpu_runners:asserting_transformers_runner", runner_args=runner_args,
            device=STICKY_DEVICE, isolation="process",
        ) as worker:  # fmt: skip
            first = int(_child_process(worker).pid)
            asked = Request("a", "The worker", SamplingParams(max_tokens=4), idempotent=False)
            kind, error = await _outcome(worker.generate(asked))
            assert marker.exists(), "the runner never reached its assert"
            fault_at = float(marker.read_text())
            assert kind == "error" and isinstance(error, ContextPoisoned), repr(error)
            _record(request, "assert_error", str(error)[:120])
            b = Request("b", "The worker", SamplingParams(max_tokens=4, temperature=0))
            kind, text = await _outcome(worker.generate(b))
            _record(request, "assert_recovery_ms", round((time.time() - fault_at) * 1e3, 1))
            assert kind == "ok" and worker.generation == 2, text
            assert int(_child_process(worker).pid) != first
            _assert_gone(first)
