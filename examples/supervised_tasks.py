"""A flaky task kept alive by a policy, and a small supervision tree, printing every event.

Run it: ``python examples/supervised_tasks.py`` (under a second of real time).
"""

from __future__ import annotations

import random
from typing import Any

import trio

import trio_supervise as ts
from trio_supervise import Backoff, ChildSpec, Directive, Policy, RestartIntensity, on, rules


class FeedDropped(Exception):
    """The upstream feed went away; reconnecting fixes it."""


def print_event(event: ts.SupervisionEvent) -> None:
    print(f"{event.time - START:6.3f}s  {event.describe()}")


START = 0.0
POLICY = Policy(
    rules(on(FeedDropped, Directive.RESTART), on(ts.Unrecoverable, Directive.STOP)),
    RestartIntensity(5, 1.0),
    Backoff(0.01, 0.08, jitter=0.2),  # 10 ms, 20 ms, 40 ms ... (minus up to 20%)
)


def make_poller(seed: int) -> Any:
    """A poller that drops its feed now and then, and gives up for good on its 5th connection."""
    rng = random.Random(seed)
    connections = 0

    async def poller(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal connections
        connections += 1
        task_status.started()  # connected: ready
        if connections == 5:
            raise ts.Unrecoverable("feed retired upstream")
        await trio.sleep(rng.uniform(0.01, 0.05))
        raise FeedDropped(f"connection {connections} dropped")

    return poller


BEATS: list[float] = []


async def heartbeat(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started("beating")
    while True:
        BEATS.append(trio.current_time())
        await trio.sleep(0.1)


async def main() -> list[ts.SupervisionEvent]:
    global START
    START = trio.current_time()
    events: list[ts.SupervisionEvent] = []

    def on_event(event: ts.SupervisionEvent) -> None:
        events.append(event)
        print_event(event)

    print("-- one flaky task under supervised():")
    run = ts.supervised(make_poller(seed=1), POLICY, name="poller", seed=1, on_event=on_event)
    await run()  # returns when the policy says STOP

    print("-- a supervisor with a heartbeat and a flaky poller (ONE_FOR_ONE):")
    supervisor = ts.Supervisor(
        "app",
        ts.Strategy.ONE_FOR_ONE,
        RestartIntensity(10, 1.0),
        children=[
            ChildSpec("heartbeat", heartbeat, POLICY),
            ChildSpec("poller", make_poller(seed=2), POLICY, restart=ts.RestartType.TRANSIENT),
        ],
        on_event=on_event,
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(supervisor.run)
        await trio.sleep(0.5)
        for child in handle.which_children():
            print(f"  {child.name}: {child.status.value}, incarnation {child.generation}")
        nursery.cancel_scope.cancel()  # ordered shutdown: poller (stopped already), heartbeat
    return events


if __name__ == "__main__":
    trio.run(main)
