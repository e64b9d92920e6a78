"""ModelThread: every call on one thread of its own, in order; an error comes back as itself; a
call, once sent, runs to its end, and its caller sees a cancellation only after it."""

from __future__ import annotations

import threading

import pytest
import trio

from trio_supervise.runners._model_thread import ModelThread


async def test_every_call_runs_on_the_same_thread_of_its_own_in_order() -> None:
    thread = ModelThread("model")
    seen: list[tuple[str, int]] = []

    def note(label: str) -> str:
        seen.append((label, threading.get_ident()))
        return label

    with trio.fail_after(10):
        assert [await thread.run(note, str(i)) for i in range(5)] == ["0", "1", "2", "3", "4"]
        with pytest.raises(ZeroDivisionError):
            await thread.run(lambda: 1 / 0)
        assert await thread.run(note, "after") == "after"
    thread.close()
    idents = {ident for _, ident in seen}
    assert len(idents) == 1 and threading.get_ident() not in idents
    assert [label for label, _ in seen] == ["0", "1", "2", "3", "4", "after"]


async def test_a_call_sent_runs_to_its_end_and_the_cancellation_comes_after() -> None:
    thread = ModelThread("model")
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []
    seen: list[object] = []

    def long_call() -> None:
        started.set()
        release.wait(10)
        finished.append(True)

    scope = trio.CancelScope()

    async def caller() -> None:
        with scope:
            await thread.run(long_call)
            seen.append(("returned", list(finished)))
            await trio.lowlevel.checkpoint()  # where the cancellation is seen
            seen.append("not cancelled")
        seen.append(("cancelled", scope.cancelled_caught))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.to_thread.run_sync(started.wait)
            scope.cancel()  # the call is in the thread: it cannot be interrupted
            release.set()
    thread.close()
    assert seen == [("returned", [True]), ("cancelled", True)]
