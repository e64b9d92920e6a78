"""One Ray actor from the parent's side: its handle, where it runs, and whether it died.

Ray reports an actor's death as an error of any call to it (``ActorDiedError``,
``ActorUnavailableError``); :func:`child_died` says it as the :class:`ChildDied` that the
worker's policy knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

import trio

from ..._errors import ChildDied

__all__ = ["RayActor", "child_died"]


@final
class RayActor:
    """One actor, from the parent's side: its handle, where it runs, whether it died."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle
        self.name = name  # the worker's, for errors
        self.identity: dict[str, Any] = {}  # name; actor_id, node_id, node_ip, pid once started
        self.frames_at: tuple[str, int, bytes] | None = None  # its frame listener and key
        self.dead: BaseException | None = None
        self.ray_says: Exception | None = None  # the error of its watch call, once Ray reports
        self.reported = trio.Event()  # set then
        self.retired = False
        self.on_death: Callable[[BaseException], None] = lambda error: None

    def __repr__(self) -> str:
        return f"<RayActor {self.identity.get('actor_id')} node={self.identity.get('node_ip')}>"

    def reported_dead(self, exc: Exception) -> None:
        """Its ``watch`` call failed: Ray's own word that it is gone (or its node)."""
        self.ray_says = exc
        self.reported.set()
        self.died(exc)

    def died(self, exc: Exception) -> None:
        """Its ``watch`` (or another call) failed: Ray says it is gone."""
        if self.dead is None and not self.retired:
            self.dead = child_died(self.name, exc)
            self.on_death(self.dead)


def child_died(name: str, exc: BaseException) -> ChildDied:
    """Ray's error for a call to the actor of worker ``name``, as a :class:`ChildDied`."""
    if isinstance(exc, ChildDied):
        return exc
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    error = ChildDied(f"the Ray actor of {name!r} died: {type(exc).__name__}: {first}")
    error.__cause__ = exc
    return error
