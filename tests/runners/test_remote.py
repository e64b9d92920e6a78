"""RemoteRunner over real HTTP on loopback (real clock; each test bounded by fail_after; a test
that waits for a timeout to pass jumps a clock that otherwise keeps the real one's pace): its
arguments, policy and status taxonomy; each fault of the fault-injecting backend of
``tests.support.remote_backend`` (429, 500, 401, 400, a cut connection, a stall, an SSE error
event); its circuit breaker; the fault harness through it.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.support.remote_backend import (
    REMOTE,
    Backend,
    expected_text,
    front_config,
    open_backend,
    remote_worker,
    request,
    run_backend,
)
from trio_supervise import (
    BadRequest,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    ConfigError,
    ContextPoisoned,
    Directive,
    EventKind,
    FinishReason,
    NetworkError,
    RateLimited,
    Request,
    RequestTimeout,
    SamplingParams,
    ServerError,
    SupervisionEvent,
    Unauthorized,
    Unrecoverable,
    Usage,
    open_worker,
)
from trio_supervise.runners.remote import (
    REMOTE_POLICY,
    RemoteRunner,
    error_for_status,
    retry_after_seconds,
)
from trio_supervise.serve.server import ServerHandle, serve
from trio_supervise.testing import REMOTE_FAULT_ERRORS, Fault, FaultPlan, run_chaos


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Trio's clock for a test that asks for it: at the real clock's pace (the backends and the
    clients do real I/O), and jumped forward where a timeout passing is the point."""
    return trio.testing.MockClock(rate=1.0)


# --- pure parts -----------------------------------------------------------------------------------


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


# --- against the fault-injecting backend ----------------------------------------------------------


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


async def test_requests_one_after_another_reuse_one_connection() -> None:
    """Each stream is read to the end of its body, past ``[DONE]``: its connection goes back
    to the pool, and the next request does not pay a new one (on either side)."""
    backend = Backend()
    with trio.fail_after(30):
        async with open_backend(backend) as running, remote_worker(running.url) as worker:
            for i in range(5):
                ask = request(f"r{i}")
                tokens, _, _, _ = await worker.generate(ask).collect()
                assert list(tokens) == expected_text(ask)
    assert backend.completions == 5 and len(backend.peers) == 1


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
            with trio.fail_after(10):  # a sixth of read_timeout, for a loaded machine
                await backend.disconnected.wait()
            assert worker.breaker_state is BreakerState.CLOSED  # not counted as a failure
            backend.default = "ok"
            await worker.generate(request("next")).collect()


async def test_backend_down_then_back_is_served_without_a_restart() -> None:
    backend = Backend()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(run_backend, backend, 0)
            args = {"breaker": {"failures": 100}, "connect_timeout": 1.0}
            async with remote_worker(running.url, **args) as worker:
                await worker.generate(request("before")).collect()
                running.scope.cancel()  # the backend goes away: connections are refused
                await running.stopped.wait()
                with pytest.raises(NetworkError):
                    await worker.generate(request("during")).collect()
                await nursery.start(run_backend, backend, running.port)  # back where it was
                tokens, *_ = await worker.generate(request("after")).collect()
                assert list(tokens) == expected_text(request("after"))
                assert worker.generation == 1
            nursery.cancel_scope.cancel()


# --- the circuit breaker --------------------------------------------------------------------------


async def test_breaker_opens_half_opens_and_closes(
    caplog: pytest.LogCaptureFixture, clock: trio.testing.MockClock
) -> None:
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
                clock.jump(1.5)  # the breaker's reset_timeout
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


async def test_a_probe_that_leaves_or_streams_long_holds_nothing_back(
    clock: trio.testing.MockClock,
) -> None:
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
                clock.jump(0.2)  # the breaker's reset_timeout
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


# --- the harness through a remote runner ----------------------------------------------------------


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
