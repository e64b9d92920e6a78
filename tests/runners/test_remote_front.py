"""A RemoteRunner behind ``serve`` (a front), over real HTTP on loopback (real clock; each test
bounded by fail_after): the statuses a front answers for its backend's faults, a front that
starts before its backend, replicas over several backends, and self-hosting (a front whose
backend is another ``serve``).
"""

from __future__ import annotations

import json
import socket

import httpx
import trio
import trio.testing

from tests.support.helpers import logged
from tests.support.remote_backend import (
    REMOTE,
    Backend,
    expected_text,
    front_config,
    open_backend,
    run_backend,
)
from trio_supervise import (
    Request,
    SamplingParams,
)
from trio_supervise.serve import ServeConfig
from trio_supervise.serve.server import ServerHandle, serve


async def test_http_statuses_through_the_front() -> None:
    backend = Backend()
    with trio.fail_after(30):
        async with open_backend(backend) as running, trio.open_nursery() as nursery:
            cfg = front_config(running.url, runner_args={"read_timeout": 0.5})
            handle: ServerHandle = await nursery.start(serve, cfg)
            async with httpx.AsyncClient(base_url=handle.url) as client:
                body = {"prompt": "hi", "max_tokens": 6}
                want = {"429": 429, "500": 502, "400": 400, "drop": 502, "stall": 504, "401": 502}
                for action, status in want.items():
                    backend.script.append(action)
                    response = await client.post("/v1/completions", json=body)
                    assert response.status_code == status, (action, response.text)
                    if status == 429:
                        assert response.headers["retry-after"] == "2"
                # A cut after the first byte: an SSE error event, then [DONE].
                backend.script.append("drop")
                events = []
                async with client.stream(
                    "POST", "/v1/completions", json={**body, "stream": True}
                ) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            events.append(line.removeprefix("data: "))
                assert events[-1] == "[DONE]"
                error = json.loads(events[-2])["error"]
                assert (error["type"], error["code"]) == ("NetworkError", 502)
                assert len(events) == 4  # two chunks, the error, [DONE]
            handle.drain()


async def test_a_front_started_before_its_backend_becomes_ready_after_it() -> None:
    backend = Backend()
    # Its port, bound but not listening: connections are refused until the backend takes it.
    with trio.fail_after(30), socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            cfg = front_config(f"http://127.0.0.1:{reserved.getsockname()[1]}")
            handle: ServerHandle | None = None
            started = trio.Event()

            async def front() -> None:
                nonlocal handle
                handle = await nursery.start(serve, cfg)
                started.set()

            with logged("is not ready") as refused:
                nursery.start_soon(front)
                await refused.wait()  # the front's load keeps trying: nothing listens yet
            assert handle is None
            await nursery.start(run_backend, backend, reserved)
            await started.wait()
            assert handle is not None
            async with httpx.AsyncClient(base_url=handle.url) as client:
                assert (await client.get("/readyz")).status_code == 200
                body = {"prompt": "hi", "max_tokens": 3}
                assert (await client.post("/v1/completions", json=body)).status_code == 200
                status = (await client.get("/v1/workers")).json()["workers"][0]
                assert status["generation"] == 1  # retried inside load, uncounted
            handle.drain()
            nursery.cancel_scope.cancel()


async def test_replicas_over_several_backends_move_a_failed_request() -> None:
    a, b = Backend(), Backend()
    with trio.fail_after(30):
        async with open_backend(a) as ra, open_backend(b) as rb, trio.open_nursery() as nursery:
            cfg = ServeConfig.from_dict(
                {
                    "server": {"port": 0, "drain_timeout": 2},
                    "batching": {"max_wait": 0.001, "max_batch_size": 1},
                    "workers": [
                        {
                            "name": "m",
                            "runner": REMOTE,
                            "runner_args": {"model": "mock"},
                            "replica_args": [{"base_url": ra.url}, {"base_url": rb.url}],
                        }
                    ],
                }
            )
            handle: ServerHandle = await nursery.start(serve, cfg)
            a.default = b.default = "500"
            a.script.clear()
            async with httpx.AsyncClient(base_url=handle.url) as client:
                body = {"prompt": "hi", "max_tokens": 3}
                # Both fail: each replica tried once, then the error.
                assert (await client.post("/v1/completions", json=body)).status_code == 502
                assert a.completions + b.completions == 2
                b.default = "ok"
                for _ in range(4):  # wherever it lands first, it ends on b
                    assert (await client.post("/v1/completions", json=body)).status_code == 200
            handle.drain()


# --- self-hosting: a front whose runner is a RemoteRunner in front of another serve ---------------


async def test_self_hosting_streams_end_to_end_with_the_same_text() -> None:
    back_cfg = ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 2},
            "batching": {"max_wait": 0.001},
            "workers": [
                {
                    "name": "mock",
                    "runner": "trio_supervise.runners.mock:MockRunner",
                    "runner_args": {"delay": 0.001},
                    "device": "cpu",
                }
            ],
        }
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            back: ServerHandle = await nursery.start(serve, back_cfg)
            front: ServerHandle = await nursery.start(serve, front_config(back.url + "/v1"))
            body = {"prompt": "once upon", "max_tokens": 8, "seed": 3, "stream": True}
            texts = []
            for handle in (front, back):
                async with (
                    httpx.AsyncClient(base_url=handle.url) as client,
                    client.stream("POST", "/v1/completions", json=body) as r,
                ):
                    assert r.status_code == 200
                    pieces, ids = [], []
                    async for line in r.aiter_lines():
                        data = line.removeprefix("data: ")
                        if line.startswith("data: ") and data != "[DONE]":
                            choice = json.loads(data)["choices"][0]
                            pieces.append(choice["text"])
                            ids += choice["token_ids"]
                    texts.append(("".join(pieces), ids))
            assert texts[0] == texts[1] and len(texts[0][1]) == 8
            want = Request("x", "once upon", SamplingParams(max_tokens=8, seed=3))
            assert texts[0][1] == expected_text(want)
            front.drain()
            back.drain()
