"""Standby spares alone (``isolation/_spares.py``): one parked at a time, and a spare that cannot
be made or parked only costs the standby, never the worker."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_supervise.isolation._spares import Spares


class Park:
    """Spares of plain ints: made in order, parked, some refused."""

    def __init__(self, *, make_fails: bool = False, park_fails: bool = False) -> None:
        self.made = 0
        self.retired: list[int] = []
        self.make_fails = make_fails
        self.park_fails = park_fails

    async def make(self) -> int:
        await trio.lowlevel.checkpoint()
        if self.make_fails:
            raise OSError("no process can be started")
        self.made += 1
        return self.made

    async def park(self, spare: int) -> None:
        await trio.lowlevel.checkpoint()
        if self.park_fails:
            raise RuntimeError(f"spare {spare} answered Fatal")

    async def retire(self, spare: int) -> None:
        self.retired.append(spare)


def spares(nursery: trio.Nursery, park: Park, alive: bool = True) -> Spares[int]:
    return Spares(
        "w", "process", nursery, make=park.make, park=park.park, alive=lambda _: alive,
        retire=park.retire,
    )  # fmt: skip


async def test_one_spare_is_parked_and_taken() -> None:
    park = Park()
    async with trio.open_nursery() as nursery:
        standby = spares(nursery, park)
        standby.replenish()
        standby.replenish()  # parking already: no second one
        await standby.parked.wait()
        assert standby.take() == 1 and standby.take() is None
        assert park.made == 1


async def test_a_dead_spare_is_retired_not_taken() -> None:
    park = Park()
    async with trio.open_nursery() as nursery:
        standby = spares(nursery, park, alive=False)
        standby.replenish()
        await standby.parked.wait()
        assert standby.take() is None
        await trio.testing.wait_all_tasks_blocked()
    assert park.retired == [1]


@pytest.mark.parametrize("fault", ["make", "park"])
async def test_a_spare_that_cannot_be_had_costs_only_the_standby(
    fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    park = Park(make_fails=fault == "make", park_fails=fault == "park")
    with caplog.at_level(logging.ERROR, logger="trio_supervise"):
        async with trio.open_nursery() as nursery:  # the nursery (the worker's) is not failed
            standby = spares(nursery, park)
            standby.replenish()
            await trio.testing.wait_all_tasks_blocked()
            assert standby.take() is None
            standby.replenish()  # it tries again at the next replenish
            await trio.testing.wait_all_tasks_blocked()
    what = "started" if fault == "make" else "parked"
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"w: a standby process could not be {what}"] * 2
    assert park.retired == ([] if fault == "make" else [1, 2])
