"""One long-lived thread for a model's calls.

PyTorch keeps a team of intra-op threads for each thread that computes, so calls that land on
different threads (as ``trio.to_thread.run_sync`` may place them, from its cache) build a second
team that competes with the first: the same forward pass runs 1.5 to 2.3 times slower on two
cores (measured by ``benchmarks/bench_transformers.py``). A :class:`ModelThread` runs every call
on one thread of its own, one at a time, in order.

A call cannot be cancelled once sent (a forward pass cannot be interrupted, and the model's
state must not be left half-changed): its caller waits for it, and sees a cancellation at its
next checkpoint. The thread is a daemon (it never holds the interpreter open) and ends at
:meth:`ModelThread.close`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, final

import outcome
import trio

__all__ = ["ModelThread"]

T = TypeVar("T")


@final
class ModelThread:
    """Calls on one thread of their own (see the module docstring); started at the first."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<ModelThread {self.name!r}{'' if self._thread else ' not started'}>"

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the thread; its result, or what it raised."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def job() -> None:
            result = outcome.capture(fn, *args)
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put(job)
        result: T = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED  # the call runs to its end: see above
        )
        return result

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def close(self) -> None:
        """End the thread after the calls sent so far."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None
