"""The Ray actor's outbox: frames written many to a write, in order, and none lost or repeated
when its writer is cancelled with a write half done (over a socketpair; no Ray needed)."""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from trio_supervise.isolation.ray._actor import Outbox


async def read_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = await sock.recv(size - len(data))
        assert more
        data += more
    return data


async def test_what_waits_goes_in_one_write_in_order() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        outbox = Outbox(a)
        for i in range(50):
            await outbox.put(b"frame %02d;" % i)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            got = await read_exactly(b, 50 * 9)
            assert got == b"".join(b"frame %02d;" % i for i in range(50))
            await outbox.put(b"one more")  # alone, it goes at once
            assert await read_exactly(b, 8) == b"one more"
            nursery.cancel_scope.cancel()


async def test_a_writer_cancelled_mid_write_leaves_the_rest_first_in_line() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        frames = [bytes([i % 251]) * 4096 for i in range(200)]  # 800 KiB: past the buffers
        outbox = Outbox(a, limit=1 << 30)
        for frame in frames:
            await outbox.put(frame)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            await trio.testing.wait_all_tasks_blocked()  # the writer waits for room
            nursery.cancel_scope.cancel()
        await outbox.put(b"after")
        rest, whole = outbox.take(), b"".join(frames) + b"after"
        assert rest.endswith(b"after") and len(rest) < len(whole)
        written = await read_exactly(b, len(whole) - len(rest))  # what left before the cancel
        assert written + rest == whole  # nothing lost, nothing twice
        with socket.socket(fileno=os.dup(b.fileno())) as peek:
            peek.setblocking(False)
            with pytest.raises(BlockingIOError):  # and nothing more was written
                peek.recv(1)
