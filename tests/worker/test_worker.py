"""The two-tier worker under autojump_clock: outcomes of every kind of failure."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_supervise as ts
from tests.support.helpers import FaultRunner, failing_factory
from tests.worker.common import expected_text, outcome, req, worker_args
from trio_supervise import FinishReason, WorkerState
from trio_supervise.runners.mock import MockRecord, MockRunner, token_at

Clock = trio.testing.MockClock


async def test_serves_deterministic_tokens_with_usage(autojump_clock: Clock) -> None:
    async with ts.open_worker(MockRunner, runner_args={"delay": 1.0}, device="cpu") as worker:
        request = req("a", max_tokens=5)
        tokens, text, reason, usage = await worker.generate(request).collect()
        assert text == expected_text(request)
        assert tokens == tuple(token_at(request, i, 50_000) for i in range(5))
        assert (reason, usage) == (FinishReason.LENGTH, ts.Usage(2, 5))
        assert trio.current_time() == 4.0  # five steps, four sleeps between them
        assert worker.generation == 1
        assert worker.state.value is WorkerState.READY
    assert worker.state.value is WorkerState.STOPPED


async def test_open_requests_and_concurrency_for_a_router(autojump_clock: Clock) -> None:
    args = {"delay": 1.0, "max_concurrency": 3}
    async with ts.open_worker(MockRunner, runner_args=args, device="cpu") as worker:
        assert worker.concurrency == 3 and worker.open_requests() == 0
        streams = [worker.generate(req(f"r{i}", max_tokens=2)) for i in range(4)]
        await trio.testing.wait_all_tasks_blocked()
        assert worker.open_requests() == 4  # three batches running, one waiting
        assert worker.running_requests() == 3
        for stream in streams:
            await stream.collect()
        assert worker.open_requests() == 0 and worker.running_requests() == 0


@pytest.mark.parametrize("after", [0, 2])
async def test_poison_restarts_the_tier_and_reruns_what_produced_nothing(
    after: int, autojump_clock: Clock
) -> None:
    record = MockRecord()
    faults = {0: (after, ts.ContextPoisoned("illegal address"))}
    args = worker_args(record, batch_faults=faults, max_concurrency=2)
    async with ts.open_worker(FaultRunner, **args) as worker:
        handle = worker
        # Continuation off: the rule for a request caught mid-stream that may not be continued
        # (test_continuation.py has the continued ones).
        off = {"continuation": "off"}
        first = worker.submit(
            ts.Batch([req("a", **off), req("b", **off), req("c", idempotent=False)])
        )
        queued = worker.generate(req("d"))
        results = [await outcome(s) for s in (*first, queued)]
        assert worker is handle and worker.generation == 2
        assert record.instances == 2 and record.closes == 1
        if after == 0:  # nothing was produced: the idempotent ones run again, at the head
            assert results[:2] == [("ok", expected_text(req("a"))), ("ok", expected_text(req("b")))]
            assert worker.statistics().continued == 0
            # Re-run at the head: before d (or with it, when d was dispatched beside them on
            # the first runner and cancelled before it produced).
            reruns = [ids for instance, _, ids in record.executes if instance == 1]
            assert reruns[0][:2] == ("a", "b")
        else:  # a and b got a chunk each before the fault: they cannot run again
            assert [ids for instance, _, ids in record.executes if instance == 1] == [("d",)]
            assert all(kind == "error" for kind, _ in results[:2])
            assert all(isinstance(e, ts.ContextPoisoned) and e.retryable for _, e in results[:2])
        kind, error = results[2]  # not idempotent: never re-run
        assert kind == "error" and isinstance(error, ts.ContextPoisoned)
        assert results[3] == ("ok", expected_text(req("d")))  # waited in the queue, then served
        errors = [e for k, e in results if k == "error"]
        assert len({id(e) for e in errors}) == len(errors)  # each request its own object
        assert all(e.__cause__ is faults[0][1] for e in errors)


async def test_chunks_already_delivered_come_before_the_error(autojump_clock: Clock) -> None:
    record = MockRecord()
    args = worker_args(record, batch_faults={0: (3, ts.ContextPoisoned("sticky"))})
    async with ts.open_worker(FaultRunner, **args) as worker:
        stream = worker.generate(req("a", max_tokens=10, continuation="off"))
        got = []
        with pytest.raises(ts.ContextPoisoned):
            async for chunk in stream:
                got.append(chunk.text)
        assert "".join(got) == expected_text(req("a", max_tokens=10))[: len("".join(got))]
        assert len("".join(got).split()) == 3


async def test_a_request_runs_at_most_max_attempts(autojump_clock: Clock) -> None:
    record = MockRecord()
    poison = {seq: (0, ts.ContextPoisoned(f"p{seq}")) for seq in range(3)}
    args = worker_args(record, batch_faults=poison)
    async with ts.open_worker(FaultRunner, max_attempts=2, **args) as worker:
        kind, error = await outcome(worker.generate(req("a")))
        assert kind == "error" and str(error) == "p1"
        assert [ids for _, _, ids in record.executes] == [("a",), ("a",)]


async def test_the_fourth_poisoning_within_a_minute_gives_up(autojump_clock: Clock) -> None:
    record = MockRecord()
    poison = {seq: (1, ts.ContextPoisoned(f"p{seq}")) for seq in range(4)}
    streams: list[ts.RequestStream] = []
    outcomes: list[tuple[str, object]] = []
    with trio.fail_after(100), pytest.raises(ts.RestartIntensityExceeded) as info:
        async with ts.open_worker(
            FaultRunner, **worker_args(record, batch_faults=poison)
        ) as worker:
            for n in range(4):
                streams.append(worker.generate(req(f"r{n}", continuation="off")))
                outcomes.append(await outcome(streams[-1]))
            await trio.sleep_forever()
    assert str(info.value.__cause__) == "p3"
    # The give-up failed the fourth request, then cancelled the body that was reading it.
    assert [type(error) for _, error in outcomes[:3]] == [ts.ContextPoisoned] * 3
    assert worker.statistics().failed == 4
    assert worker.state.value is WorkerState.FAILED
    assert record.instances == 4


async def test_oom_fails_only_its_batch_and_the_runner_goes_on(autojump_clock: Clock) -> None:
    record = MockRecord()
    oom = ts.OutOfMemory("batch too big", retry_after=0.5)
    args = worker_args(record, batch_faults={0: (1, oom)})
    async with ts.open_worker(FaultRunner, **args) as worker:
        first = worker.submit(ts.Batch([req("a"), req("b")]))
        second = worker.generate(req("c"))
        results = [await outcome(s) for s in (*first, second)]
        assert [k for k, _ in results] == ["error", "error", "ok"]
        for _, error in results[:2]:
            assert isinstance(error, ts.OutOfMemory) and error.retryable
            assert error.retry_after == 0.5 and error.__cause__ is oom
        assert worker.generation == 1 and record.instances == 1  # the same runner
        assert [instance for instance, _, _ in record.executes] == [0, 0]


async def test_a_chunk_with_error_fails_only_its_request(autojump_clock: Clock) -> None:
    record = MockRecord()
    bad = ts.BadRequest("prompt too long for the model")
    args = worker_args(record, batch_faults={0: (1, ("error", "b", bad))})
    async with ts.open_worker(FaultRunner, **args) as worker:
        a, b = worker.submit(ts.Batch([req("a"), req("b")]))
        assert await outcome(a) == ("ok", expected_text(req("a")))
        kind, error = await outcome(b)
        assert kind == "error" and isinstance(error, ts.BadRequest) and error is not bad
        assert worker.generation == 1


async def test_unrecoverable_stops_the_worker_and_nothing_hangs(autojump_clock: Clock) -> None:
    record = MockRecord()
    args = worker_args(record, batch_faults={0: (1, ts.Unrecoverable("no driver"))})
    async with ts.open_worker(FaultRunner, **args) as worker:
        a = worker.generate(req("a"))
        b = worker.generate(req("b"))
        _kind_a, error_a = await outcome(a)
        _kind_b, error_b = await outcome(b)
        assert isinstance(error_a, ts.Unrecoverable) and not error_a.retryable
        assert isinstance(error_b, ts.WorkerStopped)
        assert worker.state.value is WorkerState.STOPPED
        with pytest.raises(ts.WorkerStopped, match=r"^worker 'FaultRunner' is stopped$"):
            worker.generate(req("c"))


async def test_any_other_exception_escalates_out_of_open_worker(autojump_clock: Clock) -> None:
    record = MockRecord()
    boom = KeyError("runner bug")
    with pytest.raises(KeyError) as info:
        async with ts.open_worker(
            FaultRunner, **worker_args(record, batch_faults={0: (1, boom)})
        ) as worker:
            a, b = worker.generate(req("a")), worker.generate(req("b"))
            await trio.sleep_forever()
    assert info.value is boom
    outcomes = [await outcome(a), await outcome(b)]
    assert isinstance(outcomes[0][1], ts.RunnerError) and outcomes[0][1].__cause__ is boom
    assert isinstance(outcomes[1][1], ts.WorkerStopped)
    assert worker.state.value is WorkerState.FAILED


async def test_factory_and_load_failures_are_failures(autojump_clock: Clock) -> None:
    record = MockRecord()
    recorder: list[ts.SupervisionEvent] = []
    args = {
        "runner_args": {
            "failures": {0: ts.ContextPoisoned("factory")},
            "record": record,
            "load_faults": {1: ts.ContextPoisoned("load")},
        },
        "device": "cpu",
    }
    async with ts.open_worker(failing_factory, **args) as worker:
        assert worker.generation == 3 and record.loads == 1
        assert await outcome(worker.generate(req("a"))) == ("ok", expected_text(req("a")))
    del recorder


async def test_a_hung_load_is_bounded_by_readiness_timeout(autojump_clock: Clock) -> None:
    record = MockRecord()
    args = worker_args(record, load_faults={0: "hang"})
    async with ts.open_worker(FaultRunner, readiness_timeout=10, **args) as worker:
        assert trio.current_time() == 10.0
        assert worker.generation == 2


async def test_a_batch_without_progress_is_a_hung_worker(autojump_clock: Clock) -> None:
    record = MockRecord()
    args = worker_args(record, batch_faults={0: (2, "hang")})
    async with ts.open_worker(FaultRunner, hang_timeout=5, **args) as worker:
        _kind, error = await outcome(worker.generate(req("a", continuation="off")))
        assert isinstance(error, ts.HungWorker) and isinstance(error, ts.ContextPoisoned)
        assert trio.current_time() == 1.0 + 5.0  # last chunk at 1, then 5 s of silence
        assert worker.generation == 2
        assert await outcome(worker.generate(req("b"))) == ("ok", expected_text(req("b")))


async def test_a_request_past_its_deadline_times_out(autojump_clock: Clock) -> None:
    async with ts.open_worker(MockRunner, runner_args={"delay": 1.0}, device="cpu") as worker:
        late = worker.generate(req("a", max_tokens=10, deadline=trio.current_time() + 3.5))
        other = worker.generate(req("b", max_tokens=2))
        _kind, error = await outcome(late)
        assert isinstance(error, ts.RequestTimeout) and error.retryable
        assert trio.current_time() == 3.5
        assert await outcome(other) == ("ok", expected_text(req("b", max_tokens=2)))
        assert worker.statistics().failed == 1


async def test_backpressure_beyond_max_pending_while_the_tier_rebuilds(
    autojump_clock: Clock,
) -> None:
    record = MockRecord()
    args = worker_args(record, batch_faults={0: (1, ts.ContextPoisoned("x"))}, load_delay=5)
    async with ts.open_worker(FaultRunner, max_pending=2, **args) as worker:
        first = worker.generate(req("a", idempotent=False))
        await trio.sleep(1.5)  # the tier died at 1 and is loading again
        assert worker.state.value is WorkerState.STARTING
        waiting = [worker.generate(req("b")), worker.generate(req("c"))]
        with pytest.raises(ts.Backpressure, match=r"has max_pending=2 batches waiting already"):
            worker.generate(req("d"))
        assert isinstance((await outcome(first))[1], ts.ContextPoisoned)
        assert [k for k, _ in [await outcome(s) for s in waiting]] == ["ok", "ok"]


async def test_a_slow_consumer_never_stalls_the_batch(autojump_clock: Clock) -> None:
    async with ts.open_worker(MockRunner, runner_args={"delay": 1.0}, device="cpu") as worker:
        fast, slow = worker.submit(ts.Batch([req("fast", 6), req("slow", 6)]))
        chunks = [chunk async for chunk in fast]
        assert len(chunks) == 6 and trio.current_time() == 5.0
        await trio.sleep(100)
        coalesced = [chunk async for chunk in slow]  # all six tokens at once, then done
        assert len(coalesced) == 1 and len(coalesced[0].token_ids) == 6
        assert coalesced[0].finish_reason is FinishReason.LENGTH


async def test_leaving_early_cancels_only_that_request(autojump_clock: Clock) -> None:
    record = MockRecord()
    async with ts.open_worker(
        MockRunner, device="cpu", runner_args={"delay": 1, "record": record}
    ) as worker:
        leaver, stayer = worker.submit(ts.Batch([req("leaver", 20), req("stayer", 5)]))
        async with leaver:
            async for _ in leaver:
                break
        assert await outcome(stayer) == ("ok", expected_text(req("stayer", 5)))
        stats = worker.statistics()
        assert (stats.cancelled, stats.finished, stats.generation) == (1, 1, 1)
        assert stats.tokens < 20  # the runner stopped producing for the one that left


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("unknown", r"chunk for request 'no-such-request', which is not in the batch"),
        ("unfinished", r"ended without finishing requests \['a'\]"),
    ],
)
async def test_runner_mistakes_are_runner_errors_decided_by_the_policy(
    fault: str, message: str, autojump_clock: Clock
) -> None:
    record = MockRecord()
    with pytest.raises(ts.RunnerError, match=message):
        async with ts.open_worker(
            FaultRunner, **worker_args(record, batch_faults={0: (1, fault)})
        ) as worker:
            _kind, error = await outcome(worker.generate(req("a")))
            assert isinstance(error, ts.RunnerError)
            await trio.sleep_forever()


async def test_inline_tier_stops_when_the_probe_fails_after_a_poisoning(
    autojump_clock: Clock,
) -> None:
    from trio_supervise.devices import CpuDevice

    class StickyDevice(CpuDevice):
        async def probe(self) -> None:
            raise ts.ContextPoisoned("cudaErrorIllegalAddress (700) on probe")

    record = MockRecord()
    args = {
        "runner_args": {"record": record, "batch_faults": {0: (1, ts.ContextPoisoned("700"))}},
        "device": StickyDevice,
    }
    async with ts.open_worker(FaultRunner, **args) as worker:
        _kind, error = await outcome(worker.generate(req("a")))
        assert isinstance(error, ts.Unrecoverable)
        assert "isolation='process'" in str(error)
        assert worker.state.value is WorkerState.STOPPED
        assert record.instances == 1  # no restart into the same broken context


async def test_the_bodys_exception_comes_out_plainly_and_fails_everything(
    autojump_clock: Clock,
) -> None:
    with pytest.raises(ValueError, match=r"^the app failed$"):
        async with ts.open_worker(MockRunner, runner_args={"delay": 1.0}, device="cpu") as worker:
            stream = worker.generate(req("a", 10))
            raise ValueError("the app failed")
    _kind, error = await outcome(stream)
    assert isinstance(error, ts.WorkerStopped)
    assert str(error) == "worker 'MockRunner' stopped: its owner failed before request 'a' finished"
