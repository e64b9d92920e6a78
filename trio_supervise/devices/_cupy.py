"""The CUDA device through CuPy: one stream and one memory pool per context.

CuPy is imported only when a ``CupyDevice`` is built (or availability is asked), so the rest of
the library never needs a GPU or libcuda.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, final

import trio

from .._errors import ContextPoisoned, Unrecoverable
from ._context import MemoryInfo
from ._cuda_errors import classify_cuda_error

T = TypeVar("T")


def cuda_available() -> bool:
    """Whether CuPy imports and sees a CUDA device."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:  # a broken driver install counts as no CUDA
        return False


@final
class CupyDevice:
    """A CUDA device context: its device selected, a non-blocking stream, its own memory pool.

    Device work runs through :meth:`run_sync` in a worker thread, one call at a time, with this
    context's device, stream and allocator current in that thread, so the event loop never
    blocks on the GPU. If a cancelled call's thread has to be abandoned (a hung kernel), the
    context is untrusted from then on: :meth:`probe` fails and the worker restarts the tier.
    """

    def __init__(self, device_id: int = 0) -> None:
        try:
            import cupy
        except ImportError as exc:  # pragma: no cover - cupy is a dependency of the cuda extras
            raise Unrecoverable(f"CuPy is not installed: {exc}") from exc
        self.name = f"cuda:{device_id}"
        self.device_id = device_id
        self.xp: Any = cupy
        self._device = cupy.cuda.Device(device_id)
        with self._device:
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.pool = cupy.cuda.MemoryPool()
        self._limiter = trio.CapacityLimiter(1)
        self.closed = False
        self.abandoned = False

    def __repr__(self) -> str:
        state = " closed" if self.closed else " untrusted" if self.abandoned else ""
        return f"<CupyDevice {self.name}{state}>"

    def _current(self, fn: Callable[..., T], *args: Any) -> T:
        cupy = self.xp
        with self._device, self.stream, cupy.cuda.using_allocator(self.pool.malloc):
            return fn(*args)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a thread with this context current; CUDA errors are classified.

        Cancellation abandons the thread (a kernel cannot be interrupted) and marks the context
        untrusted.
        """
        if self.closed:
            raise ContextPoisoned(f"{self.name} context was closed")
        if self.abandoned:
            raise ContextPoisoned(
                f"{self.name} context is untrusted: a device thread was abandoned"
            )
        try:
            return await trio.to_thread.run_sync(
                functools.partial(self._current, fn, *args),
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
        except trio.Cancelled:
            self.abandoned = True
            raise
        except Exception as exc:
            mapped = classify_cuda_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def synchronize(self) -> None:
        """Wait for this context's stream in a thread."""
        await self.run_sync(self.stream.synchronize)

    def free_memory(self) -> None:
        """Return the pool's cached blocks to the device."""
        self.pool.free_all_blocks()

    def memory_info(self) -> MemoryInfo:
        """Pool usage and the device's free/total memory."""
        with self._device:
            free, total = self.xp.cuda.runtime.memGetInfo()
        return MemoryInfo(used=int(self.pool.used_bytes()), free=int(free), total=int(total))

    async def probe(self) -> None:
        """Allocate, compute and copy back a tiny array; fails after a sticky error."""

        def round_trip() -> int:
            value = int(self.xp.arange(4).sum().get())
            self.stream.synchronize()
            return value

        value = await self.run_sync(round_trip)
        if value != 6:
            raise ContextPoisoned(f"{self.name} probe computed {value}, expected 6")

    def close(self) -> None:
        """Wait for the stream, free the pool; the context is unusable afterwards.

        This blocks until the device is done: a worker calls it from a thread.
        """
        if self.closed:
            return
        self.closed = True
        if not self.abandoned:  # an abandoned thread may still be using the pool
            try:
                with self._device:
                    self.stream.synchronize()
                    self.pool.free_all_blocks()
            except Exception:  # a poisoned context cannot even free: the process will exit
                pass
