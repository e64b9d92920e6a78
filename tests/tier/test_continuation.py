"""Mid-stream continuation: a stream cut by a tier failure goes on, no token lost or duplicated.

The fault-free text of a MockRunner request is known (``token_at``), so every test compares
what each consumer read, chunk by chunk, with it. Inline tiers run under autojump_clock; the
process tier and HTTP on the real clock, bounded by fail_after.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
import pytest
import trio
import trio.testing

import trio_supervise as ts
from trio_supervise.runners.mock import MockRecord, MockRunner, text_of, token_at
from trio_supervise.serve import ServeConfig
from trio_supervise.serve.pool import WorkerPool
from trio_supervise.serve.server import serve
from trio_supervise.testing import Fault, FaultPlan
from trio_supervise.tier._continuation import Continuation, continuation_mode

Clock = trio.testing.MockClock
FAULTY = "trio_supervise.testing:FaultyRunner"
MOCK = "trio_supervise.runners.mock:MockRunner"


def req(rid: str, max_tokens: int = 6, **kwargs: Any) -> ts.Request:
    return ts.Request(rid, f"prompt {rid}", ts.SamplingParams(max_tokens, seed=5), **kwargs)


def fault_free(request: ts.Request) -> tuple[tuple[int, ...], str]:
    tokens = tuple(token_at(request, i, 50_000) for i in range(request.params.max_tokens))
    return tokens, "".join(text_of(t) for t in tokens)


class Read:
    """What one consumer read: tokens, text, chunks, usage, and how it ended."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.text = ""
        self.chunks = 0
        self.usage: ts.Usage | None = None
        self.error: BaseException | None = None


async def read(stream: Any) -> Read:
    got = Read()
    try:
        async with stream:
            async for chunk in stream:
                got.tokens.extend(chunk.token_ids)
                got.text += chunk.text
                got.chunks += 1
                got.usage = chunk.usage or got.usage
    except ts.InferenceError as exc:
        got.error = exc
    return got


async def read_all(streams: Any) -> dict[str, Read]:
    """Every stream read at once, by request id."""
    results: dict[str, Read] = {}

    async def one(stream: Any) -> None:
        results[stream.request.id] = await read(stream)

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(one, stream)
    return results


def faulty(plan: FaultPlan, inner: str = MOCK, **inner_args: Any) -> dict[str, Any]:
    return {"inner": inner, "inner_args": {"delay": 1.0, **inner_args}, "plan": plan.to_dict()}


def assert_fault_free(requests: list[ts.Request], results: dict[str, Read]) -> None:
    """Each request read exactly its fault-free tokens and text, and usage counted them once."""
    for request in requests:
        got = results[request.id]
        assert got.error is None, f"{request.id}: {got.error!r}"
        assert (tuple(got.tokens), got.text) == fault_free(request), request.id
        assert got.usage is not None and got.usage.completion_tokens == len(got.tokens)


# --- the continuation itself, pure ----------------------------------------------------------


def test_a_replay_drops_the_delivered_prefix_whatever_the_chunk_boundaries() -> None:
    c = Continuation(tokens=[1, 2, 3], texts=["a", "b", "c"])
    request = req("r")
    assert c.rerun(request, "replay") is request and c.skipping
    assert c.skip(ts.Chunk("r", (1, 2), "ab")) is None  # all delivered already
    rest = c.skip(ts.Chunk("r", (3, 4), "cd"))  # straddles the end of the prefix
    assert rest == ts.Chunk("r", (4,), "d") and not c.skipping


def test_a_replay_whose_request_fails_before_it_caught_up_keeps_that_error() -> None:
    c = Continuation(tokens=[1, 2, 3], texts=["a", "b", "c"])
    c.rerun(req("r"), "replay")
    error = ts.BadRequest("a bad token id")
    assert c.skip(ts.Chunk("r", (1,), "a", error=error)) == ts.Chunk("r", error=error)
    assert not c.skipping


def test_a_replay_that_differs_or_ends_early_is_a_mismatch() -> None:
    c = Continuation(tokens=[1, 2, 3], texts=["a", "b", "c"])
    c.rerun(req("r"), "replay")
    with pytest.raises(ts.ContinuationMismatch, match="token 2") as info:
        c.skip(ts.Chunk("r", (1, 9), "ab"))
    assert info.value.retryable is False
    c.rerun(req("r"), "replay")
    with pytest.raises(ts.ContinuationMismatch, match="character 2"):
        c.skip(ts.Chunk("r", (1, 2), "aX"))
    c.rerun(req("r"), "replay")
    end = ts.Chunk("r", (1, 2), "ab", ts.FinishReason.STOP, ts.Usage(1, 2))
    with pytest.raises(ts.ContinuationMismatch, match="its end"):
        c.skip(end)


def test_a_resume_runs_the_prompt_plus_what_was_delivered_for_the_tokens_left() -> None:
    request = req("r", max_tokens=6)
    c = Continuation(tokens=[7, 8], texts=[" x", " y"])
    run = c.rerun(request, "resume")
    assert run is not None and run.prompt == "prompt r x y" and run.params.max_tokens == 4
    assert run.id == request.id and run.params.seed == request.params.seed
    assert c.usage(ts.Usage(4, 4)) == ts.Usage(2, 6)  # each token counted once
    by_ids = ts.Request("t", (1, 2), ts.SamplingParams(3))
    run = Continuation(tokens=[5], texts=["?"]).rerun(by_ids, "resume")
    assert run is not None and run.prompt == (1, 2, 5) and run.params.max_tokens == 2
    assert Continuation(tokens=[1, 2, 3], texts=["abc"]).rerun(by_ids, "resume") is None


def test_a_resumed_chat_continues_the_assistant_message_and_keeps_its_logprobs_aligned() -> None:
    params = ts.SamplingParams(6, min_tokens=3, logprobs=1)
    chat = ts.Request("c", "user: hi\nassistant: ", params, messages=[ts.ChatMessage("user", "hi")],
                      max_tokens_asked=False)  # fmt: skip
    c = Continuation(tokens=[1, 2], texts=["He", "y"])
    run = c.rerun(chat, "resume")
    assert run is not None and run.prompt == "user: hi\nassistant: Hey"
    assert run.messages == (ts.ChatMessage("user", "hi"), ts.ChatMessage("assistant", "Hey"))
    assert run.continue_final and run.max_tokens_asked  # the tokens left, exactly
    assert (run.params.max_tokens, run.params.min_tokens) == (4, 1)
    again = Continuation(tokens=[3], texts=[" yo"]).rerun(run, "resume")
    assert again is not None and again.messages[-1] == ts.ChatMessage("assistant", "Hey yo")
    # a replay drops the delivered prefix of a chunk, and the log probabilities with it
    replay = Continuation(tokens=[1, 2], texts=["a", "b"])
    assert replay.rerun(chat, "replay") is chat
    lps = tuple(ts.TokenLogprob(t, -1.0) for t in "abc")
    rest = replay.skip(ts.Chunk("c", (1, 2, 3), "abc", logprobs=lps))
    assert rest is not None and rest.token_ids == (3,) and rest.logprobs == lps[2:]


def test_the_default_replays_only_an_idempotent_request_on_a_deterministic_runner() -> None:
    assert continuation_mode(req("a"), True) == "replay"
    assert continuation_mode(req("a"), False) is None
    assert continuation_mode(req("a", idempotent=False), True) is None
    assert continuation_mode(req("a", continuation="off"), True) is None
    assert continuation_mode(req("a", continuation="resume"), False) == "resume"
    assert continuation_mode(req("a", continuation="replay", idempotent=False), True) == "replay"
    with pytest.raises(ts.BadRequest, match="continuation must be"):
        req("a", continuation="again")


# --- through a worker -----------------------------------------------------------------------


async def test_a_poisoning_mid_stream_leaves_every_stream_as_without_faults(
    autojump_clock: Clock,
) -> None:
    # 3 requests, poisoned after 5 chunks: a and b got 2 tokens each, c got 1.
    plan = FaultPlan.at(fault=Fault.POISON, batch=0, token=5)
    requests = [req("a", 6), req("b", 8), req("c", 4)]
    async with ts.open_worker(FAULTY, runner_args=faulty(plan), device="cpu") as worker:
        streams = worker.submit(ts.Batch(requests))
        results = await read_all(streams)
        assert worker.generation == 2
        stats = worker.statistics()
    assert_fault_free(requests, results)
    assert stats.continued == 3 and stats.failed == 0 and stats.finished == 3


async def test_a_hang_mid_stream_is_continued_after_the_hang_timeout(autojump_clock: Clock) -> None:
    plan = FaultPlan.at(fault=Fault.HANG, batch=0, token=4)
    requests = [req("a", 5), req("b", 7)]
    async with ts.open_worker(
        FAULTY, runner_args=faulty(plan), device="cpu", hang_timeout=5
    ) as worker:
        streams = worker.submit(ts.Batch(requests))
        results = await read_all(streams)
        assert worker.restart_causes["HungWorker"] == 1
        assert worker.statistics().continued == 2
    assert_fault_free(requests, results)


async def test_a_stream_runs_at_most_max_attempts_then_gets_the_present_error(
    autojump_clock: Clock,
) -> None:
    # Poisoned after 2 chunks, and its replay (batch 1) after 4: two runs, both cut.
    plan = FaultPlan.at(fault=Fault.POISON, batch=0, token=2) + FaultPlan.at(
        fault=Fault.POISON, batch=1, token=4
    )
    request = req("a", 8)
    async with ts.open_worker(
        FAULTY, runner_args=faulty(plan), device="cpu", max_attempts=2
    ) as worker:
        got = await read(worker.generate(request))
    tokens, text = fault_free(request)
    assert isinstance(got.error, ts.ContextPoisoned) and got.error.retryable
    assert tuple(got.tokens) == tokens[:4] and got.text == text[: len(got.text)]


async def test_continuation_off_or_a_non_idempotent_request_ends_with_context_poisoned(
    autojump_clock: Clock,
) -> None:
    plan = FaultPlan.at(fault=Fault.POISON, batch=0, token=4)
    requests = [req("a", continuation="off"), req("b", idempotent=False)]
    async with ts.open_worker(FAULTY, runner_args=faulty(plan), device="cpu") as worker:
        results = await read_all(worker.submit(ts.Batch(requests)))
        assert worker.statistics().continued == 0
    for got in results.values():
        assert isinstance(got.error, ts.ContextPoisoned) and len(got.tokens) == 2


class Drifting(MockRunner):
    """Says it is deterministic, but each incarnation shifts its tokens: a replay differs."""

    deterministic = True
    generation = 1  # set by FaultyRunner to the tier's incarnation

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        async with contextlib.aclosing(super().execute(batch)) as chunks:
            async for chunk in chunks:
                shifted = tuple(t + self.generation - 1 for t in chunk.token_ids)
                yield ts.Chunk(chunk.request_id, shifted, text_of(shifted[0]),
                               chunk.finish_reason, chunk.usage)  # fmt: skip


async def test_a_replay_that_differs_ends_with_a_mismatch_never_a_spliced_stream(
    autojump_clock: Clock,
) -> None:
    plan = FaultPlan.at(fault=Fault.POISON, batch=0, token=3)
    args = faulty(plan, inner="tests.tier.test_continuation:Drifting")
    async with ts.open_worker(FAULTY, runner_args=args, device="cpu") as worker:
        got = await read(worker.generate(req("a", 6)))
        after = await read(worker.generate(req("b", 2)))  # the worker goes on serving
        stats = worker.statistics()
    assert isinstance(got.error, ts.ContinuationMismatch) and not got.error.retryable
    assert stats.mismatched == 1 and stats.continued_modes == {"replay": 1, "resume": 0}
    tokens, _ = fault_free(req("a", 6))
    assert tuple(got.tokens) == tokens[:3]  # the first run's tokens, and nothing after them
    assert after.error is None and len(after.tokens) == 2


class Unsure(MockRunner):
    """A MockRunner that does not promise determinism, and records the prompts it ran."""

    deterministic = False
    prompts: ClassVar[list[tuple[Any, int]]] = []

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        Unsure.prompts.extend((r.prompt, r.params.max_tokens) for r in batch.requests)
        async with contextlib.aclosing(super().execute(batch)) as chunks:
            async for chunk in chunks:
                yield chunk


async def test_resume_continues_any_runner_from_the_prompt_plus_what_was_delivered(
    autojump_clock: Clock,
) -> None:
    Unsure.prompts = []
    poison = [FaultPlan.at(fault=Fault.POISON, batch=b, token=2) for b in (0, 1)]
    plan = poison[0] + poison[1]  # the plain request's batch, then the resumable one's
    args = faulty(plan, inner="tests.tier.test_continuation:Unsure")
    # A prompt that ends with a space: the mock counts words, and its text is "word word ".
    request = ts.Request("a", "prompt a ", ts.SamplingParams(6, seed=5), continuation="resume")
    async with ts.open_worker(FAULTY, runner_args=args, device="cpu") as worker:
        assert worker.deterministic is False
        with pytest.raises(ts.BadRequest, match="needs a deterministic runner"):
            worker.generate(req("x", continuation="replay"))
        plain = await read(worker.generate(req("p")))  # auto: not continued here
        got = await read(worker.generate(request))
    assert isinstance(plain.error, ts.ContextPoisoned)
    delivered = "".join(text_of(token_at(request, i, 50_000)) for i in range(2))
    assert Unsure.prompts[-2:] == [("prompt a ", 6), ("prompt a " + delivered, 4)]
    assert got.error is None and len(got.tokens) == 6 and got.text.startswith(delivered)
    assert got.usage == ts.Usage(2, 6)  # the prompt's 2 words; 6 tokens, each counted once


# --- process isolation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "cause"),
    [(Fault.KILL, "ChildDied"), (Fault.EXIT, "ChildDied"), (Fault.HANG, "HungWorker")],
)
async def test_a_child_killed_or_hung_mid_stream_leaves_every_stream_as_without_faults(
    fault: Fault, cause: str
) -> None:
    plan = FaultPlan.at(fault=fault, batch=0, token=3)
    requests = [req("a", 5), req("b", 4)]
    with trio.fail_after(30):
        async with ts.open_worker(
            FAULTY, runner_args=faulty(plan, delay=0.01), device="cpu", isolation="process",
            hang_timeout=2.0 if fault is Fault.HANG else None,
        ) as worker:  # fmt: skip
            streams = worker.submit(ts.Batch(requests))
            results = await read_all(streams)
            assert worker.deterministic is True  # said by the child, from the runner
            assert worker.restart_causes[cause] == 1
            assert worker.statistics().continued == 2
    assert_fault_free(requests, results)


# --- across the replicas of a pool ----------------------------------------------------------


class StopsMidStream(MockRunner):
    """A MockRunner whose first incarnation on a replica with ``stop_after`` fails with
    Unrecoverable after that many chunks: the replica's worker stops for good."""

    def __init__(self, *, stop_after: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.stop_after = stop_after

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        sent = 0
        async with contextlib.aclosing(super().execute(batch)) as chunks:
            async for chunk in chunks:
                yield chunk
                sent += 1
                if self.stop_after and sent == self.stop_after:
                    raise ts.Unrecoverable("the node is gone")


def pool_config(**batching: Any) -> ServeConfig:
    return ServeConfig.from_dict(
        {
            "batching": {"max_batch_size": 4, "max_wait": 0.5, **batching},
            "workers": [
                {
                    "name": "m",
                    "runner": "tests.tier.test_continuation:StopsMidStream",
                    "runner_args": {"delay": 0.1, "record": MockRecord()},
                    "replica_args": [{"stop_after": 5}, {}],
                    "device": "cpu",
                }
            ],
        }
    )


async def test_a_stream_goes_on_on_another_replica_when_its_worker_stops(
    autojump_clock: Clock,
) -> None:
    pool = WorkerPool(pool_config())
    requests = [req("a", 6), req("b", 5)]
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        first, second = pool.replicas["m"]
        assert first.worker is not None and second.worker is not None
        streams = [pool.generate(r) for r in requests]  # one batch, to the first replica
        results = await read_all(streams)
        assert first.worker.state.value is ts.WorkerState.STOPPED
        assert second.worker.statistics().continued == 2
        nursery.cancel_scope.cancel()
    assert_fault_free(requests, results)


# --- over HTTP ------------------------------------------------------------------------------


async def test_an_sse_stream_goes_on_on_the_same_connection_and_counts_usage_once() -> None:
    plan = FaultPlan.at(fault=Fault.POISON, batch=0, token=3)
    config = ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 5},
            "batching": {"max_wait": 0.001},
            "workers": [
                {
                    "name": "m",
                    "runner": FAULTY,
                    "device": "cpu",
                    "runner_args": faulty(plan, delay=0.005),
                }
            ],
        }
    )
    body = {"prompt": "once upon", "max_tokens": 7, "seed": 2, "stream": True}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve, config)
            async with httpx.AsyncClient(base_url=handle.url) as client:
                events: list[Any] = []
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            data = line.removeprefix("data: ")
                            events.append(data if data == "[DONE]" else json.loads(data))
                workers = (await client.get("/v1/workers")).json()["workers"]
                whole = await client.post("/v1/completions", json={**body, "stream": False})
            handle.drain()
    assert events[-1] == "[DONE]" and all("error" not in e for e in events[:-1])
    text = "".join(e["choices"][0]["text"] for e in events[:-1])
    assert text == whole.json()["choices"][0]["text"]  # the fault-free text (batch 1, no fault)
    assert events[-2]["usage"] == {"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9}
    assert workers[0]["generation"] == 2  # the tier did restart under the stream
