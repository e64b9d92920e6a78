"""Random interleavings of requests, faults and cancellations against the worker's invariants.

Whatever happens, every accepted request ends exactly once (finished, failed with a typed
error of its own, or left by its consumer); the chunks a consumer sees are in order, without
duplicates or gaps, and are exactly the runner's deterministic tokens.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_supervise as ts
from tests.support.helpers import FaultRunner
from trio_supervise import Request, SamplingParams
from trio_supervise.runners.mock import MockRecord, token_at

FAULTS: dict[str, Any] = {
    "poison": lambda: ts.ContextPoisoned("poisoned"),
    "oom": lambda: ts.OutOfMemory("no room", retry_after=0.25),
    "hang": lambda: "hang",
    "stop": lambda: ts.Unrecoverable("no device"),
    "bad_chunk": lambda: ("error", None, ts.BadRequest("bad prompt")),
}

POLICY = attrs.evolve(ts.DEVICE_POLICY, intensity=ts.RestartIntensity(1000, 1.0))


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 8))
    requests = []
    for i in range(n):
        requests.append(
            {
                "id": f"r{i}",
                "max_tokens": draw(st.integers(1, 5)),
                "idempotent": draw(st.booleans()),
                "submit_at": draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0])),
                "leave_after": draw(st.none() | st.integers(0, 3)),
                "deadline": draw(st.none() | st.sampled_from([1.0, 3.0, 6.0])),
                "batch_with_next": draw(st.booleans()),
            }
        )
    faults = draw(
        st.dictionaries(
            st.integers(0, 10),
            st.tuples(st.integers(0, 4), st.sampled_from(sorted(FAULTS))),
            max_size=4,
        )
    )
    return {
        "requests": requests,
        "faults": faults,
        "max_concurrency": draw(st.integers(1, 2)),
        "max_attempts": draw(st.integers(1, 3)),
    }


def build_faults(faults: dict[int, tuple[int, str]]) -> dict[int, Any]:
    """Fresh exception objects for each run (a bad chunk goes to the batch's first request)."""
    return {seq: (after, FAULTS[kind]()) for seq, (after, kind) in faults.items()}


@settings(deadline=None)
@given(scenarios())
def test_every_request_ends_exactly_once_with_its_chunks_in_order(scenario: dict[str, Any]) -> None:
    check_scenario(scenario, isolation="inline")


@pytest.mark.slow
@settings(deadline=None, max_examples=8)
@given(scenarios())
def test_the_same_holds_with_the_tier_in_a_child_process(scenario: dict[str, Any]) -> None:
    check_scenario(scenario, isolation="process")


def check_scenario(scenario: dict[str, Any], *, isolation: str) -> None:
    """Run one scenario; on the process tier, on the real clock, with times scaled down."""
    process = isolation == "process"
    scale = 0.02 if process else 1.0
    specs = scenario["requests"]
    ids = [spec["id"] for spec in specs]
    record = MockRecord()
    results: dict[str, dict[str, Any]] = {}
    errors_seen: list[BaseException] = []

    def make(spec: dict[str, Any], now: float) -> Request:
        deadline = None if spec["deadline"] is None else now + spec["deadline"] * scale
        params = SamplingParams(max_tokens=spec["max_tokens"], seed=1)
        return Request(spec["id"], f"prompt {spec['id']}", params, spec["idempotent"], deadline)

    async def consume(spec: dict[str, Any], stream: ts.RequestStream) -> None:
        got: list[int] = []
        result: dict[str, Any] = {"tokens": got, "end": None, "finals": 0}
        results[spec["id"]] = result
        try:
            async with stream:
                async for chunk in stream:
                    got.extend(chunk.token_ids)
                    if chunk.finish_reason is not None:
                        result["finals"] += 1
                        result["end"] = ("finished", chunk.finish_reason)
                    if spec["leave_after"] is not None and len(got) >= spec["leave_after"]:
                        if result["end"] is None:
                            result["end"] = ("left", None)
                        break
            if result["end"] is None:
                result["end"] = ("ended", None)
        except ts.InferenceError as exc:
            assert result["end"] is None, "an error after the request had ended"
            result["end"] = ("error", exc)
            errors_seen.append(exc)

    async def main() -> ts.WorkerStatistics:
        args: dict[str, Any] = {
            "delay": 1.0 * scale,
            "max_concurrency": scenario["max_concurrency"],
        }
        if process:  # plain data crosses; the child builds the exceptions
            args["faults"] = {
                str(seq): [after, kind] for seq, (after, kind) in scenario["faults"].items()
            }
            factory: Any = "tests.support.child_runners:ScriptedRunner"
        else:
            args |= {"record": record, "batch_faults": build_faults(scenario["faults"])}
            factory = FaultRunner
        async with (
            ts.open_worker(
                factory,
                runner_args=args,
                device="cpu",
                policy=POLICY,
                max_attempts=scenario["max_attempts"],
                hang_timeout=3.0 * scale if not process else 0.5,
                isolation=isolation,
            ) as worker,
            trio.open_nursery() as nursery,
        ):
            start = trio.current_time()
            pending = sorted(specs, key=lambda s: s["submit_at"])
            i = 0
            while i < len(pending):
                spec = pending[i]
                await trio.sleep_until(start + spec["submit_at"] * scale)
                group = [spec]
                while group[-1]["batch_with_next"] and i + len(group) < len(pending):
                    nxt = pending[i + len(group)]
                    if nxt["submit_at"] != spec["submit_at"]:
                        break
                    group.append(nxt)
                i += len(group)
                now = trio.current_time()
                try:
                    streams = worker.submit(ts.Batch([make(s, now) for s in group]))
                except ts.WorkerStopped:
                    for s in group:
                        results[s["id"]] = {"end": ("rejected", None), "tokens": [], "finals": 0}
                    continue
                for s, stream in zip(group, streams, strict=True):
                    nursery.start_soon(consume, s, stream)
        return worker.statistics()

    async def bounded() -> ts.WorkerStatistics:
        with trio.fail_after(60 if process else 10_000):  # a hang fails the test, not CI
            return await main()

    if process:
        stats = trio.run(bounded)
    else:
        stats = trio.run(bounded, clock=trio.testing.MockClock(autojump_threshold=0))

    accepted = [rid for rid in ids if results[rid]["end"][0] != "rejected"]
    assert stats.accepted == len(accepted)
    assert stats.finished + stats.failed + stats.cancelled == stats.accepted
    for spec in specs:
        result = results[spec["id"]]
        kind, detail = result["end"]
        assert kind in ("finished", "error", "left", "rejected"), result
        assert result["finals"] <= 1
        request = make(spec, 0.0)
        expected = [token_at(request, i, 50_000) for i in range(spec["max_tokens"])]
        # In order, no duplicates, no gaps: a prefix of the deterministic tokens.
        assert result["tokens"] == expected[: len(result["tokens"])]
        if kind == "finished":
            assert result["tokens"] == expected
        if kind == "error":
            assert isinstance(detail, ts.InferenceError)
    assert len({id(e) for e in errors_seen}) == len(errors_seen), "an error object was shared"
