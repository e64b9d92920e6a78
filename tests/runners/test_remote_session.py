"""A RemoteRunner's sessions over real HTTP on loopback (real clock; each test bounded by
fail_after): the key, read again for each new session (a refused key restarts the tier), a
rebuilt session beside the streams of the old one, and a key never logged nor echoed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from tests.support.remote_backend import (
    REMOTE,
    Backend,
    expected_text,
    open_backend,
    remote_worker,
    request,
)
from trio_supervise import (
    Backoff,
    ChildStopped,
    ContextPoisoned,
    EventKind,
    RebuildCause,
    RestartIntensityExceeded,
    ServerError,
    SupervisionEvent,
    Unauthorized,
    WorkerState,
    open_worker,
)
from trio_supervise.runners.remote import (
    REMOTE_POLICY,
    RemoteRunner,
)


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
                old = runner._sessions.current
                key_file.write_text("k2")
                await worker.rebuild(RebuildCause.REMOTE_AUTH_FAILURE)
                assert runner._sessions.current is not old and old is not None
                assert not old.closed  # the stream still uses it
                rest = [chunk async for chunk in stream]
            got = list(first.token_ids) + [t for c in rest for t in c.token_ids]
            assert got == expected_text(long)
            await trio.testing.wait_all_tasks_blocked()  # the batch's task ends
            assert old.closed  # closed once its last stream ended
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


def test_a_sessions_streams_spread_over_small_clients_made_as_needed() -> None:
    """10 connections: clients of 4, 4 and 2, the next made only once the others are full;
    each stream takes the client with the fewest streams for its connections."""
    import httpx

    from trio_supervise.runners._remote_session import POOL_CONNECTIONS, Session

    made: list[int] = []

    def make(connections: int) -> httpx.AsyncClient:
        made.append(connections)
        return httpx.AsyncClient()

    session = Session(make, 10)
    assert POOL_CONNECTIONS == 4 and made == [4]
    leases = [session.lease() for _ in range(4)]
    assert leases == [0, 0, 0, 0] and made == [4]  # one client until it is full
    assert session.lease() == 1 and made == [4, 4]
    session.give_back(0)
    assert session.lease() == 1  # the least busy: 1 has one stream, 0 has three
    assert [session.lease() for _ in range(3)] == [1, 0, 1] and made == [4, 4]
    assert session.lease() == 2 and made == [4, 4, 2]  # both full: a third client, of 2
    assert session.lease() == 2 and session.active == [4, 4, 2]
    assert session.lease() == 0  # past every bound: it waits for a connection of client 0
    assert made == [4, 4, 2]  # never more connections than asked for
