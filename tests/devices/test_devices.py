"""Device contexts on the CPU, open_device, and classify_cuda_error with real CuPy objects."""

from __future__ import annotations

import numpy
import pytest
from cupy.cuda.memory import OutOfMemoryError
from cupy_backends.cuda.api.runtime import CUDARuntimeError

import trio_supervise as ts
from trio_supervise.devices import CpuDevice, cuda_available, open_device


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (700, ts.ContextPoisoned),
        (719, ts.ContextPoisoned),
        (999, ts.ContextPoisoned),
        (214, ts.ContextPoisoned),
        (2, ts.OutOfMemory),
        (100, ts.Unrecoverable),
        (35, ts.Unrecoverable),
    ],
)
def test_real_runtime_errors_are_classified_by_status(status: int, expected: type) -> None:
    error = CUDARuntimeError(status)
    mapped = ts.classify_cuda_error(error)
    assert type(mapped) is expected
    assert mapped.__cause__ is error
    assert f"{status}" in str(mapped)


def test_unknown_statuses_and_other_exceptions_pass_through() -> None:
    error = CUDARuntimeError(1)  # invalid value: a bug, not a device state
    assert ts.classify_cuda_error(error) is error
    other = ValueError("x")
    assert ts.classify_cuda_error(other) is other
    ours = ts.OutOfMemory("already typed")
    assert ts.classify_cuda_error(ours) is ours


def test_a_real_cupy_out_of_memory_error() -> None:
    error = OutOfMemoryError(1 << 40, 1 << 30, 1 << 34)
    mapped = ts.classify_cuda_error(error)
    assert isinstance(mapped, ts.OutOfMemory) and mapped.retryable
    assert mapped.__cause__ is error


def test_a_driver_error_is_recognised_by_name_and_status() -> None:
    # cupy_backends' CUDADriverError cannot be built without libcuda: a look-alike will do.
    CUDADriverError = type("CUDADriverError", (RuntimeError,), {"status": 719})
    mapped = ts.classify_cuda_error(CUDADriverError("CUDA_ERROR_LAUNCH_FAILED"))
    assert isinstance(mapped, ts.ContextPoisoned)
    assert "sticky CUDA error 719" in str(mapped)


def test_the_cuda_status_behind_an_error_is_found_here_and_after_a_crossing() -> None:
    from trio_supervise.devices._cuda_errors import cuda_error_code

    assert cuda_error_code(CUDARuntimeError(700)) == "700"
    assert cuda_error_code(ts.classify_cuda_error(CUDARuntimeError(719))) == "719"  # the cause
    assert cuda_error_code(OutOfMemoryError(1 << 40, 1 << 30, 1 << 34)) == "2"
    torch_like = RuntimeError("CUDA error: device-side assert triggered")
    assert cuda_error_code(ts.classify_cuda_error(torch_like)) == "710"
    assert cuda_error_code(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")) == "2"
    # From a child process only the class and the text travel: the text says the status.
    assert cuda_error_code(ts.ContextPoisoned("sticky CUDA error 700: an illegal address")) == "700"
    assert cuda_error_code(ts.ContextPoisoned("poisoned by a test")) is None
    assert cuda_error_code(ValueError("out of memory")) is None  # not CUDA's


async def test_cpu_device_does_its_work_inline() -> None:
    device = CpuDevice()
    assert device.xp is numpy and device.name == "cpu"
    assert await device.run_sync(lambda a, b: int(numpy.add(a, b)), 2, 3) == 5
    await device.synchronize()
    await device.probe()
    info = device.memory_info()
    assert info.used == 0 and (info.total is None or info.total > 0)
    device.free_memory()
    device.close()
    with pytest.raises(ts.ContextPoisoned, match=r"^this CpuDevice was closed$"):
        await device.probe()


def test_open_device() -> None:
    assert isinstance(open_device("cpu"), CpuDevice)
    if not cuda_available():
        assert isinstance(open_device("auto"), CpuDevice)
        with pytest.raises(ts.Unrecoverable, match=r"^device 'cuda:0' was asked for, but CUDA"):
            open_device("cuda:0")
    with pytest.raises(
        ts.ConfigError, match=r"^device must be 'auto', 'cpu' or 'cuda:N', got 'gpu'$"
    ):
        open_device("gpu")


def test_sticky_errors_are_found_through_their_causes() -> None:
    from trio_supervise.devices._cuda_errors import is_sticky_cuda_error

    sticky = ts.classify_cuda_error(CUDARuntimeError(700))
    assert is_sticky_cuda_error(sticky) and is_sticky_cuda_error(CUDARuntimeError(719))
    assert not is_sticky_cuda_error(ts.classify_cuda_error(CUDARuntimeError(2)))
    assert not is_sticky_cuda_error(ts.ContextPoisoned("raised by a runner"))
