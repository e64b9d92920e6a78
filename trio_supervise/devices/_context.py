"""What every device context offers a runner, and its memory record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, final, runtime_checkable

import attrs

__all__ = ["DeviceContext", "MemoryInfo"]

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
