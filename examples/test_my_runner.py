"""How to test a runner of your own with trio-supervise's pytest plugin (it runs in our suite).

The plugin comes with the package: the ``ts_`` fixtures are there as soon as trio_supervise is
installed. Run it: ``python -m pytest examples/test_my_runner.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

import trio_supervise as ts
from trio_supervise.testing import Fault, FaultPlan, FaultyRunner


class EchoRunner:
    """Your runner: here, one that echoes the prompt's words back, one per token."""

    max_concurrency = 2

    async def load(self, device: Any) -> None:
        self.vocab: dict[str, int] = {}

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        for request in batch.requests:
            words = str(request.prompt).split()[: request.params.max_tokens]
            for i, word in enumerate(words):
                if batch.is_cancelled(request.id):
                    break
                token = self.vocab.setdefault(word, len(self.vocab))
                last = i == len(words) - 1
                reason = ts.FinishReason.STOP if last else None
                usage = ts.Usage(len(words), len(words)) if last else None
                yield ts.Chunk(request.id, (token,), word + " ", reason, usage)
                await trio.lowlevel.checkpoint()

    async def rebuild_session(self, cause: ts.RebuildCause) -> None:
        self.vocab.clear()

    async def aclose(self) -> None:
        pass


def echo_worker(plan: FaultPlan) -> Any:
    """What the harness needs: ``plan -> async context manager yielding a worker``."""
    policy = attrs.evolve(ts.DEVICE_POLICY, intensity=ts.RestartIntensity(100, 60.0))
    return ts.open_worker(lambda: FaultyRunner(EchoRunner(), plan), device="cpu", policy=policy)


async def test_my_runner_survives_poisonings_and_ooms(ts_chaos: Any) -> None:
    plan = FaultPlan.random(seed=3, rates={Fault.POISON: 0.02, Fault.OOM: 0.05}, token=1)
    report = await ts_chaos(echo_worker, plan, requests=500, concurrency=32)
    assert report.restarts > 0  # faults did fire, and every invariant still held


async def test_a_scripted_fault_reaches_the_right_request(
    ts_fault_plan: FaultPlan, autojump_clock: trio.testing.MockClock
) -> None:
    plan = ts_fault_plan + FaultPlan.at(fault=Fault.POISON, batch=1)
    async with echo_worker(plan) as worker:
        first = await worker.generate(
            ts.Request("a", "hello there", ts.SamplingParams(8))
        ).collect()
        assert first[1] == "hello there "
        request = ts.Request("b", "poisoned here", ts.SamplingParams(8), idempotent=False)
        try:
            await worker.generate(request).collect()
        except ts.ContextPoisoned as exc:
            assert exc.retryable  # the caller may send it again
        assert worker.generation == 2
