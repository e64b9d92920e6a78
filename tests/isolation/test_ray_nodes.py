"""Ray isolation across nodes: the session's cluster (tests/conftest.py) gets nodes of its own in
each test, with a custom resource that only they hold, and loses them as a crash would
(``remove_node(allow_graceful=False)``: SIGKILL to the node's daemons and workers).

On the real clock (Ray works outside the event loop), each test bounded by fail_after; every wait
is for an event (a chunk, a state, a supervision event), not for a time. The times from a node's
loss to what the worker sees are printed (``pytest -s``) for docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

ray = pytest.importorskip("ray")

import trio_supervise as ts  # noqa: E402
from tests.support.helpers import Recorder, logged  # noqa: E402
from trio_supervise import Request, SamplingParams, WorkerState  # noqa: E402
from trio_supervise.runners.mock import text_of, token_at  # noqa: E402

pytestmark = pytest.mark.ray

MOCK = "trio_supervise.runners.mock:MockRunner"
RUNNERS = "tests.support.child_runners:OnceRunner"
_names = itertools.count()


def req(rid: str, max_tokens: int) -> Request:
    return Request(rid, f"prompt {rid}", SamplingParams(max_tokens=max_tokens, seed=3))


def stall_after_two(tmp_path: Path) -> dict[str, Any]:
    return {"marker": str(tmp_path / "fired"), "fault": "stall", "after": 2, "delay": 0.05}


def fault_free(rid: str, max_tokens: int) -> str:
    request = req(rid, max_tokens)
    return "".join(text_of(token_at(request, i, 50_000)) for i in range(max_tokens))


class Nodes:
    """Nodes this test adds to the session's cluster, each holding ``units`` of one resource
    that no other node has; removed at the end if still there."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.resource = f"ts_nodes_{next(_names)}"
        self.added: list[Any] = []

    def add(self, units: float = 1.0) -> Any:
        node = self.cluster.add_node(num_cpus=1, resources={self.resource: units})
        self.added.append(node)
        return node

    def kill(self, node: Any) -> float:
        """Remove ``node`` as a crash would; the time it went (trio's clock)."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.added.remove(node)
        return trio.current_time()

    def holding(self, node_id: str) -> Any:
        (node,) = [n for n in self.added if n.node_id == node_id]
        return node

    def ray_options(self, units: float = 1.0) -> dict[str, Any]:
        """An actor that only these nodes can hold."""
        return {"num_cpus": 0, "resources": {self.resource: units}}


@pytest.fixture
def nodes(ray_cluster: Any) -> Iterator[Nodes]:
    added = Nodes(ray_cluster)
    try:
        yield added
    finally:
        for node in list(added.added):
            ray_cluster.remove_node(node)


async def test_a_node_lost_mid_stream_restarts_the_actor_elsewhere_and_the_stream_goes_on(
    nodes: Nodes, tmp_path: Path
) -> None:
    nodes.add()
    nodes.add()
    events = Recorder()
    with trio.fail_after(120):
        async with ts.open_worker(
            # The first actor stalls after two chunks: the stream can only go on elsewhere.
            RUNNERS, runner_args=stall_after_two(tmp_path), device="cpu", isolation="ray",
            ray_options=nodes.ray_options(), on_event=events,
        ) as worker:  # fmt: skip
            first = worker.placement()
            stream = worker.generate(req("a", 40))
            head = [await stream.__anext__(), await stream.__anext__()]
            lost = nodes.kill(nodes.holding(first["node_id"]))
            rest, arrived = [], []
            async for chunk in stream:  # chunks the lost actor sent before it died come first
                rest.append(chunk)
                arrived.append(trio.current_time())
            text = "".join(c.text for c in head + rest)
            assert text == fault_free("a", 40)  # no token lost, none duplicated
            # Ray may place the fresh actor on the lost node before its health checks declare
            # it dead (about 2 s here): that one dies too, and the next goes elsewhere.
            deaths = worker.restart_causes["ChildDied"]
            assert set(worker.restart_causes) == {"ChildDied"} and deaths in (1, 2)
            assert 1 <= worker.statistics().continued <= deaths
            assert worker.placement()["node_id"] not in (None, first["node_id"])
    died = events.times(ts.EventKind.FAILED)[0]
    ready = events.times(ts.EventKind.READY)[-1]  # the actor that served the rest
    assert lost < died < ready < arrived[-1]
    next_token_at = min(t for t in arrived if t > ready)  # the fresh actor's first
    print(
        f"\nnode lost -> ChildDied {died - lost:.2f}s, -> READY {ready - lost:.2f}s, "
        f"-> next token {next_token_at - lost:.2f}s"
    )


async def test_a_replica_pinned_to_a_lost_node_waits_for_one_while_the_other_serves(
    nodes: Nodes,
) -> None:
    """Two replicas, one unit of the resource each on two nodes. The node of one is lost: its
    restarted actor has nowhere to go, so each load is a ``HungWorker`` at readiness_timeout;
    the pool sends every request to the other replica meanwhile; once a node with the resource
    joins, the replica comes back."""
    from trio_supervise.serve import ServeConfig
    from trio_supervise.serve.pool import WorkerPool

    nodes.add()
    nodes.add()
    config = ServeConfig.from_dict({
        "server": {"max_worker_restarts": 100},
        "batching": {"max_wait": 0.001},
        "workers": [{
            "name": "m", "runner": MOCK, "device": "cpu", "isolation": "ray", "replicas": 2,
            "ray_options": nodes.ray_options(), "readiness_timeout": 15.0,
            "policy": {"max_restarts": 100, "within": 60},
        }],
    })  # fmt: skip
    pool = WorkerPool(config)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            lost_replica, other = pool.replicas["m"]
            assert lost_replica.worker is not None and other.worker is not None
            node = lost_replica.worker.placement()["node_id"]
            assert node != other.worker.placement()["node_id"]
            worker = lost_replica.worker
            with logged("failed: HungWorker") as hung:  # a load with nowhere to go
                nodes.kill(nodes.holding(node))
                await hung.wait()
            # Ray may place the next actor on the lost node before its health checks declare
            # the node dead (about 2 s here, after the ~1.7 s of ChildDied): that one dies too.
            assert worker.restart_causes["ChildDied"] in (1, 2)
            for i in range(5):  # served meanwhile, by the other replica
                stream = pool.generate(req(f"r{i}", 3))
                _, text, _, _ = await stream.collect()
                assert text == fault_free(f"r{i}", 3)
                assert stream.replica is other
            nodes.add()  # a node with the resource joins: the replica comes back
            await worker.state.wait_value(WorkerState.READY)
            assert worker.placement()["node_id"] not in (None, node)
            nursery.cancel_scope.cancel()


async def test_a_spare_on_the_lost_node_is_not_taken(nodes: Nodes) -> None:
    """The active actor and its standby spare share a node that is lost: the restart takes a
    fresh actor on another node, never the dead spare."""
    first_node = nodes.add(units=2.0)
    events = Recorder()
    with trio.fail_after(120):
        async with ts.open_worker(
            MOCK, device="cpu", isolation="ray", standby=True, on_event=events,
            ray_options=nodes.ray_options(),
        ) as worker:  # fmt: skip
            actors = worker._children
            assert actors is not None
            while actors.spare is None:
                await actors.spare_parked.wait()
            spare = actors.spare
            assert spare.identity["node_id"] == first_node.node_id
            nodes.add(units=2.0)  # where the next actor can go
            nodes.kill(first_node)
            while True:
                await worker.state.wait_value(lambda s: s is not WorkerState.READY)
                await worker.state.wait_value(WorkerState.READY)
                tier = worker._tier
                assert tier is not None and tier.home.actor is not spare  # type: ignore[attr-defined]
                if worker.placement()["node_id"] != first_node.node_id:
                    break
                # A fresh actor that Ray placed on the lost node before declaring it dead
                # (about 2 s here): it dies with it, and the next one goes elsewhere.
            assert await worker.generate(req("b", 3)).collect() is not None
    # One restart; two when a fresh actor landed on the lost node first. The dead spare was
    # never READY: each READY above had another actor.
    assert events.kinds().count("FAILED") in (1, 2)


async def test_every_request_gets_one_outcome_when_a_node_is_lost_under_load(
    nodes: Nodes,
) -> None:
    """The chaos harness through a Ray tier over two nodes (a third one spare), with the loss of
    the actor's node as the fault: once 40 requests have ended, the node goes."""
    from trio_supervise.testing import FaultPlan, run_chaos

    for _ in range(3):  # all before the run: a node added during it is a child process it made
        nodes.add()
    workers: list[ts.Worker] = []
    ended = 0
    forty = trio.Event()

    def progress() -> None:
        nonlocal ended
        ended += 1
        if ended == 40:
            forty.set()

    @contextlib.asynccontextmanager
    async def factory(plan: FaultPlan) -> AsyncIterator[ts.Worker]:
        async with ts.open_worker(
            MOCK, runner_args={"delay": 0.002}, device="cpu", isolation="ray",
            ray_options=nodes.ray_options(), max_pending=1000,
        ) as worker:  # fmt: skip
            workers.append(worker)
            yield worker

    async def lose_a_node() -> None:
        await forty.wait()
        (worker,) = workers  # the run with the fault: the fault-free one comes after
        node = nodes.holding(worker.placement()["node_id"])
        nodes.kill(node)  # SIGKILLs, at once

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lose_a_node)
            report = await run_chaos(
                factory, requests=200, concurrency=16, plan=FaultPlan.none(), seed=7,
                timeout=100.0, on_progress=progress, fault_errors=(ts.ChildDied,),
            )  # fmt: skip
    assert report.ok, report.violations
    assert report.restarts >= 1 and report.compared == 200
    assert workers[0].restart_causes["ChildDied"] >= 1
