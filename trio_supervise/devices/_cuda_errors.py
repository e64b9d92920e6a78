"""CUDA's errors in this library's taxonomy: which statuses poison a context, which are an
out-of-memory, which mean there is no device at all."""

from __future__ import annotations

import re

from .._errors import ContextPoisoned, InferenceError, OutOfMemory, Unrecoverable

__all__ = ["classify_cuda_error", "cuda_error_code", "is_sticky_cuda_error"]

# CUDA status codes (runtime and driver share these numbers) that leave the context unusable:
# illegal address, launch timeout, launch failure, illegal instruction, misaligned address,
# invalid address space, invalid pc, hardware stack error, ECC and NVLink errors, unknown.
STICKY_CUDA_STATUSES = frozenset(
    {700, 702, 710, 714, 715, 716, 717, 718, 719, 721, 226, 214, 220, 999}
)
OOM_CUDA_STATUSES = frozenset({2})
NO_DEVICE_CUDA_STATUSES = frozenset({35, 100})


def classify_cuda_error(exc: BaseException) -> BaseException:
    """Map a CuPy/CUDA exception to this library's taxonomy; return anything else unchanged.

    ``CUDARuntimeError`` and ``CUDADriverError`` are recognised by their class name and
    ``.status`` (duck-typed: a driver error cannot even be built without ``libcuda``). Sticky
    codes become :class:`ContextPoisoned`, status 2 and CuPy's ``OutOfMemoryError`` become
    :class:`OutOfMemory`, no device or driver (35, 100) becomes :class:`Unrecoverable`.
    PyTorch's ``torch.OutOfMemoryError`` is :class:`OutOfMemory`; its ``RuntimeError`` or
    ``torch.AcceleratorError`` of a sticky status (``CUDA error: an illegal memory access was
    encountered``, a device-side assert, ...) is :class:`ContextPoisoned`. The new error is
    chained to the original (``__cause__``).
    """
    if isinstance(exc, InferenceError):
        return exc
    name = type(exc).__name__
    mapped: InferenceError | None = None
    module = type(exc).__module__
    if name == "OutOfMemoryError" and module.startswith(("cupy", "torch")):
        mapped = OutOfMemory(str(exc))
    elif isinstance(exc, RuntimeError) and _is_sticky_torch_error(exc):
        mapped = ContextPoisoned(f"sticky CUDA error: {exc}")
    elif name in ("CUDARuntimeError", "CUDADriverError"):
        status = getattr(exc, "status", None)
        if status in STICKY_CUDA_STATUSES:
            mapped = ContextPoisoned(f"sticky CUDA error {status}: {exc}")
        elif status in OOM_CUDA_STATUSES:
            mapped = OutOfMemory(f"CUDA out of memory ({status}): {exc}")
        elif status in NO_DEVICE_CUDA_STATUSES:
            mapped = Unrecoverable(f"no usable CUDA device or driver ({status}): {exc}")
    if mapped is None:
        return exc
    mapped.__cause__ = exc
    return mapped


TORCH_MESSAGE_STATUSES = {
    "out of memory": 2,
    "an illegal memory access was encountered": 700,
    "the launch timed out and was terminated": 702,
    "device-side assert triggered": 710,
    "an illegal instruction was encountered": 715,
    "illegal instruction": 715,
    "misaligned address": 716,
    "unspecified launch failure": 719,
    "uncorrectable ecc error": 214,
    "unknown error": 999,
}
"""The CUDA status behind each of PyTorch's messages (it names the status, not its number)."""

TORCH_STICKY_MESSAGES = tuple(
    message for message, status in TORCH_MESSAGE_STATUSES.items()
    if status in STICKY_CUDA_STATUSES
)  # fmt: skip
"""What PyTorch says of the sticky statuses: it raises them as ``RuntimeError`` or, newer,
``torch.AcceleratorError``, with ``CUDA error: <the runtime's message>``."""


def _is_sticky_torch_error(exc: RuntimeError) -> bool:
    """A PyTorch CUDA error (its message begins ``CUDA error``) of a sticky status."""
    text = str(exc)
    if "CUDA error" not in text and type(exc).__name__ != "AcceleratorError":
        return False
    lowered = text.lower()
    return any(message in lowered for message in TORCH_STICKY_MESSAGES)


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a sticky CUDA error (one that
    poisons the whole process, so that only a fresh process can use the device again)."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in ("CUDARuntimeError", "CUDADriverError") and (
            getattr(seen, "status", None) in STICKY_CUDA_STATUSES
        ):
            return True
        if isinstance(seen, RuntimeError) and _is_sticky_torch_error(seen):
            return True
        seen = seen.__cause__
    return False


_STATUS_IN_TEXT = re.compile(r"CUDA error (\d+)|CUDA out of memory \((\d+)\)")


def cuda_error_code(error: BaseException) -> str | None:
    """The CUDA status behind ``error`` (or an exception it was raised from) as a string, such
    as ``"700"`` or ``"2"`` (out of memory); None when it is not a CUDA error.

    It reads a CuPy error's ``.status``, PyTorch's out-of-memory class, and the texts this
    module's :func:`classify_cuda_error` and PyTorch write, so it works on an error that crossed
    from a child process (where only its class and text travel).
    """
    seen: BaseException | None = error
    while seen is not None:
        status = getattr(seen, "status", None)
        name = type(seen).__name__
        if name in ("CUDARuntimeError", "CUDADriverError") and isinstance(status, int):
            return str(status)
        if name == "OutOfMemoryError" and type(seen).__module__.startswith(("cupy", "torch")):
            return "2"
        text = str(seen)
        found = _STATUS_IN_TEXT.search(text)
        if found is not None:
            return next(group for group in found.groups() if group is not None)
        if "CUDA" in text or type(seen).__name__ == "AcceleratorError":
            lowered = text.lower()
            for message, number in TORCH_MESSAGE_STATUSES.items():
                if message in lowered:
                    return str(number)
        seen = seen.__cause__
    return None
