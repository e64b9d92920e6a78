"""A Trio app that embeds a worker and keeps serving through a poisoned device context.

The runner here is the library's deterministic MockRunner with one fault injected: the third
batch it executes dies with ``ContextPoisoned`` (what a sticky CUDA error becomes). The worker's
tier is torn down and rebuilt; requests that had produced nothing run again on the new runner,
and the one caught mid-stream is continued: the runner is deterministic, so the worker replays
it from its prompt with its seed, checks that the replay gives the two tokens already delivered,
drops them and streams the rest. The app sees one unbroken completion. (With
``continuation="off"`` that request would end with a retryable ``ContextPoisoned``: the app
below retries such errors once.)

Run it: ``python examples/embed_worker.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

import trio_supervise as ts
from trio_supervise.runners.mock import MockRunner


class FlakyGpuRunner(MockRunner):
    """MockRunner whose batch number 2 (the third) poisons the context after two chunks."""

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        produced = 0
        async with contextlib.aclosing(super().execute(batch)) as chunks:
            async for chunk in chunks:
                yield chunk
                produced += 1
                if batch.seq == 2 and produced == 2:
                    raise ts.ContextPoisoned("cudaErrorIllegalAddress (700), injected")


async def complete(worker: ts.Worker, prompt: str, log: list[str]) -> str:
    """Generate a completion, retrying once when the error says a retry is worthwhile."""
    for attempt in (1, 2):
        request = ts.Request(f"{prompt}#{attempt}", prompt, ts.SamplingParams(max_tokens=6, seed=1))
        try:
            _, text, _, _ = await worker.generate(request).collect()
        except ts.InferenceError as exc:
            log.append(f"{prompt!r}: {type(exc).__name__} (retryable={exc.retryable})")
            if not exc.retryable or attempt == 2:
                raise
            continue
        log.append(f"{prompt!r} -> {text.strip()!r} (served by generation {worker.generation})")
        return text
    raise AssertionError("unreachable")


async def main() -> dict[str, object]:
    log: list[str] = []
    prompts = ["once upon a time", "the quick brown fox", "to be or not", "hello world"]
    async with ts.open_worker(FlakyGpuRunner, runner_args={"delay": 0.01}, device="cpu") as worker:
        handle = worker
        async with trio.open_nursery() as nursery:
            for prompt in prompts:
                nursery.start_soon(complete, worker, prompt, log)
        assert worker is handle  # the caller's handle never changed
        stats = worker.statistics()
    for line in log:
        print(line)
    print(
        f"generation {stats.generation}, requests {stats.accepted}: {stats.finished} finished, "
        f"{stats.failed} failed, {stats.requeued} re-run after the restart, "
        f"{stats.continued} continued mid-stream"
    )
    return {
        "log": log,
        "generation": stats.generation,
        "finished": stats.finished,
        "continued": stats.continued,
    }


if __name__ == "__main__":
    trio.run(main)
