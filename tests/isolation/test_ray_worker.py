"""Ray isolation on the session's local Ray (``num_cpus=2``, loopback only, tests/conftest.py).

On the real clock (Ray works outside the event loop), each test bounded by fail_after; every
wait is for an event (a chunk, a state, an actor's death as Ray reports it), not for a time.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

ray = pytest.importorskip("ray")  # on loopback: tests/conftest.py sets Ray's switch first

import trio_supervise as ts  # noqa: E402
from tests.support.helpers import outcome  # noqa: E402
from trio_supervise import Request, SamplingParams, WorkerState  # noqa: E402
from trio_supervise.runners.mock import text_of, token_at  # noqa: E402
from trio_supervise.testing import Fault, FaultPlan, run_chaos  # noqa: E402

pytestmark = pytest.mark.ray

RUNNERS = "tests.support.child_runners:OnceRunner"
MOCK = "trio_supervise.runners.mock:MockRunner"


@pytest.fixture(autouse=True)
def _on_the_sessions_ray(ray_address: str) -> None:
    """Every test here runs on the session's local Ray (tests/conftest.py)."""


def req(rid: str, max_tokens: int = 4, **kwargs: Any) -> Request:
    return Request(rid, f"prompt {rid}", SamplingParams(max_tokens=max_tokens, seed=3), **kwargs)


def fault_free(rid: str, max_tokens: int = 4) -> str:
    request = req(rid, max_tokens)
    return "".join(text_of(token_at(request, i, 50_000)) for i in range(max_tokens))


def args(tmp_path: Path, fault: str, **kwargs: Any) -> dict[str, Any]:
    runner_args = {"marker": str(tmp_path / "fired"), "fault": fault, "delay": 0.01, **kwargs}
    return {"runner_args": runner_args, "device": "cpu", "isolation": "ray"}


def actor_of(worker: ts.Worker) -> Any:
    tier = worker._tier
    assert tier is not None and tier.home.actor is not None  # type: ignore[attr-defined]
    return tier.home.actor  # type: ignore[attr-defined]


async def assert_dead(handle: Any) -> None:
    """Ray says the actor is gone (its watch call fails), whenever it learns it."""
    with pytest.raises(ray.exceptions.RayActorError):
        await trio.to_thread.run_sync(ray.get, handle.watch.remote())


@pytest.mark.parametrize("frames", ["direct", "ray"])
async def test_streams_as_inline_and_says_where_the_actor_runs(frames: str) -> None:
    with trio.fail_after(60):
        async with ts.open_worker(
            MOCK, device="cpu", isolation="ray", ray_frames=frames
        ) as worker:  # fmt: skip
            actor = actor_of(worker)
            where = worker.placement()
            assert where["actor_id"] == actor.handle._actor_id.hex()
            assert where["node_ip"] == "127.0.0.1" and where["pid"] != os.getpid()
            assert where["frames"] == frames
            stream = worker.generate(req("a", 12))
            chunks = [chunk async for chunk in stream]
            assert "".join(c.text for c in chunks) == fault_free("a", 12)
            assert sum(len(c.token_ids) for c in chunks) == 12
            assert chunks[-1].finish_reason is ts.FinishReason.LENGTH
            assert worker.deterministic is True
    assert worker.state.value is WorkerState.STOPPED
    await assert_dead(actor.handle)


@pytest.mark.parametrize("frames", ["direct", "ray"])
async def test_an_actor_killed_mid_batch_is_replaced_and_its_stream_goes_on(
    tmp_path: Path, frames: str
) -> None:
    with trio.fail_after(60):
        async with ts.open_worker(
            RUNNERS, ray_frames=frames, **args(tmp_path, "stall", after=2)
        ) as worker:  # fmt: skip
            first = actor_of(worker)
            stream = worker.generate(req("a", 20))
            head = [await stream.__anext__(), await stream.__anext__()]
            ray.kill(first.handle)
            rest = [chunk async for chunk in stream]
            text = "".join(c.text for c in head + rest)
            assert text == fault_free("a", 20)  # no token lost, none duplicated
            assert worker.generation == 2 and worker.restart_causes["ChildDied"] == 1
            assert worker.statistics().continued == 1
            assert actor_of(worker).identity["actor_id"] != first.identity["actor_id"]
    await assert_dead(first.handle)


async def test_os_exit_in_the_actor_is_child_died_and_a_fresh_actor_serves(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with ts.open_worker(RUNNERS, **args(tmp_path, "exit")) as worker:
            first = actor_of(worker)
            kind, error = await outcome(worker.generate(req("a", 6, idempotent=False)))
            assert kind == "error" and isinstance(error, ts.ChildDied) and error.retryable
            assert await outcome(worker.generate(req("b"))) == ("ok", fault_free("b"))
            assert worker.generation == 2
            assert actor_of(worker).identity["pid"] != first.identity["pid"]
    await assert_dead(first.handle)


async def test_a_sticky_cuda_error_ends_the_actor_and_a_fresh_process_takes_over(
    tmp_path: Path,
) -> None:
    runner_args = {"marker": str(tmp_path / "fired"), "delay": 0.01}
    with trio.fail_after(60):
        async with ts.open_worker(
            "tests.support.child_runners:StickyOnceRunner", runner_args=runner_args, device="cpu",
            isolation="ray",
        ) as worker:  # fmt: skip
            first = actor_of(worker)
            kind, error = await outcome(worker.generate(req("a", 6, continuation="off")))
            assert kind == "error" and isinstance(error, ts.ContextPoisoned)
            await assert_dead(first.handle)  # the poisoned process is gone, not reused
            assert await outcome(worker.generate(req("b"))) == ("ok", fault_free("b"))
            assert actor_of(worker).identity["pid"] != first.identity["pid"]


async def test_a_hang_is_hung_worker_and_the_actor_is_killed(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with ts.open_worker(RUNNERS, hang_timeout=3.0, **args(tmp_path, "hang")) as worker:
            first = actor_of(worker)
            kind, error = await outcome(worker.generate(req("a", 6, continuation="off")))
            assert kind == "error" and isinstance(error, ts.HungWorker)
            assert await outcome(worker.generate(req("b"))) == ("ok", fault_free("b"))
            assert worker.restart_causes["HungWorker"] == 1
            await assert_dead(first.handle)


async def test_a_runner_that_blocks_its_loop_is_silent_and_replaced(tmp_path: Path) -> None:
    """No hang_timeout: the heartbeat, answered from the actor's Trio loop, finds it."""
    with trio.fail_after(60):
        async with ts.open_worker(
            RUNNERS, heartbeat_timeout=4.0, **args(tmp_path, "hang")
        ) as worker:  # fmt: skip
            first = actor_of(worker)
            kind, error = await outcome(worker.generate(req("a", 6, continuation="off")))
            assert kind == "error" and isinstance(error, ts.ChildDied)
            assert "no heartbeat" in str(error)
            assert await outcome(worker.generate(req("b"))) == ("ok", fault_free("b"))
            await assert_dead(first.handle)


@pytest.mark.parametrize("frames", ["direct", "ray"])
async def test_a_runner_loop_that_ends_ends_the_actor(tmp_path: Path, frames: str) -> None:
    with trio.fail_after(60):
        async with ts.open_worker(
            RUNNERS, ray_frames=frames, **args(tmp_path, "system_exit")
        ) as worker:  # fmt: skip
            first = actor_of(worker)
            kind, error = await outcome(worker.generate(req("a", 6, continuation="off")))
            # The chunk sent before SystemExit reached us, then the batch's end: the death.
            assert kind == "error" and isinstance(error, ts.ChildDied)
            assert "event loop in the Ray actor raised SystemExit(3)" in str(error)
            assert await outcome(worker.generate(req("b"))) == ("ok", fault_free("b"))
            await assert_dead(first.handle)


async def test_a_sticky_error_ends_the_actor_even_when_the_policy_resumes(
    tmp_path: Path,
) -> None:
    resume = ts.Policy(ts.rules(ts.on(ts.ContextPoisoned, ts.Directive.RESUME)))
    runner_args = {"marker": str(tmp_path / "fired"), "delay": 0.01}
    with trio.fail_after(60):
        async with ts.open_worker(
            "tests.support.child_runners:StickyOnceRunner", runner_args=runner_args, device="cpu",
            isolation="ray", policy=resume,
        ) as worker:  # fmt: skip
            first = actor_of(worker)
            kind, error = await outcome(worker.generate(req("a", 6, continuation="off")))
            assert kind == "error" and isinstance(error, ts.ContextPoisoned)
            await assert_dead(first.handle)
            assert await outcome(worker.generate(req("b"))) == ("ok", fault_free("b"))
            assert actor_of(worker).identity["pid"] != first.identity["pid"]


async def test_a_bad_import_path_is_a_config_error_at_once() -> None:
    with trio.fail_after(60):
        with pytest.raises(ts.ConfigError, match=r"cannot import runner module 'no_such'"):
            async with ts.open_worker("no_such:Runner", device="cpu", isolation="ray"):
                pass
        with pytest.raises(ts.ConfigError, match=r"factory got bad arguments: \['x'\]"):
            async with ts.open_worker(
                "tests.support.child_runners:failing_factory", runner_args={"x": 1}, device="cpu",
                isolation="ray",
            ):  # fmt: skip
                pass


async def test_a_runner_that_fails_to_build_opens_no_frame_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The actor answers ``Fatal`` with no listener: it is retired, nothing may connect."""
    from trio_supervise.isolation.ray import _home

    real, listeners = _home.RayActors.request, []

    async def request(self: Any, actor: Any, call: Any, within: Any) -> Any:
        try:
            return await real(self, actor, call, within)
        finally:
            listeners.append(actor.frames_at)

    monkeypatch.setattr(_home.RayActors, "request", request)
    with trio.fail_after(60), pytest.raises(ts.ConfigError, match="factory got bad arguments"):
        async with ts.open_worker(
            "tests.support.child_runners:failing_factory", runner_args={"x": 1}, device="cpu",
            isolation="ray",
        ):  # fmt: skip
            pass
    assert listeners == [None]


async def test_a_standby_actor_takes_over_and_the_next_one_parks(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with ts.open_worker(RUNNERS, standby=True, **args(tmp_path, "none")) as worker:
            actors = worker._children
            assert actors is not None
            while actors.spare is None:
                await actors.spare_parked.wait()
            spare, first = actors.spare, actor_of(worker)
            ray.kill(first.handle)
            await worker.state.wait_value(lambda s: s is not WorkerState.READY)
            await worker.state.wait_value(WorkerState.READY)
            assert actor_of(worker) is spare  # swapped in, not made
            while actors.spare is None:
                await actors.spare_parked.wait()
            assert actors.spare is not spare
            assert await outcome(worker.generate(req("b"))) == ("ok", fault_free("b"))


async def test_the_frame_listener_takes_only_its_parent() -> None:
    """Once the worker is connected, the actor's listener is closed: nothing else gets in."""
    with trio.fail_after(60):
        async with ts.open_worker(MOCK, device="cpu", isolation="ray") as worker:
            host, port, key = actor_of(worker).frames_at
            assert len(key) == 32
            with pytest.raises(OSError):
                await trio.open_tcp_stream(host, port)
            assert await outcome(worker.generate(req("a"))) == ("ok", fault_free("a"))


async def test_a_key_that_is_wrong_gets_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that sends the wrong key is closed, one reset halfway is dropped, and the
    worker's own still gets in."""
    from trio_supervise.isolation.ray import _home

    real = _home.RayHome._connect

    async def first_a_stranger(self: Any, actor: Any, at: Any, nursery: Any) -> None:
        host, port, key = at
        async with await trio.open_tcp_stream(host, port) as stranger:
            await stranger.send_all(bytes(len(key)))
            assert await stranger.receive_some() == b""  # closed on us
        rude = trio.socket.socket()  # half a key, then a reset: the listener goes on
        await rude.connect((host, port))
        await rude.send(key[:5])
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()
        await real(self, actor, at, nursery)

    monkeypatch.setattr(_home.RayHome, "_connect", first_a_stranger)
    with trio.fail_after(60):
        async with ts.open_worker(MOCK, device="cpu", isolation="ray") as worker:
            assert worker.placement()["frames"] == "direct"
            assert await outcome(worker.generate(req("a"))) == ("ok", fault_free("a"))


async def test_an_actor_out_of_reach_streams_through_ray(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from trio_supervise.isolation.ray import _home

    async def unreachable(host: str, port: int) -> trio.SocketStream:
        raise OSError(113, "No route to host")

    monkeypatch.setattr(_home.trio, "open_tcp_stream", unreachable)
    with trio.fail_after(60):
        async with ts.open_worker(MOCK, device="cpu", isolation="ray") as worker:
            assert worker.placement()["frames"] == "ray"
            assert await outcome(worker.generate(req("a", 8))) == ("ok", fault_free("a", 8))
    assert "no frame connection to its Ray actor" in caplog.text
    assert "frames go through Ray" in caplog.text


async def test_ray_options_reach_ray() -> None:
    options = {"name": "ts-test-model", "namespace": "ts-tests", "num_cpus": 0.5}
    with trio.fail_after(60):
        async with ts.open_worker(MOCK, device="cpu", isolation="ray", ray_options=options):
            ray.get_actor("ts-test-model-MockRunner-1", namespace="ts-tests")  # or ValueError


async def test_every_request_gets_one_outcome_under_chaos_through_a_ray_tier() -> None:
    plan = FaultPlan.random(
        5, {Fault.POISON: 0.01, Fault.OOM: 0.01, Fault.EXIT: 0.01, Fault.KILL: 0.01},
        token=1, delay=0.001,
    )  # fmt: skip
    policy = ts.Policy(
        ts.DEVICE_POLICY.decider, ts.RestartIntensity(100, 3600.0), ts.Backoff.none()
    )

    def factory(plan: FaultPlan) -> Any:
        return ts.open_worker(
            "trio_supervise.testing:FaultyRunner",
            runner_args={"inner": MOCK, "plan": plan.to_dict()},
            device="cpu", isolation="ray", policy=policy, standby=True, max_pending=1000,
        )  # fmt: skip

    report = await run_chaos(
        factory, requests=200, concurrency=16, plan=plan, seed=5, timeout=120.0
    )
    assert report.ok, report.violations
    assert report.restarts >= 1 and report.compared == 200


def test_the_chaos_command_through_a_ray_tier(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_supervise._cli import main

    argv = ["chaos", "--requests", "60", "--isolation", "ray", "--fault-rate", "0.05"]
    assert main(argv) == 0
    assert "all invariants hold" in capsys.readouterr().out


def test_serve_drains_on_sigterm_with_a_ray_tier(tmp_path: Path, ray_address: str) -> None:
    """serve joins the session's Ray with RAY_ADDRESS (ray.init in a thread, and the SIGTERM
    handler Ray's C++ core installs taken back: no stack dump, no abort 3 s into the drain),
    answers through a Ray tier, drains on SIGTERM."""
    config = tmp_path / "ray.toml"
    config.write_text(
        "[server]\nport = 0\n[[workers]]\nname = 'mock'\n"
        "runner = 'trio_supervise.runners.mock:MockRunner'\ndevice = 'cpu'\n"
        "isolation = 'ray'\nray_options = { num_cpus = 0 }\n"
    )
    code = f"""
import os, re, signal, subprocess, sys, httpx
serve = subprocess.Popen([sys.executable, "-m", "trio_supervise._cli", "serve", {str(config)!r}],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
out = b""
while b"serving" not in out:
    line = serve.stdout.readline()
    assert line, out
    out += line
url = re.search(rb"^serving \\[.*\\] on (\\S+)$", out, re.M).group(1).decode()
reply = httpx.post(url + "/v1/completions", json={{"prompt": "hi", "max_tokens": 3}}, timeout=30)
assert reply.status_code == 200, reply.text
workers = httpx.get(url + "/v1/workers", timeout=30).json()["workers"]
assert workers[0]["isolation"] == "ray" and workers[0]["actor_id"], workers
assert workers[0]["node_ip"] == "127.0.0.1", workers
serve.send_signal(signal.SIGTERM)
out += serve.stdout.read()
assert serve.wait(timeout=60) == 0, out
assert b"drained" in out, out
assert b"SIGTERM received" not in out, out  # abseil's handler (Ray's C++ core) is not ours
print("ok")
"""
    env = dict(os.environ, RAY_ADDRESS=ray_address)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def test_without_ray_the_config_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))  # fmt: skip
    with pytest.raises(ts.ConfigError, match=r"pip install 'trio-supervise\[ray\]'"):
        ts.Worker(MOCK, device="cpu", isolation="ray")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_restarts": 3}, r"ray_options takes .*; got max_restarts"),
        ({"num_gpus": -1}, r"ray_options.num_gpus must be a number >= 0, got -1"),
        ({"name": ""}, r"ray_options.name must be a non-empty str"),
        ("num_gpus=1", r"ray_options must be a mapping"),
    ],
)
def test_bad_ray_options_are_config_errors(options: Any, match: str) -> None:
    with pytest.raises(ts.ConfigError, match=match):
        ts.Worker(MOCK, device="cpu", isolation="ray", ray_options=options)


def test_ray_options_need_ray_isolation() -> None:
    with pytest.raises(ts.ConfigError, match=r"ray_options, ray_address and ray_frames need"):
        ts.Worker(MOCK, device="cpu", isolation="process", ray_options={"num_gpus": 1})
    with pytest.raises(ts.ConfigError, match=r"ray_frames need isolation='ray', got 'inline'"):
        ts.Worker(MOCK, device="cpu", ray_frames="ray")


def test_ray_frames_is_direct_or_ray() -> None:
    with pytest.raises(ts.ConfigError, match=r"ray_frames must be 'direct' or 'ray', got 'tcp'"):
        ts.Worker(MOCK, device="cpu", isolation="ray", ray_frames="tcp")


async def test_a_cluster_that_cannot_be_joined_is_a_config_error_naming_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's own words for a refused join (a missing auth token, nothing listening) are a
    ConnectionError after about 20 s that blames a crashed instance; ours says what to check.
    Ray's part is stood in for: this process has joined the session's Ray already."""
    import ray

    from trio_supervise.isolation.ray import RUNTIME, ray_runtime

    def refuse(**kwargs: Any) -> None:
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    users = RUNTIME.users
    with pytest.raises(ts.ConfigError, match=r"'10\.0\.0\.9:6379'.*RAY_AUTH_TOKEN_PATH"):
        async with ray_runtime("10.0.0.9:6379"):
            pytest.fail("joined a cluster that refused us")
    assert RUNTIME.users == users


async def test_a_request_for_a_replica_no_node_can_host_times_out() -> None:
    """The replica's actor asks for a resource no node has, so Ray never places it: a request
    waits in the pool's queue and ends with RequestTimeout at its deadline, not never."""
    from trio_supervise.serve import ServeConfig
    from trio_supervise.serve.pool import WorkerPool

    config = ServeConfig.from_dict(
        {
            "server": {"request_timeout": 1.0},
            "workers": [
                {
                    "name": "nowhere",
                    "runner": MOCK,
                    "device": "cpu",
                    "isolation": "ray",
                    "ray_options": {"resources": {"no_such_node": 1}},
                }
            ],
        }
    )
    pool = WorkerPool(config)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            stream = pool.generate(req("r1"))
            with pytest.raises(ts.RequestTimeout, match="none was ready"):
                await stream.collect()
            assert not pool.replicas["nowhere"][0].ready
            nursery.cancel_scope.cancel()
