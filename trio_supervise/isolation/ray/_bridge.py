"""Ray's results into Trio: the bridge a Ray worker's tier waits on Ray through.

A call's ``ObjectRef`` is resolved by Ray's own thread (``ref.future()``); a batch's streaming
generator is read by one thread per worker that runs an asyncio loop; each result reaches Trio
through ``TrioToken.run_sync_soon``. No Trio task blocks, and no thread is spent per call or per
chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, final

import trio

__all__ = ["Bridge"]


@final
class Bridge:
    """Ray's results into Trio (see the module docstring): calls through ``ref.future()``,
    streaming generators read on an asyncio loop in one thread.

    Made in Trio (it keeps the run's token); :meth:`aclose` stops its thread.
    """

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="trio-supervise-ray-bridge",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def aclose(self) -> None:
        """Stop the loop (what it still awaits is dropped) and join its thread."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)

    def _to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the run is over: nobody to tell
            self._token.run_sync_soon(fn, *args)

    def submit(self, coroutine: Coroutine[Any, Any, None]) -> Future[None]:
        """Run a coroutine on the bridge's loop."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def get(self, ref: Any) -> Any:
        """Await one ``ObjectRef`` from Trio; its value, or the error Ray raised."""
        send, receive = trio.open_memory_channel[Future[Any]](1)
        future = ref.future()  # resolved by Ray's own thread: no hop through the loop
        future.add_done_callback(lambda done: self._to_trio(_send_quietly, send, done))
        # Not cancelled when we are: the call runs on in Ray, and its result is dropped.
        done = await receive.receive()
        return done.result()

    def then(self, ref: Any, on_value: Callable[[Any], None],
             on_error: Callable[[Exception], None]) -> None:  # fmt: skip
        """Call ``on_value(value)`` (or ``on_error``) in Trio once ``ref`` resolves."""

        def done(future: Future[Any]) -> None:
            try:
                value = future.result()
            except Exception as exc:
                self._to_trio(on_error, exc)
            else:
                self._to_trio(on_value, value)

        ref.future().add_done_callback(done)

    def stream(self, generator: Any, on_item: Callable[[Any], None],
               on_error: Callable[[Exception], None],
               on_end: Callable[[], None]) -> Future[None]:  # fmt: skip
        """Call ``on_item`` in Trio for each item of a Ray streaming generator, in order, then
        ``on_end`` (or ``on_error``)."""

        async def read() -> None:
            try:
                async for ref in generator:
                    self._to_trio(on_item, await ref)
            except Exception as exc:
                self._to_trio(on_error, exc)
            else:
                self._to_trio(on_end)

        return self.submit(read())


def _send_quietly(send: trio.MemorySendChannel[Any], value: Any) -> None:
    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        send.send_nowait(value)
