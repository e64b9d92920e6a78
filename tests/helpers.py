"""Small helpers shared by the Trio driver tests."""

from __future__ import annotations

import trio

import trio_supervise as ts


class Recorder:
    """An ``on_event`` callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[ts.SupervisionEvent] = []

    def __call__(self, event: ts.SupervisionEvent) -> None:
        self.events.append(event)

    def kinds(self, child: str | None = None) -> list[str]:
        return [e.kind.name for e in self.events if child is None or e.child == child]

    def times(self, kind: ts.EventKind, child: str | None = None) -> list[float]:
        return [
            e.time for e in self.events if e.kind is kind and (child is None or e.child == child)
        ]

    def timeline(self, child: str | None = None) -> list[tuple[float, str, int]]:
        return [
            (e.time, e.kind.name, e.generation)
            for e in self.events
            if child is None or e.child == child
        ]


def all_tasks() -> list[trio.lowlevel.Task]:
    """Every task in this run, walking the task tree from the root."""
    found = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


def always(directive: ts.Directive, max_restarts: int = 100, within: float = 1.0) -> ts.Policy:
    """A policy whose decider always answers ``directive``."""
    return ts.Policy(
        ts.rules(default=directive), ts.RestartIntensity(max_restarts, within), ts.Backoff.none()
    )


class Boom(Exception):
    """A failure for tests."""
