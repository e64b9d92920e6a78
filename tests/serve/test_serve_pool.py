"""WorkerPool: the batcher's flush rules, the router, admission, and replicas replacing each
other, under autojump_clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

import trio_supervise as ts
from trio_supervise.runners.mock import MockRecord, MockRunner
from trio_supervise.serve import ServeConfig
from trio_supervise.serve.pool import ModelNotFound, WorkerPool

Clock = trio.testing.MockClock


class StoppingRunner(MockRunner):
    """A MockRunner whose listed instances fail every batch with ``error`` before any chunk."""

    def __init__(self, *, fail_instances: tuple[int, ...] = (), error: Any = None, **kw: Any):
        super().__init__(**kw)
        self.fail = self.instance in fail_instances
        self.error = error

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        self.record.executes.append((self.instance, batch.seq, tuple(r.id for r in batch.requests)))
        if self.fail:
            raise self.error
        async for chunk in super().execute(batch):
            yield chunk


def config(record: MockRecord, replicas: int = 1, **extra: Any) -> ServeConfig:
    runner_args = {"record": record, "delay": 0.1, **extra.pop("runner_args", {})}
    return ServeConfig.from_dict(
        {
            "batching": {"max_batch_size": 4, "max_wait": 0.5, **extra.pop("batching", {})},
            "server": {"max_worker_restarts": 3, "within": 60, **extra.pop("server", {})},
            "workers": [
                {
                    "name": "m",
                    "runner": extra.pop("runner", "trio_supervise.runners.mock:MockRunner"),
                    "runner_args": runner_args,
                    "device": "cpu",
                    "replicas": replicas,
                    **extra,
                }
            ],
        }
    )


def req(rid: str, **kwargs: Any) -> ts.Request:
    return ts.Request(rid, f"p {rid}", ts.SamplingParams(3, seed=1), **kwargs)


async def test_the_batcher_flushes_when_full_or_after_max_wait(autojump_clock: Clock) -> None:
    record = MockRecord()
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(WorkerPool(config(record)).run)
        start = trio.current_time()
        full = [pool.generate(req(f"f{i}")) for i in range(4)]  # max_batch_size: at once
        await trio.testing.wait_all_tasks_blocked()
        assert [ids for _, _, ids in record.executes] == [("f0", "f1", "f2", "f3")]
        assert trio.current_time() == start
        late = [pool.generate(req(f"l{i}")) for i in range(2)]
        for stream in full + late:
            await stream.collect()
        assert [ids for _, _, ids in record.executes][1] == ("l0", "l1")
        nursery.cancel_scope.cancel()


async def test_a_lone_request_waits_for_nothing_and_load_makes_batches(
    autojump_clock: Clock,
) -> None:
    record = MockRecord()
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(WorkerPool(config(record)).run)
        start = trio.current_time()
        alone = pool.generate(req("alone"))  # the replica is idle: sent at once, no max_wait
        await trio.testing.wait_all_tasks_blocked()
        assert record.executes == [(0, 0, ("alone",))] and trio.current_time() == start
        # The replica is busy now (3 tokens, 0.1 s each): later ones wait up to max_wait (0.5 s)
        # for company, and go as one batch.
        await trio.sleep(0.05)
        first = pool.generate(req("b0"))
        await trio.sleep(0.2)
        second = pool.generate(req("b1"))
        for stream in (alone, first, second):
            await stream.collect()
        assert [ids for _, _, ids in record.executes] == [("alone",), ("b0", "b1")]
        assert record.executes[1][1] == 1
        nursery.cancel_scope.cancel()


async def test_a_replica_that_runs_batches_at_once_is_busy_only_when_all_are_taken(
    autojump_clock: Clock,
) -> None:
    record = MockRecord()  # three batches at once, as a RemoteRunner runs its connections'
    cfg = config(record, runner_args={"max_concurrency": 3})
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(WorkerPool(cfg).run)
        streams = []
        for i in range(3):  # room for three batches: each goes at once, alone
            streams.append(pool.generate(req(f"w{i}")))
            await trio.testing.wait_all_tasks_blocked()
            assert record.executes[-1][2] == (f"w{i}",)
            await trio.sleep(0.01)
        # All three taken: the next ones wait up to max_wait (0.5 s) for company.
        streams.append(pool.generate(req("x0")))
        await trio.sleep(0.1)
        streams.append(pool.generate(req("x1")))
        for stream in streams:
            await stream.collect()
        assert [ids for _, _, ids in record.executes] == [("w0",), ("w1",), ("w2",), ("x0", "x1")]
        nursery.cancel_scope.cancel()


async def test_the_router_spreads_load_over_replicas(autojump_clock: Clock) -> None:
    record = MockRecord()
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(WorkerPool(config(record, replicas=2)).run)
        streams = []
        for i in range(8):
            streams.append(pool.generate(req(f"r{i}")))
            await trio.sleep(0.6)  # past max_wait: one flush per request
        for stream in streams:
            await stream.collect()
        instances = [instance for instance, _, _ in record.executes]
        assert set(instances) == {0, 1} and abs(instances.count(0) - instances.count(1)) <= 2
        nursery.cancel_scope.cancel()


async def test_a_stopped_replicas_idempotent_requests_go_to_another(autojump_clock: Clock) -> None:
    record = MockRecord()
    cfg = config(
        record,
        replicas=2,
        runner="tests.serve.test_serve_pool:StoppingRunner",
        runner_args={"fail_instances": (0,), "error": ts.Unrecoverable("no driver")},
    )
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(WorkerPool(cfg).run)
        pool.replicas["m"][1].worker.statistics()  # both ready; route the first flush to #0
        moved = pool.generate(req("moved"))
        stays = pool.generate(req("stays", idempotent=False))
        _, _text, reason, _ = await moved.collect()
        assert reason is ts.FinishReason.LENGTH
        with pytest.raises(ts.Unrecoverable):
            await stays.collect()
        states = [r.worker.state.value for r in pool.replicas["m"]]
        assert states == [ts.WorkerState.STOPPED, ts.WorkerState.READY]
        assert (await pool.generate(req("after")).collect())[2] is ts.FinishReason.LENGTH
        nursery.cancel_scope.cancel()


async def test_a_failed_worker_is_replaced_in_its_slot(autojump_clock: Clock) -> None:
    record = MockRecord()
    cfg = config(
        record,
        runner="tests.serve.test_serve_pool:StoppingRunner",
        runner_args={"fail_instances": (0,), "error": KeyError("escalates")},
    )
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(WorkerPool(cfg).run)
        first = pool.replicas["m"][0].worker
        with pytest.raises(ts.RunnerError):
            await pool.generate(req("a", idempotent=False)).collect()
        await trio.sleep(1)
        replica = pool.replicas["m"][0]
        assert replica.worker is not first and replica.restarts == 1
        assert (await pool.generate(req("b")).collect())[2] is ts.FinishReason.LENGTH
        nursery.cancel_scope.cancel()


async def test_admission_models_deadlines_and_draining(autojump_clock: Clock) -> None:
    record = MockRecord()
    cfg = config(record, max_pending=2, batching={"max_wait": 5.0, "max_batch_size": 8})
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(WorkerPool(cfg).run)
        with pytest.raises(ModelNotFound, match=r"^model 'x' is not served here; models: \['m'\]$"):
            pool.generate(req("a"), "x")
        first = pool.generate(req("a"))
        assert first.request.deadline == trio.current_time() + cfg.server.request_timeout
        pool.generate(req("b"))
        with pytest.raises(ts.Backpressure, match=r"the queue of 'm' holds 2 requests") as info:
            pool.generate(req("c"))
        assert info.value.retry_after is not None and info.value.retry_after > 0
        await first.collect()
        await pool.drain()
        with pytest.raises(ts.WorkerStopped, match=r"^the server is draining$"):
            pool.generate(req("d"))
        nursery.cancel_scope.cancel()
