"""Standby: one spare (a child process, a Ray actor) parked in the background for the next
tier incarnation, its runner built and its device opened (and loaded too, with preload).

A :class:`Spares` is given how to make a spare, how to park it (its ``Init(park=True)``
answered with ``Parked``), how to tell a live one and how to retire one; the process and the
Ray homes each keep one, in the nursery that outlives their tier incarnations.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, final

import trio

__all__ = ["Spares"]

logger = logging.getLogger("trio_supervise")

T = TypeVar("T")


@final
class Spares(Generic[T]):
    """At most one parked spare, and the task that parks the next one.

    Args:
        name: the worker's, for logs.
        kind: what a spare is (``"process"``, ``"actor"``), for logs.
        nursery: where the parking task runs (it outlives every tier incarnation).
        make: a fresh spare, not parked yet.
        park: park it (it answers ``Parked``); raises if it cannot.
        alive: whether a parked spare can still take over.
        retire: stop a spare that will never be used.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        nursery: trio.Nursery,
        *,
        make: Callable[[], Awaitable[T]],
        park: Callable[[T], Awaitable[object]],
        alive: Callable[[T], bool],
        retire: Callable[[T], Awaitable[None]],
    ) -> None:
        self.name = name
        self.kind = kind
        self._nursery = nursery
        self._make = make
        self._park = park
        self._alive = alive
        self._retire = retire
        self.spare: T | None = None
        """The parked spare, if any."""
        self.parked = trio.Event()
        """Set (and replaced) each time a spare is parked."""
        self._parking = False

    def take(self) -> T | None:
        """The parked spare, if a live one is ready; a dead one is retired."""
        spare, self.spare = self.spare, None
        if spare is not None and not self._alive(spare):
            self._nursery.start_soon(self._retire, spare)
            return None
        return spare

    def replenish(self) -> None:
        """Start parking the next spare in the background, unless one is parked or parking."""
        if self.spare is None and not self._parking:
            self._parking = True
            self._nursery.start_soon(self._park_one)

    async def _park_one(self) -> None:
        """Make and park one spare. Standby only makes restarts faster: a spare that cannot be
        made or parked is logged, and the next restart starts a fresh one as if there were no
        standby (it never takes the worker down)."""
        try:
            try:
                spare = await self._make()
            except Exception:
                logger.exception("%s: a standby %s could not be started", self.name, self.kind)
                return
            try:
                await self._park(spare)
            except Exception:
                logger.exception("%s: a standby %s could not be parked", self.name, self.kind)
                with trio.CancelScope(shield=True):
                    await self._retire(spare)
                return
            self.spare = spare
            self.parked.set()
            self.parked = trio.Event()
        finally:
            self._parking = False
