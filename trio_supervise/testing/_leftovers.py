"""What a chaos run leaves behind: the tasks and child processes alive now, and a wait for the
tasks that are about to end (the census behind the ``no_leftovers`` invariant)."""

from __future__ import annotations

import os
from typing import final

import trio

__all__ = ["child_pids", "task_count", "wait_for_tasks"]


def child_pids() -> set[int]:
    """Pids of this process's children (Linux /proc; empty elsewhere)."""
    me = str(os.getpid())
    pids: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                pids.add(int(entry))
    return pids


def task_count() -> int:
    """How many tasks this Trio run has, system tasks included."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    count = 0
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


@final
class _TaskExits(trio.abc.Instrument):
    """Sets ``exited`` each time a task of the run exits (Trio calls ``task_exited`` once the
    task is out of its nursery); it only looks, it changes nothing of the run."""

    def __init__(self) -> None:
        self.exited = trio.Event()

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.exited.set()


async def wait_for_tasks(count: int, grace: float) -> None:
    """Return once the run is down to ``count`` tasks, or after ``grace`` seconds if it is not:
    each task that exits wakes this to count again (tasks that only need a moment to see their
    connection closed, such as a server's handlers for a runner's HTTP connections in this same
    process, end within the grace)."""
    exits = _TaskExits()
    trio.lowlevel.add_instrument(exits)
    try:
        with trio.move_on_after(grace):
            while task_count() > count:
                await exits.exited.wait()
                exits.exited = trio.Event()
    finally:
        trio.lowlevel.remove_instrument(exits)
