"""The CPU device: NumPy arrays, work done on the event loop (no thread)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy
import trio

from .._errors import ContextPoisoned
from ._context import MemoryInfo

T = TypeVar("T")


class CpuDevice:
    """A device context on the CPU with NumPy.

    It does its small work inline on the event loop, with no thread, so that workers on it are
    deterministic under Trio's ``autojump_clock``. Heavy CPU work belongs in a runner's own
    ``trio.to_thread.run_sync``.
    """

    name = "cpu"
    xp: Any = numpy

    def __init__(self) -> None:
        self.closed = False

    def __repr__(self) -> str:
        return f"<CpuDevice{' closed' if self.closed else ''}>"

    def _check(self) -> None:
        if self.closed:
            raise ContextPoisoned("this CpuDevice was closed")

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` inline, then yield to the event loop."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check()
        result = fn(*args)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    async def synchronize(self) -> None:
        """Nothing is queued on the CPU; a checkpoint."""
        self._check()
        await trio.lowlevel.checkpoint()

    def free_memory(self) -> None:
        """NumPy has no pool to trim."""

    def memory_info(self) -> MemoryInfo:
        """Host memory, from ``os.sysconf`` where available."""
        total: int | None
        free: int | None
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            total = os.sysconf("SC_PHYS_PAGES") * page
            free = os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError, AttributeError):
            total = free = None
        return MemoryInfo(used=0, free=free, total=total)

    async def probe(self) -> None:
        """A tiny NumPy round trip."""
        value = await self.run_sync(lambda: int(numpy.arange(4).sum()))
        if value != 6:
            raise ContextPoisoned(f"CPU probe computed {value}, expected 6")

    def close(self) -> None:
        """Mark closed."""
        self.closed = True
