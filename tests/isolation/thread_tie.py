"""A runner that says whether its child process is tied to the thread that started it.

Imported by the worker's child process, by import path (it gets the parent's sys.path).
"""

from __future__ import annotations

import ctypes
from typing import Any

import trio

from trio_supervise.runners.mock import MockRunner

PR_GET_PDEATHSIG = 2


def parent_death_signal() -> int:
    """This process's parent-death signal (``prctl(PR_GET_PDEATHSIG)``; 0: none, Linux only)."""
    signal = ctypes.c_int(-1)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(signal), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_GET_PDEATHSIG) failed")
    return signal.value


class ParentDeathSignalRunner(MockRunner):
    """A MockRunner whose load writes the child's parent-death signal to ``report``."""

    def __init__(self, *, report: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.report = report

    async def load(self, device: Any) -> None:
        await trio.Path(self.report).write_text(str(parent_death_signal()))
        await super().load(device)
