"""serve() over real HTTP on loopback (real clock, each test bounded by fail_after)."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import restarting_once, served_url
from tests.support.helpers import serve_config as config
from tests.support.helpers import start_server as start
from trio_supervise.serve.server import ServerHandle

MOCK = "trio_supervise.runners.mock:MockRunner"


async def sse(client: httpx.AsyncClient, body: dict[str, Any]) -> list[Any]:
    events = []
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_completions_whole_and_streamed_give_the_same_text() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config())
            async with httpx.AsyncClient(base_url=handle.url) as client:
                body = {"prompt": "once upon", "max_tokens": 6, "seed": 4}
                whole = (await client.post("/v1/completions", json=body)).json()
                assert whole["object"] == "text_completion" and whole["model"] == "mock"
                (choice,) = whole["choices"]
                assert choice["finish_reason"] == "length" and choice["logprobs"] is None
                assert whole["usage"] == {
                    "prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8
                }  # fmt: skip
                events = await sse(client, body)
                assert events[-1] == "[DONE]"
                text = "".join(e["choices"][0]["text"] for e in events[:-1])
                assert text == choice["text"]
                assert events[-2]["choices"][0]["finish_reason"] == "length"
                models = (await client.get("/v1/models")).json()
                assert models == {"object": "list", "data": [{"id": "mock", "object": "model"}]}
                (worker,) = (await client.get("/v1/workers")).json()["workers"]
                assert worker["name"] == "mock#0" and worker["state"] == "ready"
            handle.drain()


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"prompt": 3}, 400, "BadRequest"),
        ({"prompt": "x", "n": 17}, 400, "BadRequest"),
        ({"prompt": "x", "max_tokens": 0}, 400, "BadRequest"),
        ({"prompt": "x", "model": "nope"}, 404, "ModelNotFound"),
    ],
)
async def test_bad_requests_never_reach_a_worker(body: Any, status: int, kind: str) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config())
            async with httpx.AsyncClient(base_url=handle.url) as client:
                response = await client.post("/v1/completions", json=body)
                assert response.status_code == status
                error = response.json()["error"]
                assert (error["type"], error["code"], error["retryable"]) == (kind, status, False)
                assert handle.pool.replicas["mock"][0].worker.statistics().accepted == 0
                bad_json = await client.post(
                    "/v1/completions",
                    content=b"{not json",
                    headers={"content-type": "application/json"},
                )
                assert bad_json.status_code == 400
            handle.drain()


async def test_backpressure_and_timeouts_map_to_429_and_504() -> None:
    cfg = config(max_pending=1, runner_args={"delay": 0.2}, server={"request_timeout": 0.3})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                statuses: list[httpx.Response] = []

                async def one() -> None:
                    body = {"prompt": "slow", "max_tokens": 4}
                    statuses.append(await client.post("/v1/completions", json=body))

                async with trio.open_nursery() as requests:
                    for _ in range(4):
                        requests.start_soon(one)
                codes = sorted(r.status_code for r in statuses)
                assert 429 in codes and 504 in codes, codes
                limited = next(r for r in statuses if r.status_code == 429)
                assert int(limited.headers["retry-after"]) >= 1
                assert limited.json()["error"]["retryable"] is True
            handle.drain()


async def test_readyz_while_loading_and_draining_and_drain_finishes_in_flight() -> None:
    cfg = config(runner_args={"load_delay": 0.5, "delay": 0.1})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)  # once loaded (see the next test for loading)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                assert (await client.get("/readyz")).status_code == 200
                results: list[httpx.Response] = []

                async def in_flight() -> None:
                    body = {"prompt": "long", "max_tokens": 10}
                    results.append(await client.post("/v1/completions", json=body))

                async with trio.open_nursery() as requests:
                    requests.start_soon(in_flight)
                    worker = handle.pool.replicas["mock"][0].worker
                    assert worker is not None
                    # The worker's counter has no event (worker/ offers none): polled.
                    while worker.statistics().in_flight == 0:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    handle.drain()  # draining from now on: readyz and new requests say so
                    ready = await client.get("/readyz")
                    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
                    late = await client.post("/v1/completions", json={"prompt": "x"})
                    assert late.status_code == 503 and "retry-after" in late.headers
                    assert (await client.get("/healthz")).status_code == 200  # still listening
                assert results[0].status_code == 200  # the in-flight request finished


async def test_readyz_is_503_while_the_workers_load() -> None:
    from trio_supervise.serve.app import App
    from trio_supervise.serve.metrics import Metrics
    from trio_supervise.serve.pool import WorkerPool

    app = App(WorkerPool(config()), Metrics())
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    await app({"type": "http", "method": "GET", "path": "/readyz"}, receive, send)
    assert sent[0]["status"] == 503 and json.loads(sent[1]["body"]) == {"status": "loading"}


async def test_a_client_that_disconnects_mid_stream_cancels_its_request() -> None:
    cfg = config(runner_args={"delay": 0.05})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            # A raw socket, closed after the first event: a client that goes away.
            body = json.dumps({"prompt": "p", "max_tokens": 200, "stream": True}).encode()
            stream = await trio.open_tcp_stream(*handle.address)
            await stream.send_all(
                b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            received = b""
            while b"data: " not in received:
                received += await stream.receive_some()
            await stream.aclose()
            worker = handle.pool.replicas["mock"][0].worker
            with trio.fail_after(20):
                # The worker's counter has no event (worker/ offers none): polled.
                while worker.statistics().cancelled == 0:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert worker.statistics().tokens < 200
            handle.drain()


async def test_metrics_parse_and_move_and_two_servers_share_a_process() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            first = await start(nursery, config())
            second = await start(nursery, config())
            assert first.address[1] != second.address[1]
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(3):
                    await client.post(f"{first.url}/v1/completions", json={"prompt": "a"})
                await client.post(f"{second.url}/v1/completions", json={"prompt": 1})

                async def samples(handle: ServerHandle) -> dict[tuple[str, str], float]:
                    text = (await client.get(f"{handle.url}/metrics")).text
                    out = {}
                    for family in text_string_to_metric_families(text):
                        for sample in family.samples:
                            if sample.name == "trio_supervise_requests_total":
                                out[(sample.labels["model"], sample.labels["outcome"])] = (
                                    sample.value
                                )
                    return out

                assert await samples(first) == {("mock", "finished"): 3.0}
                assert await samples(second) == {("?", "BadRequest"): 1.0}
            first.drain()
            second.drain()


async def test_the_serve_command_answers_then_drains_on_sigterm() -> None:
    import signal
    import subprocess
    import sys

    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_supervise._cli", "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        output = b""
        while b"serving" not in output:
            output += await process.stdout.receive_some()
        url = served_url(output)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
            assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        async for data in process.stdout:
            output += data
        assert await process.wait() == 0
        assert b"drained" in output


def test_the_serve_command_refuses_a_bad_config(tmp_path: Any) -> None:
    from trio_supervise._cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = -5\n[[workers]]\nname = 'a'\nrunner = 'm:f'\n")
    assert main(["serve", str(bad)]) == 2


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        ("BadRequest", 400, None),
        ("Backpressure", 429, 1.0),
        ("ContextPoisoned", 503, 1.0),
        ("HungWorker", 503, 1.0),
        ("ChildDied", 503, 1.0),
        ("OutOfMemory", 503, 1.0),
        ("WorkerStopped", 503, 1.0),
        ("Unrecoverable", 503, None),
        ("RequestTimeout", 504, None),
        ("RunnerError", 500, None),
        ("RateLimited", 429, 1.0),
        ("ServerError", 502, None),
        ("NetworkError", 502, None),
        ("Unauthorized", 502, None),
        ("CircuitOpen", 503, 1.0),
    ],
)
def test_each_error_maps_to_its_status(error: str, status: int, retry_after: float | None) -> None:
    import trio_supervise as ts
    from trio_supervise.openai import error_body, error_status
    from trio_supervise.serve.pool import ModelNotFound

    exc = getattr(ts, error)("what happened")
    assert error_status(exc) == (status, retry_after)
    body = error_body(exc, status)["error"]
    assert body["code"] == status and body["retryable"] is (
        exc.retryable if status != 500 else False
    )
    if status == 500:  # logged on the server, never echoed
        assert body["message"] == "internal error (logged on the server)"
    assert error_status(ModelNotFound("m")) == (404, None)
    assert error_status(KeyError("untyped")) == (500, None)
    assert error_status(ts.OutOfMemory("x", retry_after=2.5)) == (503, 2.5)


async def test_serve_ends_when_a_model_has_no_replica_left() -> None:
    import trio_supervise as ts

    cfg = config(
        runner="tests.serve.test_serve_pool:StoppingRunner",
        runner_args={"fail_instances": (0,), "error": ts.Unrecoverable("no driver")},
    )
    with trio.fail_after(30):
        with pytest.RaisesGroup(
            pytest.RaisesExc(ts.Unrecoverable, match=r"^model 'mock' has no replica left"),
        ):
            async with trio.open_nursery() as nursery:
                handle = await start(nursery, cfg)
                async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                    response = await client.post("/v1/completions", json={"prompt": "x"})
                    assert response.status_code == 503
                    assert "retry-after" not in response.headers  # Unrecoverable: no point


async def test_restarts_are_counted_by_cause_in_metrics() -> None:
    cfg = restarting_once()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                await client.post("/v1/completions", json={"prompt": "x"})
                text = (await client.get("/metrics")).text
            samples = {
                (s.labels.get("worker"), s.labels.get("cause")): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "trio_supervise_worker_restarts_total"
            }
            assert samples == {("mock#0", "ContextPoisoned"): 1.0}
            handle.drain()


async def test_readyz_is_503_while_a_replica_restarts() -> None:
    import trio_supervise as ts

    cfg = restarting_once(runner_args={"load_delay": 2.0})  # each tier loads for 2 s
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                assert (await client.get("/readyz")).status_code == 200
                body = {"prompt": "x", "stream": True}
                async with trio.open_nursery() as requests:
                    requests.start_soon(lambda: client.post("/v1/completions", json=body))
                    worker = handle.pool.replicas["mock"][0].worker
                    assert worker is not None
                    # The first tier failed on the request; the next one loads for 2 s.
                    await worker.state.wait_value(lambda s: s is not ts.WorkerState.READY)
                    restarting = await client.get("/readyz")
                    assert restarting.status_code == 503
                    assert restarting.json() == {"status": "loading"}
                assert (await client.get("/readyz")).status_code == 200
            handle.drain()


async def test_two_servers_share_one_port_with_reuse_port() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            first = await start(nursery, config(server={"reuse_port": True}))
            port = first.address[1]
            second = await start(nursery, config(server={"reuse_port": True, "port": port}))
            assert second.address[1] == port
            # Without SO_REUSEPORT, the port is taken.
            with socket.socket() as plain, pytest.raises(OSError, match="in use"):
                plain.bind(("127.0.0.1", port))
            async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
                for _ in range(8):  # each connection goes to one of the two
                    async with httpx.AsyncClient(base_url=first.url, timeout=10) as one:
                        reply = await one.post("/v1/completions", json={"prompt": "x"})
                        assert reply.status_code == 200
                served = [
                    h.pool.replicas["mock"][0].worker.statistics().finished  # type: ignore[union-attr]
                    for h in (first, second)
                ]
                assert sum(served) == 8
                assert (await client.get("/healthz")).status_code == 200
            first.drain()
            second.drain()
