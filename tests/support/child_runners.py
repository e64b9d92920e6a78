"""Runners for process-isolation tests: imported by the child process, by import path.

Each misbehaves once, the first time, gated by a marker file (a trio.Event cannot cross a
process boundary), so the restarted child behaves.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trio_supervise as ts
from tests.support.helpers import FaultRunner
from trio_supervise.runners.mock import MockRunner


def _first_time(marker: str) -> bool:
    """True once per marker file: creates it."""
    try:
        with open(marker, "x"):
            return True
    except FileExistsError:
        return False


class OnceRunner(MockRunner):
    """MockRunner that, on the first batch of the first incarnation, misbehaves as told."""

    def __init__(self, *, marker: str, fault: str, after: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker = marker
        self.fault = fault
        self.after = after

    async def load(self, device: Any) -> None:
        print(f"loading on {device.name}", flush=True)  # stdout must not corrupt the protocol
        if self.fault == "load" and _first_time(self.marker):
            raise ts.ContextPoisoned("load failed in the child")
        await super().load(device)

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        count = 0
        async with contextlib.aclosing(super().execute(batch)) as chunks:
            async for chunk in chunks:
                yield chunk
                count += 1
                if count == self.after and _first_time(self.marker):
                    if self.fault == "stall":
                        # Nothing more from this incarnation, though it answers heartbeats: a
                        # test that ends it mid-stream cannot lose the race to the stream's end.
                        await trio.sleep_forever()
                    if self.fault == "hang":
                        # What it yielded has left (a Ray actor writes its frames from a task of
                        # its own) before it blocks the loop.
                        await trio.testing.wait_all_tasks_blocked()
                    self._misbehave()

    def _misbehave(self) -> None:
        if self.fault == "exit":
            os._exit(1)
        if self.fault == "hang":
            time.sleep(3600)  # blocks the child's event loop: no heartbeat either
        if self.fault == "garbage":
            fd = int(sys.argv[-1])
            os.write(fd, b"\xff\xff\xff\xffgarbage that is not a frame")
        if self.fault == "print":
            print("a runner's print goes to the parent's log, not into the frames")
        if self.fault == "poison":
            raise ts.ContextPoisoned("poisoned in the child")
        if self.fault == "foreign":
            raise KeyError("a class the parent does not know")
        if self.fault == "system_exit":
            raise SystemExit(3)  # ends the runner's event loop, not only its batch


def failing_factory(**kwargs: Any) -> MockRunner:
    raise ValueError(f"factory got bad arguments: {sorted(kwargs)}")


def marker_in(tmp_path: Path) -> str:
    return str(tmp_path / "fault-fired")


class PoliteRunner(MockRunner):
    """A runner with its own policy: OutOfMemory restarts it; 5 restarts a minute."""

    default_policy = ts.Policy(
        ts.rules(
            ts.on(ts.OutOfMemory, ts.ContextPoisoned, ts.Directive.RESTART),
            ts.on(ValueError, ts.Directive.STOP),
        ),
        ts.RestartIntensity(5, 60.0),
        ts.Backoff(0.1, 1.0),
    )


class ForeignPolicyRunner(MockRunner):
    """A policy over a class the parent could only get by importing the runner's module."""

    class Local(Exception):
        pass

    default_policy = ts.Policy(ts.rules(ts.on(Local, ts.Directive.RESUME)))


class ScriptedRunner(FaultRunner):
    """tests.support.helpers.FaultRunner with its faults given as plain data, so they cross to a
    child: ``faults = {"seq": [after, kind]}``, kind one of poison, oom, hang, stop, bad_chunk."""

    def __init__(self, *, faults: dict[str, list[Any]] | None = None, **kwargs: Any) -> None:
        built = {}
        for seq, (after, kind) in (faults or {}).items():
            what: Any = {
                "poison": ts.ContextPoisoned("poisoned"),
                "oom": ts.OutOfMemory("no room", retry_after=0.25),
                "hang": "hang",
                "stop": ts.Unrecoverable("no device"),
                "bad_chunk": ("error", None, ts.BadRequest("bad prompt")),
            }[kind]
            built[int(seq)] = (after, what)
        super().__init__(batch_faults=built, **kwargs)


class StickyOnceRunner(MockRunner):
    """MockRunner whose first batch (the first time, by marker) fails with a sticky CUDA error,
    an illegal address: only a fresh process can use the device again."""

    def __init__(self, *, marker: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker = marker

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        async with contextlib.aclosing(super().execute(batch)) as chunks:
            async for chunk in chunks:
                yield chunk
                if _first_time(self.marker):
                    from cupy_backends.cuda.api.runtime import CUDARuntimeError

                    raise CUDARuntimeError(700)  # cudaErrorIllegalAddress
