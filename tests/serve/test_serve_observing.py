"""What a served instance tells an operator: the access log and its request ids, supervision events
in the logs, the metrics dashboards know (and the supervisor's own, across a replaced worker),
``/v1/workers``' events, and OpenTelemetry spans."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import trio_supervise as ts
from tests.support.helpers import logged, restarting_once, served_url
from tests.support.helpers import serve_config as config
from tests.support.helpers import start_server as start
from trio_supervise.serve import ServeConfig, configure_logging
from trio_supervise.testing import Fault, FaultPlan

KEY = "sk-observing-secret-0123456789"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``configure_logging`` changes the root logger: put it back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access = logging.getLogger("trio_supervise.access").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("trio_supervise.access").setLevel(access)


def faulty(plan: FaultPlan, **worker: Any) -> ServeConfig:
    """One replica of the mock runner under ``FaultyRunner`` with ``plan``."""
    return ServeConfig.from_dict({
        "server": {"port": 0, "drain_timeout": 5},
        "batching": {"max_wait": 0.001},
        "workers": [{
            "name": "mock", "runner": "trio_supervise.testing:FaultyRunner", "device": "cpu",
            "runner_args": {"inner": "trio_supervise.runners.mock:MockRunner",
                            "inner_args": {"delay": 0.001}, "plan": plan.to_dict()},
            **worker,
        }],
    })  # fmt: skip


def samples(text: str, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples named ``name`` of an exposition text, keyed by the given labels."""
    return {
        tuple(s.labels.get(label, "") for label in labels): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_an_access_line_per_request_with_its_id_echoed_and_no_key_in_any_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config(server={"api_keys": [KEY]}))
            auth = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                body = {"prompt": "hi", "max_tokens": 3}
                given = await client.post("/v1/completions", json=body,
                                          headers={**auth, "X-Request-Id": "trace-42"})  # fmt: skip
                made = await client.post("/v1/completions", json=body, headers=auth)
                wrong = await client.post("/v1/completions", json=body,
                                          headers={"Authorization": f"Bearer {KEY}x"})  # fmt: skip
                bad_id = await client.post("/v1/completions", json=body,
                                           headers={**auth, "X-Request-Id": "a b"})  # fmt: skip
                too_long = await client.get("/healthz", headers={"X-Request-Id": "x" * 129})
            handle.drain()
    assert given.status_code == 200 and given.headers["x-request-id"] == "trace-42"
    assert made.status_code == 200 and len(made.headers["x-request-id"]) == 32
    assert wrong.status_code == 401 and wrong.headers["x-request-id"]
    assert bad_id.status_code == 400 and "X-Request-Id" in bad_id.json()["error"]["message"]
    assert too_long.status_code == 400
    access = [r for r in caplog.records if r.name == "trio_supervise.access"]
    assert [r.access["status"] for r in access] == [200, 200, 401, 400, 400]  # type: ignore[attr-defined]
    line = access[0].getMessage()
    assert line.startswith("POST /v1/completions 200 ") and "id=trace-42" in line
    for fragment in ("model=mock", "prompt_tokens=1", "completion_tokens=3", "replica=mock#0",
                     "gen=1", "outcome=finished"):  # fmt: skip
        assert fragment in line, line
    assert f"id={made.headers['x-request-id']}" in access[1].getMessage()
    assert KEY not in caplog.text


async def test_json_lines_carry_the_access_fields_and_the_supervision_events(
    restore_logging: None,
) -> None:
    out = io.StringIO()
    configure_logging("info", json_lines=True, stream=out)
    cfg = restarting_once(ts.ContextPoisoned("sticky CUDA error 700"))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                reply = await client.post("/v1/completions", json={"prompt": "x"})
                assert reply.status_code == 200
            handle.drain()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "trio_supervise.access"]
    assert len(access) == 1 and access[0]["status"] == 200 and access[0]["replica"] == "mock#0"
    assert access[0]["completion_tokens"] == 16
    restarting = [line for line in lines if line.get("kind") == "restarting"]
    assert handle.pool.replicas["mock"][0].totals().cuda_errors == {"700": 1}
    assert restarting and restarting[0]["worker"] == "mock#0"
    assert restarting[0]["error"] == "ContextPoisoned" and restarting[0]["level"] == "info"


def test_configure_logging_refuses_an_unknown_level() -> None:
    with pytest.raises(ValueError, match="must be one of debug, info"):
        configure_logging("loud")


@pytest.mark.slow
async def test_serve_logs_a_restart_and_the_access_lines_and_no_banner(tmp_path: Path) -> None:
    from tests.serve.test_serve_hostile import read_all, read_until, serve_process, serve_toml

    once = {"marker": str(tmp_path / "fired"), "fault": "poison"}
    toml = serve_toml({}, runner="tests.support.child_runners:OnceRunner", runner_args=once)
    with trio.fail_after(60):
        process, output = await serve_process(tmp_path, toml)
        output = await read_until(process, output, b"serving")
        async with httpx.AsyncClient(base_url=served_url(output), timeout=30) as client:
            reply = await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        output = await read_until(process, output, b"trio_supervise.access")
        process.terminate()
        output = await read_all(process, output)
        assert await process.wait() == 0
    text = output.decode()
    assert "mock#0/mock#0#1 failed: ContextPoisoned('poisoned in the child')" in text, text
    assert "restarting: ContextPoisoned" in text
    assert "POST /v1/completions 200" in text and "gen=2 continued=1" in text
    assert "Running on" not in text and "CTRL + C" not in text


async def test_metrics_after_faults_match_the_workers_and_survive_a_replaced_worker() -> None:
    # Every 3rd batch is poisoned after its first chunk: its stream is replayed (the mock runner
    # is deterministic). The worker may restart twice within its window; the third poisoning
    # gives up, and the root supervisor replaces the worker in the slot.
    plan = FaultPlan.every(3, Fault.POISON, token=1)
    cfg = faulty(plan, policy={"max_restarts": 2, "within": 600})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            replica = handle.pool.replicas["mock"][0]
            first = replica.worker
            assert first is not None
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:

                async def scrape() -> str:
                    return (await client.get("/metrics")).text

                async def ask(n: int) -> list[int]:
                    codes = []
                    for i in range(n):
                        body = {"prompt": f"p{i}", "max_tokens": 5, "stream": True}
                        async with client.stream("POST", "/v1/completions", json=body) as reply:
                            await reply.aread()
                            codes.append(reply.status_code)
                    return codes

                assert await ask(6) == [200] * 6  # two poisonings, both replayed
                stats = first.statistics()
                text = await scrape()
                assert stats.restart_causes == {"ContextPoisoned": 2}
                assert samples(text, "trio_supervise_worker_restarts_total", "worker", "cause") == {
                    ("mock#0", "ContextPoisoned"): 2.0
                }
                assert samples(text, "trio_supervise_requests_requeued_total", "worker") == {
                    ("mock#0",): float(stats.requeued)
                }
                continued = samples(text, "trio_supervise_requests_continued_total", "worker",
                                    "mode")  # fmt: skip
                assert continued == {("mock#0", "replay"): 2.0, ("mock#0", "resume"): 0.0}
                assert stats.continued == stats.continued_modes["replay"] == 2
                tokens = samples(text, "trio_supervise_worker_tokens_total", "worker")
                assert tokens == {("mock#0",): float(stats.tokens)}

                # The third poisoning gives up: a fresh worker takes the slot.
                await ask(3)
                while replica.worker is first or not replica.ready:
                    await handle.pool._ready_changed.wait()
                assert await ask(1) == [200]
                second = replica.worker
                assert second is not None and second is not first
                old, new = first.statistics(), second.statistics()
                text = await scrape()
            handle.drain()
    restarts = samples(text, "trio_supervise_worker_restarts_total", "worker", "cause")
    assert restarts == {
        ("mock#0", "ContextPoisoned"): float(old.restart_causes["ContextPoisoned"]),
        ("mock#0", "RestartIntensityExceeded"): 1.0,  # the replacement, by the give-up's class
    }
    assert restarts[("mock#0", "ContextPoisoned")] >= 2  # never went down
    requeued = samples(text, "trio_supervise_requests_requeued_total", "worker")
    assert requeued == {("mock#0",): float(old.requeued + new.requeued)}
    tokens = samples(text, "trio_supervise_worker_tokens_total", "worker")
    assert tokens == {("mock#0",): float(old.tokens + new.tokens)} and new.tokens > 0
    continued = samples(text, "trio_supervise_requests_continued_total", "worker", "mode")
    assert continued[("mock#0", "replay")] == old.continued + new.continued >= 2
    recovered = samples(text, "trio_supervise_restart_seconds_count", "worker")
    assert recovered[("mock#0",)] == 3.0  # two tier restarts and one replacement, each to READY
    assert samples(text, "trio_supervise_worker_generation", "worker") == {("mock#0",): 1.0}
    finished = samples(text, "trio_supervise_request_success_total", "model", "finished_reason")
    assert finished[("mock", "length")] >= 7
    generated = samples(text, "trio_supervise_generation_tokens_total", "model")[("mock",)]
    assert generated >= 7 * 5
    ttft = samples(text, "trio_supervise_time_to_first_token_seconds_count", "model")
    assert ttft[("mock",)] >= 7


async def test_request_metrics_count_outcomes_tokens_and_latencies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "trio_supervise.access")  # what `logged` below waits for
    cfg = config(replicas=2)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                two = {"prompt": "abc", "max_tokens": 4, "n": 2}
                whole = await client.post("/v1/completions", json=two)
                assert whole.status_code == 200
                body = {"prompt": "hi", "max_tokens": 6, "stream": True}
                async with client.stream("POST", "/v1/completions", json=body) as reply:
                    lines = [line async for line in reply.aiter_lines() if line]
                assert lines[-1] == "data: [DONE]"
                # A client that leaves mid-stream is counted as cancelled.
                with logged("outcome=cancelled", "trio_supervise.access") as left:
                    slow = {"prompt": "x", "max_tokens": 2000, "stream": True}
                    async with client.stream("POST", "/v1/completions", json=slow) as reply:
                        async for line in reply.aiter_lines():
                            if line.startswith("data: {"):
                                break
                    await left.wait()
                text = (await client.get("/metrics")).text
            handle.drain()
    outcomes = samples(text, "trio_supervise_requests_total", "model", "outcome")
    assert outcomes == {("mock", "finished"): 2.0, ("mock", "cancelled"): 1.0}
    reasons = samples(text, "trio_supervise_request_success_total", "model", "finished_reason")
    assert reasons == {("mock", "length"): 3.0}
    assert samples(text, "trio_supervise_prompt_tokens_total", "model")[("mock",)] >= 2
    generated = samples(text, "trio_supervise_generation_tokens_total", "model")[("mock",)]
    assert generated >= 2 * 4 + 6 + 1  # the cancelled stream's sent tokens count too
    assert samples(text, "trio_supervise_e2e_request_latency_seconds_count", "model") == {
        ("mock",): 3.0
    }
    assert samples(text, "trio_supervise_request_queue_time_seconds_count", "model") == {
        ("mock",): 4.0  # one per choice
    }
    itl = samples(text, "trio_supervise_inter_token_latency_seconds_count", "model")[("mock",)]
    assert itl >= 5  # the 6-token stream's gaps at least
    running = samples(text, "trio_supervise_num_requests_running", "model")
    waiting = samples(text, "trio_supervise_num_requests_waiting", "model")
    assert running == {("mock",): 0.0} and waiting == {("mock",): 0.0}


async def test_workers_lists_the_latest_supervision_events_and_recent_ttft() -> None:
    cfg = restarting_once()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
                listing: dict[str, Any] = (await client.get("/v1/workers")).json()
            handle.drain()
    (worker,) = listing["workers"]
    assert worker["restarts"] == 1 and worker["last_restart_cause"] == "ContextPoisoned"
    assert worker["tokens"] == 2 and worker["ttft_p50"] is not None
    kinds = [(e["worker"], e["kind"]) for e in listing["events"]]
    assert ("mock#0", "failed") in kinds and ("mock#0", "restarting") in kinds
    failed = next(e for e in listing["events"] if e["kind"] == "failed")
    assert failed["error"] == "ContextPoisoned" and failed["time"] > 1.7e9


async def test_a_span_per_request_with_its_events_in_order() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from trio_supervise.serve._tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    plan = FaultPlan.at(fault=Fault.POISON, batch=0, token=2)
    cfg = faulty(plan)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            handle.app.observers = (*handle.app.observers, tracing.observe)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                reply = await client.post("/v1/completions", headers={"X-Request-Id": "r-1"},
                                          json={"prompt": "x", "max_tokens": 5})  # fmt: skip
                assert reply.status_code == 200
                await client.get("/healthz")  # not a generating request: no span
            handle.drain()
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /v1/completions"
    assert span.attributes is not None and span.attributes["trio_supervise.request_id"] == "r-1"
    assert span.attributes["gen_ai.usage.output_tokens"] == 5
    names = [event.name for event in span.events]
    assert names == ["queued", "dispatched", "first_token", "restart", "continuation", "end"]
    times = [event.timestamp for event in span.events]
    dispatched = span.events[1].attributes
    assert dispatched is not None and dispatched["replica"] == "mock#0"
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= min(times) and max(times) <= span.end_time


def test_tracing_is_a_flag_and_asks_for_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ts.ConfigError, match=r"server.tracing: must be true or false, got .yes."):
        config(server={"tracing": "yes"}).validate()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "opentelemetry" else real(name, *a),
    )
    with pytest.raises(ts.ConfigError, match=r"pip install 'trio-supervise\[otel\]'"):
        config(server={"tracing": True}).validate()


async def test_a_server_with_tracing_on_hands_each_request_to_the_tracer() -> None:
    pytest.importorskip("opentelemetry", reason="needs the otel extra")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config(server={"tracing": True}))
            owners = [type(getattr(o, "__self__", None)).__name__ for o in handle.app.observers]
            handle.drain()
    assert owners.count("Tracing") == 1
