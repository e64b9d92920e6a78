"""Events: records, subscriptions that drop the oldest, callbacks, logging."""

import logging

import pytest
import trio
import trio.testing

import trio_supervise as ts
from trio_supervise.supervision import Emitter


async def test_subscription_drops_the_oldest_and_counts() -> None:
    emitter = Emitter("sup")
    sub = emitter.subscribe(max_buffer=3)
    with pytest.raises(trio.WouldBlock):
        sub.receive_nowait()
    for generation in range(1, 6):
        emitter.emit("c", generation, ts.EventKind.STARTED)
    assert sub.dropped == 2
    assert [sub.receive_nowait().generation for _ in range(3)] == [3, 4, 5]
    emitter.close()
    with pytest.raises(trio.EndOfChannel):
        await sub.receive()


async def test_a_waiting_receiver_is_woken_and_close_forgets_it() -> None:
    emitter = Emitter("sup")
    sub = emitter.subscribe()
    received = []
    woken = trio.Event()

    async def reader() -> None:
        async for event in sub:
            received.append(event.kind)
            woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()  # the reader is parked, waiting
        emitter.emit("c", 1, ts.EventKind.READY)
        await woken.wait()
        assert received == [ts.EventKind.READY]
        emitter.close()
    await sub.aclose()
    assert emitter.subscriptions == []
    with pytest.raises(trio.ClosedResourceError):
        sub.receive_nowait()
    with pytest.raises(ValueError, match=r"^max_buffer must be an int >= 1, got 0$"):
        emitter.subscribe(0)


async def test_a_broken_callback_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    seen = []

    def broken(event: ts.SupervisionEvent) -> None:
        raise RuntimeError("observer bug")

    emitter = Emitter("sup", (broken, seen.append))
    with caplog.at_level(logging.DEBUG, logger="trio_supervise"):
        emitter.emit("c", 1, ts.EventKind.FAILED, error=ValueError("x"))
    assert len(seen) == 1  # the next callback still ran
    assert "on_event callback" in caplog.text and "observer bug" in caplog.text
    assert "sup/c#1 failed: ValueError('x')" in caplog.text
    record = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert record.supervision_event is seen[0]  # type: ignore[attr-defined]


def test_describe() -> None:
    event = ts.SupervisionEvent(1.0, "s", "c", 2, ts.EventKind.RESTARTING, None, 0.5)
    assert event.describe() == "s/c#2 restarting (in 0.5s)"
    event = ts.SupervisionEvent(1.0, "s", "c", 2, ts.EventKind.STOPPED, reason="done")
    assert event.describe() == "s/c#2 stopped: done"
