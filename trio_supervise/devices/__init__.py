"""Device contexts: where a runner's arrays live and its device work runs.

``open_device("auto" | "cpu" | "cuda:N")`` returns a :class:`CpuDevice` (NumPy) or a
:class:`CupyDevice` (CuPy, imported only then). ``"auto"`` picks CUDA when
``cupy.cuda.is_available()``, else the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, final, runtime_checkable

import attrs

from .._errors import ConfigError, Unrecoverable
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

T = TypeVar("T")


@final
@attrs.frozen
class MemoryInfo:
    """Device memory, in bytes."""

    used: int
    """Held by this context's memory pool."""
    free: int | None
    """Free on the device, when known."""
    total: int | None
    """The device's capacity, when known."""


@runtime_checkable
class DeviceContext(Protocol):
    """What a runner gets in ``load(device)``."""

    name: str
    """``"cpu"`` or ``"cuda:N"``."""
    xp: Any
    """The array module: ``numpy`` or ``cupy``."""

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run device work off the event loop (on the CPU: inline), with this context current."""
        ...

    async def synchronize(self) -> None:
        """Wait for queued device work, without blocking the event loop."""

    def free_memory(self) -> None:
        """Return cached blocks of this context's memory pool to the device."""

    def memory_info(self) -> MemoryInfo:
        """Memory held and free."""
        ...

    async def probe(self) -> None:
        """A tiny round trip; raises once the context is broken (a sticky CUDA error)."""

    def close(self) -> None:
        """Free what this context holds; it is unusable afterwards."""


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
