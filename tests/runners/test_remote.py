"""RemoteRunner over real HTTP on loopback (real clock; each test bounded by fail_after).

Two kinds of backend: the project's own ``serve`` (self-hosting), and the fault-injecting app
of ``remote_backend`` (429, 500, 401, 400, a cut connection, a stall, an SSE error event).
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from tests.support.remote_backend import Backend, free_port, open_backend, run_backend
from trio_supervise import (
    Backoff,
    BadRequest,
    BreakerState,
    ChildStopped,
    CircuitBreaker,
    CircuitOpen,
    ConfigError,
    ContextPoisoned,
    Directive,
    EventKind,
    FinishReason,
    NetworkError,
    RateLimited,
    RebuildCause,
    Request,
    RequestTimeout,
    RestartIntensityExceeded,
    SamplingParams,
    ServerError,
    SupervisionEvent,
    Unauthorized,
    Unrecoverable,
    Usage,
    WorkerState,
    open_worker,
)
from trio_supervise.runners.mock import token_at
from trio_supervise.runners.remote import (
    REMOTE_POLICY,
    RemoteRunner,
    error_for_status,
    retry_after_seconds,
)
from trio_supervise.serve import ServeConfig
from trio_supervise.serve.server import ServerHandle, serve
from trio_supervise.testing import REMOTE_FAULT_ERRORS, Fault, FaultPlan, run_chaos

REMOTE = "trio_supervise.runners.remote:RemoteRunner"
VOCAB = 50_000


def request(rid: str, max_tokens: int = 5, seed: int = 1, prompt: str = "hello") -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, seed=seed))


def expected_text(req: Request) -> list[int]:
    return [token_at(req, i, VOCAB) for i in range(req.params.max_tokens)]


def remote_worker(url: str, *, model: str = "mock", **kwargs: Any) -> Any:
    """``open_worker`` for a RemoteRunner at ``url``: runner arguments and worker options mixed
    (``on_event`` and ``policy`` go to the worker, the rest to the runner)."""
    worker = {key: kwargs.pop(key) for key in ("on_event", "policy") if key in kwargs}
    return open_worker(REMOTE, runner_args={"base_url": url, "model": model, **kwargs}, **worker)


def front_config(url: str, **worker: Any) -> ServeConfig:
    args = {"base_url": url, "model": "mock", **worker.pop("runner_args", {})}
    return ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 2},
            "batching": {"max_wait": 0.001},
            "workers": [{"name": "front", "runner": REMOTE, "runner_args": args, **worker}],
        }
    )


# --- pure parts -----------------------------------------------------------------------------


def test_constructor_checks_and_normalises() -> None:
    runner = RemoteRunner("http://host:8000/v1/", model="m")
    assert runner.base_url == "http://host:8000"
    assert runner.max_concurrency == 64 and runner.needs_device is False
    assert repr(runner) == "RemoteRunner('http://host:8000', model='m')"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"base_url": "ftp://host", "model": "m"}, "http(s)://host"),
        ({"base_url": "http://h", "model": ""}, "model must be a non-empty str"),
        (
            {"base_url": "http://h", "model": "m", "api_key_env": "A", "api_key_file": "f"},
            "not both",
        ),
        ({"base_url": "http://h", "model": "m", "max_connections": 0}, "max_connections"),
        ({"base_url": "http://h", "model": "m", "read_timeout": -1}, "read_timeout"),
        ({"base_url": "http://h", "model": "m", "breaker": {"failure": 2}}, "['failure']"),
        ({"base_url": "http://h", "model": "m", "breaker": {"failures": 0}}, "failures"),
    ]
    for kwargs, words in cases:
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            RemoteRunner(**kwargs)


def test_status_taxonomy_and_retry_after() -> None:
    table = {
        429: RateLimited,
        401: Unauthorized,
        403: Unauthorized,
        400: BadRequest,
        422: BadRequest,
        500: ServerError,
        503: ServerError,
    }
    for status, cls in table.items():
        assert type(error_for_status(status, "x")) is cls
    assert error_for_status(429, "x", 3.0).retry_after == 3.0
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = time.time()
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(
        30, abs=1
    )


def test_remote_policy() -> None:
    resume = (
        RateLimited("x"),
        ServerError("x"),
        NetworkError("x"),
        RequestTimeout("x"),
        CircuitOpen("x"),
        BadRequest("x"),
    )
    for error in resume:
        assert REMOTE_POLICY.decide(error) is Directive.RESUME
    assert REMOTE_POLICY.decide(Unauthorized("x")) is Directive.RESTART
    assert REMOTE_POLICY.decide(ContextPoisoned("x")) is Directive.RESTART
    assert REMOTE_POLICY.decide(Unrecoverable("x")) is Directive.STOP
    assert (REMOTE_POLICY.intensity.max_restarts, REMOTE_POLICY.intensity.within) == (10, 60.0)
    assert REMOTE_POLICY.backoff.maximum == 5.0
    assert RemoteRunner.default_policy is REMOTE_POLICY


# --- against the fault-injecting backend ----------------------------------------------------


async def test_each_fault_has_its_outcome() -> None:
    backend = Backend()
    with trio.fail_after(30):
        async with (
            open_backend(backend) as running,
            remote_worker(running.url, read_timeout=0.5) as worker,
        ):
            ok = request("ok")
            tokens, _, _, usage = await worker.generate(ok).collect()
            assert list(tokens) == expected_text(ok) and usage is not None
            outcomes = {
                "429": RateLimited,
                "500": ServerError,
                "400": BadRequest,
                "drop": NetworkError,
                "stall": RequestTimeout,
                "error-event": ServerError,
                "malformed": ServerError,
                "404": Unrecoverable,
            }
            for action, cls in outcomes.items():
                backend.script.append(action)
                with pytest.raises(cls) as caught:
                    await worker.generate(request(f"r-{action}")).collect()
                if action == "429":
                    assert caught.value.retry_after == 2.0
            # A backend outage is RESUMEd: the same runner goes on, nothing restarted.
            assert worker.generation == 1
            await worker.generate(request("after")).collect()


async def test_the_chat_endpoint() -> None:
    backend = Backend()
    args = {"base_url": "", "model": "mock", "endpoint": "chat"}
    with trio.fail_after(30):
        async with open_backend(backend) as running:
            args["base_url"] = running.url
            async with open_worker(REMOTE, runner_args=args) as worker:
                want = request("c", max_tokens=6)
                tokens, text, reason, usage = await worker.generate(want).collect()
                assert backend.chat and list(tokens) == expected_text(want) and text
                assert reason is FinishReason.LENGTH and usage == Usage(1, 6)
                ids = Request("ids", (1, 2, 3), SamplingParams(max_tokens=2))
                with pytest.raises(BadRequest, match="text prompt"):
                    await worker.generate(ids).collect()
    with pytest.raises(ConfigError, match="endpoint"):
        RemoteRunner("http://h", model="m", endpoint="embeddings")


async def test_a_left_request_closes_its_stream_while_the_server_is_silent() -> None:
    backend = Backend(default="stall")
    with trio.fail_after(30):
        async with (
            open_backend(backend) as running,
            remote_worker(running.url, read_timeout=60, breaker={"failures": 1}) as worker,
        ):
            arrived = backend.arrived
            async with worker.generate(request("left")):
                await arrived.wait()  # the backend holds it without a byte
            # The consumer left: within a poll or two, the connection is closed, long before
            # read_timeout, and the backend stops.
            with trio.fail_after(2):
                await backend.disconnected.wait()
            assert worker.breaker_state is BreakerState.CLOSED  # not counted as a failure
            backend.default = "ok"
            await worker.generate(request("next")).collect()


async def test_unauthorized_restarts_and_rereads_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("old-secret\n")
    backend = Backend(key="old-secret")
    events: list[SupervisionEvent] = []
    with trio.fail_after(30):
        async with (
            open_backend(backend) as running,
            remote_worker(
                running.url, api_key_file=str(key_file), on_event=events.append
            ) as worker,
        ):
            await worker.generate(request("a")).collect()
            backend.key = "new-secret"  # the secret rotates on the server first
            with pytest.raises(Unauthorized):
                await worker.generate(request("b")).collect()
            key_file.write_text("new-secret\n")  # ... then in the mounted file
            while worker.generation < 2 or worker.state.value is not WorkerState.READY:
                await worker.state.wait_transition()
            await worker.generate(request("c")).collect()
    assert backend.auth_seen[-1] == "Bearer new-secret"
    assert worker.restart_causes["Unauthorized"] >= 1
    kinds = [e.kind for e in events]
    assert EventKind.RESTARTING in kinds and kinds.count(EventKind.READY) >= 2


async def test_rebuild_session_swaps_the_client_and_old_streams_finish(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k1")
    backend = Backend(delay=0.02)
    with trio.fail_after(30):
        async with (
            open_backend(backend) as running,
            remote_worker(running.url, api_key_file=str(key_file)) as worker,
        ):
            long = request("long", max_tokens=20)
            async with worker.generate(long) as stream:
                first = await stream.__anext__()  # streaming on the first client
                runner: RemoteRunner = worker._tier.runner  # type: ignore[union-attr]
                old = runner._session
                key_file.write_text("k2")
                await worker.rebuild(RebuildCause.REMOTE_AUTH_FAILURE)
                assert runner._session is not old and old is not None
                assert not old.client.is_closed  # the stream still uses it
                rest = [chunk async for chunk in stream]
            got = list(first.token_ids) + [t for c in rest for t in c.token_ids]
            assert got == expected_text(long)
            await trio.testing.wait_all_tasks_blocked()  # the batch's task ends
            assert old.client.is_closed  # closed once its last stream ended
            await worker.generate(request("next")).collect()
    assert backend.auth_seen[-1] == "Bearer k2"


async def test_sustained_unauthorized_uses_up_the_budget() -> None:
    backend = Backend(key="right")
    policy = attrs.evolve(REMOTE_POLICY, backoff=Backoff.none())
    args = {"base_url": "", "model": "mock"}
    with trio.fail_after(30):
        async with open_backend(backend) as running:
            args["base_url"] = running.url
            with pytest.raises(RestartIntensityExceeded) as caught:
                async with open_worker(REMOTE, runner_args=args, policy=policy):
                    pass  # never ready: every load is refused
    assert isinstance(caught.value.__cause__, Unauthorized)
    assert len(backend.auth_seen) == 11  # the first load and 10 restarts within 60 s


async def test_load_names_a_missing_model_and_a_missing_env_key() -> None:
    with trio.fail_after(30):
        async with open_backend(Backend(model="other")) as running:
            with pytest.raises(ChildStopped, match=r"does not serve model 'mock'.*\['other'\]"):
                async with remote_worker(running.url):
                    pass
            with pytest.raises(ChildStopped, match="TS_TEST_NO_SUCH_KEY"):
                async with remote_worker(
                    running.url, model="other", api_key_env="TS_TEST_NO_SUCH_KEY"
                ):
                    pass


async def test_breaker_opens_half_opens_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_supervise")
    backend = Backend()
    args = {"breaker": {"failures": 2, "reset_timeout": 1.5}}
    with trio.fail_after(30):
        async with open_backend(backend) as running, trio.open_nursery() as nursery:
            handle: ServerHandle = await nursery.start(
                serve, front_config(running.url, runner_args=args)
            )
            async with httpx.AsyncClient(base_url=handle.url) as client:
                body = {"prompt": "hi", "max_tokens": 3}
                backend.script.extend(["500", "500"])
                for _ in range(2):
                    assert (await client.post("/v1/completions", json=body)).status_code == 502
                calls = backend.completions
                fast = await client.post("/v1/completions", json=body)
                assert fast.status_code == 503 and "retry-after" in fast.headers
                assert fast.json()["error"]["type"] == "CircuitOpen"
                assert backend.completions == calls  # failed fast: the backend saw nothing
                status = (await client.get("/v1/workers")).json()["workers"][0]
                assert status["breaker"] == "open"
                metrics = (await client.get("/metrics")).text
                assert 'trio_supervise_circuit_breaker_state{worker="front#0"} 2.0' in metrics
                await trio.sleep(1.55)
                assert (await client.post("/v1/completions", json=body)).status_code == 200
                status = (await client.get("/v1/workers")).json()["workers"][0]
                assert status["breaker"] == "closed" and status["generation"] == 1
            handle.drain()
    events: list[SupervisionEvent] = [
        r.supervision_event for r in caplog.records if hasattr(r, "supervision_event")
    ]
    changes = [e.reason for e in events if e.kind is EventKind.BREAKER_CHANGED]
    assert changes == [
        "circuit breaker closed -> open",
        "circuit breaker open -> half_open",
        "circuit breaker half_open -> closed",
    ]


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


async def test_backend_down_then_back_is_served_without_a_restart() -> None:
    backend = Backend()
    port = free_port()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(run_backend, backend, port)
            args = {"breaker": {"failures": 100}, "connect_timeout": 1.0}
            async with remote_worker(running.url, **args) as worker:
                await worker.generate(request("before")).collect()
                running.scope.cancel()  # the backend goes away: connections are refused
                await trio.sleep(0.1)
                with pytest.raises(NetworkError):
                    await worker.generate(request("during")).collect()
                await nursery.start(run_backend, backend, port)
                tokens, *_ = await worker.generate(request("after")).collect()
                assert list(tokens) == expected_text(request("after"))
                assert worker.generation == 1
            nursery.cancel_scope.cancel()


async def test_a_front_started_before_its_backend_becomes_ready_after_it() -> None:
    backend = Backend()
    port = free_port()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cfg = front_config(f"http://127.0.0.1:{port}")
            handle: ServerHandle | None = None
            started = trio.Event()

            async def front() -> None:
                nonlocal handle
                handle = await nursery.start(serve, cfg)
                started.set()

            nursery.start_soon(front)
            await trio.sleep(0.5)  # the front's load keeps trying: nothing listens yet
            assert handle is None
            await nursery.start(run_backend, backend, port)
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


# --- self-hosting: a front whose runner is a RemoteRunner in front of another serve ---------


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


# --- the harness through a remote runner ----------------------------------------------------


async def test_run_chaos_through_a_remote_runner() -> None:
    backend = Backend(chaos=0.2)

    def factory(plan: FaultPlan) -> Any:
        # The backend's faults, and poisonings the plan injects into the runner on top.
        return open_worker(
            "trio_supervise.testing:FaultyRunner",
            runner_args={
                "inner": REMOTE,
                "plan": plan.to_dict(),
                "inner_args": {
                    "base_url": running.url,
                    "model": "mock",
                    "read_timeout": 0.3,
                    "breaker": {"failures": 1000},
                },
            },
            policy=REMOTE_POLICY,
        )

    ended = 0

    def calm_down() -> None:  # after the last request, the check that the handle serves is clean
        nonlocal ended
        ended += 1
        if ended == 150:
            backend.chaos = 0.0

    with trio.fail_after(60):
        async with open_backend(backend) as running:
            report = await run_chaos(
                factory,
                requests=150,
                concurrency=16,
                seed=3,
                plan=FaultPlan.every(40, Fault.POISON, token=1),
                expected=expected_text,
                timeout=50,
                on_progress=calm_down,
                fault_errors=REMOTE_FAULT_ERRORS,
            )
    assert report.ok, report.violations
    backend_errors = {f"failed: {cls.__name__}" for cls in REMOTE_FAULT_ERRORS}
    assert len(backend_errors & set(report.outcomes)) >= 3  # the backend's faults ...
    # ... and the plan's poisonings (batches 40, 80, 120, each after its first chunk: not when
    # the backend failed that batch first) were felt,
    assert report.restarts >= 1 and report.outcomes["failed: ContextPoisoned"] >= 1
    assert report.outcomes["finished"] > 75  # and most requests were served (about 95 here)


async def test_the_key_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-test-0123456789abcdef"
    key_file = tmp_path / "key"
    key_file.write_text(secret)
    backend = Backend(key=secret)
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(30):
        async with (
            open_backend(backend) as running,
            remote_worker(running.url, api_key_file=str(key_file)) as worker,
        ):
            await worker.generate(request("a")).collect()
            backend.script.extend(["401", "500"])
            for rid in ("b", "c"):
                with pytest.raises((Unauthorized, ServerError, ContextPoisoned)):
                    await worker.generate(request(rid)).collect()
            runner = worker._tier.runner  # type: ignore[union-attr]
            assert secret not in repr(runner) and secret not in repr(worker)
    assert caplog.records, "the run logs"
    for record in caplog.records:
        assert secret not in record.getMessage()
    assert f"Bearer {secret}" in backend.auth_seen


async def test_a_probe_that_leaves_or_streams_long_holds_nothing_back() -> None:
    backend = Backend(delay=0.01)
    args = {"base_url": "", "model": "mock", "breaker": {"failures": 1, "reset_timeout": 0.2}}
    with trio.fail_after(30):
        async with open_backend(backend) as running:
            args["base_url"] = running.url
            async with open_worker(REMOTE, runner_args=args) as worker:
                backend.script.append("500")
                with pytest.raises(ServerError):
                    await worker.generate(request("opens")).collect()
                assert worker.breaker_state is BreakerState.OPEN
                # A probe whose consumer leaves before the server answers frees its slot.
                await trio.sleep(0.25)
                backend.script.append("hang")
                arrived = backend.arrived
                async with worker.generate(request("probe-left")):
                    await arrived.wait()  # the probe reached the backend, which says nothing
                await backend.disconnected.wait()  # its stream was cancelled (within 0.1 s)
                await trio.testing.wait_all_tasks_blocked()
                assert worker.breaker_state is BreakerState.HALF_OPEN
                # The next probe streams a long completion: the 200 closes the breaker at once,
                # so another request is served meanwhile, not refused.
                async with worker.generate(request("probe-long", max_tokens=30)) as long:
                    await long.__anext__()
                    assert worker.breaker_state is BreakerState.CLOSED
                    await worker.generate(request("meanwhile")).collect()
                    rest = [chunk async for chunk in long]
                assert rest[-1].finish_reason is FinishReason.LENGTH


async def test_a_breaker_kept_across_restarts_reports_each_change_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_supervise")
    breaker = CircuitBreaker(failures=1, reset_timeout=60.0)
    backend = Backend()
    with trio.fail_after(30):
        async with open_backend(backend) as running:
            args = {"base_url": running.url, "model": "mock", "breaker": breaker}
            async with open_worker(RemoteRunner, runner_args=args) as worker:
                for _ in range(2):
                    await worker.restart()
                backend.script.append("500")
                with pytest.raises(ServerError):
                    await worker.generate(request("opens")).collect()
    changes = [
        r.supervision_event  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "supervision_event", None) is not None
        and r.supervision_event.kind is EventKind.BREAKER_CHANGED  # type: ignore[attr-defined]
    ]
    assert [(e.generation, e.reason) for e in changes] == [(3, "circuit breaker closed -> open")]


async def test_a_key_the_server_echoes_is_scrubbed(tmp_path: Path) -> None:
    secret = "sk-echo-0123456789"
    key_file = tmp_path / "key"
    key_file.write_text(secret)
    backend = Backend()
    args = {"base_url": "", "model": "mock", "api_key_file": str(key_file)}
    with trio.fail_after(30):
        async with open_backend(backend) as running:
            args["base_url"] = running.url
            async with open_worker(REMOTE, runner_args=args) as worker:
                backend.script.append("echo-key")
                with pytest.raises(Unauthorized) as caught:
                    await worker.generate(request("echo")).collect()
    assert "Bearer ***" in str(caught.value) and secret not in str(caught.value)
