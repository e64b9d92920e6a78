"""Device contexts: where a runner's arrays live and its device work runs.

``open_device("auto" | "cpu" | "cuda:N")`` returns a :class:`CpuDevice` (NumPy) or a
:class:`CupyDevice` (CuPy, imported only then). ``"auto"`` picks CUDA when
``cupy.cuda.is_available()``, else the CPU.

* ``_context``: the :class:`DeviceContext` protocol every runner's device follows.
* ``_cpu``, ``_cupy``: the NumPy and CuPy contexts.
* ``_cuda_errors``: CUDA's errors in the library's taxonomy (which statuses poison a context).
"""

from __future__ import annotations

from .._errors import ConfigError, Unrecoverable
from ._context import DeviceContext, MemoryInfo
from ._cpu import CpuDevice
from ._cupy import CupyDevice, cuda_available

__all__ = [
    "CpuDevice",
    "CupyDevice",
    "DeviceContext",
    "MemoryInfo",
    "cuda_available",
    "open_device",
]


def open_device(spec: str = "auto") -> CpuDevice | CupyDevice:
    """A device context from ``"auto"``, ``"cpu"`` or ``"cuda:N"``.

    Raises:
        ConfigError: the spec is malformed.
        Unrecoverable: ``"cuda:N"`` was asked for and CUDA is not available.
    """
    if spec == "cpu":
        return CpuDevice()
    if spec == "auto":
        return CupyDevice(0) if cuda_available() else CpuDevice()
    if isinstance(spec, str) and spec.startswith("cuda:") and spec[5:].isdigit():
        if not cuda_available():
            raise Unrecoverable(f"device {spec!r} was asked for, but CUDA is not available here")
        return CupyDevice(int(spec[5:]))
    raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda:N', got {spec!r}")
