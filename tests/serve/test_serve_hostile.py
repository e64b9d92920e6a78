"""No request can kill, starve or strand the server (issue 24): each hostile or unlucky request
the red team found, over real HTTP on loopback (real clock, each test bounded by fail_after)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import trio_supervise as ts
from tests.support.helpers import serve_config as config
from tests.support.helpers import served_url
from tests.support.helpers import start_server as start
from trio_supervise.serve.pool import WorkerPool
from trio_supervise.serve.server import ServerHandle, serve

MOCK = "trio_supervise.runners.mock:MockRunner"


async def raw(handle: ServerHandle, request: bytes) -> bytes:
    """Send bytes on a fresh connection; everything the server sends until it closes."""
    stream = await trio.open_tcp_stream(*handle.address)
    async with stream:
        await stream.send_all(request)
        received = b""
        while data := await stream.receive_some():
            received += data
    return received


def post(body: bytes, *, version: str = "1.1", headers: str = "") -> bytes:
    return (
        f"POST /v1/completions HTTP/{version}\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


# --- 1. what a request carries is checked at the edge -----------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"prompt": "The ", "max_tokens": 4, "seed": 18446744073709551616}', "seed"),
        ('{"prompt": "The ", "max_tokens": 18446744073709551616}', "max_tokens"),
        ('{"prompt": "The ", "max_tokens": 4097}', "max_tokens"),
        ('{"prompt": "\\ud800", "max_tokens": 4}', "surrogate"),
        ('{"prompt": "a", "stop": "\\ud800"}', "surrogate"),
        ('{"prompt": "a", "n": true}', "n"),
        ('{"prompt": "a", "n": 1.0}', "n"),
        ('{"prompt": "a", "max_tokens": 4.0}', "max_tokens"),
        ('{"prompt": "a", "max_tokens": true}', "max_tokens"),
        ('{"prompt": "a", "temperature": "1"}', "temperature"),
        ('{"prompt": "a", "temperature": 1e400}', "Number out of range"),
        ('{"prompt": "a", "seed": ' + "9" * 5000 + "}", "out of range"),
        ('{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', "stop"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
async def test_a_body_no_tier_could_carry_is_a_400_that_names_the_field(
    body: str, field: str
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config())
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                response = await client.post(
                    "/v1/completions", content=body, headers={"content-type": "application/json"}
                )
                assert response.status_code == 400, response.text
                error = response.json()["error"]
                assert field in error["message"] and error["type"] == "BadRequest"
                assert (await client.get("/healthz")).status_code == 200
            handle.drain()


async def test_max_tokens_past_the_model_length_names_both_numbers() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config(max_model_len=64))
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                response = await client.post(
                    "/v1/completions", json={"prompt": "a", "max_tokens": 65}
                )
                assert response.status_code == 400
                message = response.json()["error"]["message"]
                assert "at most 64" in message and "got 65" in message
                ok = await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 64})
                assert ok.status_code == 200
            handle.drain()


def test_a_request_refuses_what_no_tier_could_carry() -> None:
    with pytest.raises(ts.BadRequest, match="seed must be an int in"):
        ts.SamplingParams(max_tokens=4, seed=2**64)
    with pytest.raises(ts.BadRequest, match="prompt must be valid Unicode text"):
        ts.Request("r", "\ud800", ts.SamplingParams(max_tokens=4))


async def test_a_request_its_child_cannot_be_sent_fails_alone_and_the_tier_lives() -> None:
    """Defence in depth, past the edge: a valid request that no frame to the child can carry
    (a prompt over MAX_FRAME) fails alone with BadRequest; its batch mate finishes; nothing
    restarts."""
    from trio_supervise.isolation._frames import MAX_FRAME

    huge = ts.Request("huge", "x" * (MAX_FRAME + 1), ts.SamplingParams(max_tokens=4))
    good = ts.Request("good", "The ", ts.SamplingParams(max_tokens=4, seed=1))
    with trio.fail_after(60):
        async with ts.open_worker(MOCK, device="cpu", isolation="process") as worker:
            refused, served = worker.submit(ts.Batch([huge, good]))
            with pytest.raises(ts.BadRequest, match="cannot be sent to its tier: MalformedFrame"):
                await refused.collect()
            _, text, _, _ = await served.collect()
            _, again, _, _ = await worker.generate(good).collect()
            assert text and again == text
            assert worker.generation == 1 and worker.state.value is ts.WorkerState.READY


# --- 2. a request's deadline holds wherever it waits --------------------------------------------


async def test_a_request_waiting_for_a_replica_that_never_loads_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = config(server={"request_timeout": 10}, runner_args={"load_delay": 1e9})
    pool = WorkerPool(cfg)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        start = trio.current_time()
        stream = pool.generate(ts.Request("r", "p", ts.SamplingParams(max_tokens=2)))
        with pytest.raises(ts.RequestTimeout, match="none was ready"):
            await stream.collect()
        assert trio.current_time() - start == pytest.approx(10)
        assert not pool._queues["mock"]  # it left the queue
        nursery.cancel_scope.cancel()


# --- 3. one client cannot hold a replica ---------------------------------------------------------


async def test_a_whole_request_is_cancelled_when_its_client_leaves() -> None:
    cfg = config(runner_args={"delay": 0.01})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            worker = handle.pool.replicas["mock"][0].worker
            assert worker is not None
            stream = await trio.open_tcp_stream(*handle.address)
            body = json.dumps({"prompt": "p", "max_tokens": 4000}).encode()
            await stream.send_all(post(body))
            # The worker's counters have no event (worker/ offers none): polled.
            while worker.statistics().in_flight == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
            await stream.aclose()  # the client leaves before the answer
            while worker.statistics().cancelled == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert worker.statistics().tokens < 4000
            handle.drain()


# --- 5. a drain ends every answer well-formed ----------------------------------------------------


async def test_a_drain_ends_every_stream_with_its_end_and_done() -> None:
    """Streams that finish within the drain keep their final chunk; streams still running when
    it ends get an error event; each then ends with [DONE]; a request during the drain gets a
    whole 503."""
    cfg = config(
        server={"drain_timeout": 1.0},
        runner_args={"delay": 0.01, "max_concurrency": 16},
        replicas=2,
    )
    results: dict[int, list[Any]] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            streaming = trio.Semaphore(0)

            async def one(client: httpx.AsyncClient, i: int) -> None:
                events: list[Any] = []
                max_tokens = 4000 if i % 2 else 40  # odd: past the drain; even: within it
                body = {"prompt": f"p{i}", "max_tokens": max_tokens, "stream": True}
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            if not events:
                                streaming.release()
                            data = line.removeprefix("data: ")
                            events.append(data if data == "[DONE]" else json.loads(data))
                results[i] = events

            async with (
                httpx.AsyncClient(base_url=handle.url, timeout=30) as client,
                trio.open_nursery() as clients,
            ):
                for i in range(12):
                    clients.start_soon(one, client, i)
                for _ in range(12):
                    await streaming.acquire()
                handle.drain()
                late = await client.post("/v1/completions", json={"prompt": "late"})
                assert late.status_code == 503 and late.json()["error"]["type"] == "WorkerStopped"
    assert sorted(results) == list(range(12))
    for i, events in results.items():
        assert events[-1] == "[DONE]"
        last = events[-2]
        if i % 2:
            assert last["error"]["type"] == "WorkerStopped", last
        else:
            assert last["choices"][0]["finish_reason"] == "length", last
            assert sum(len(e["choices"][0]["token_ids"]) for e in events[:-1]) == 40
        assert all("error" not in e for e in events[:-2])


# --- 6. connections ------------------------------------------------------------------------------


async def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config(server={"body_timeout": 0.2}))
            # Complete headers, then a body that never comes.
            received = await raw(handle, post(b'{"prompt": "a"}')[:-5])
            assert received.startswith(b"HTTP/1.1 408 ")
            assert b'"type":"RequestTimeout"' in received
            handle.drain()


async def test_past_max_connections_a_request_gets_a_503_and_its_connection_closes() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config(server={"max_connections": 2}))
            slow = [await trio.open_tcp_stream(*handle.address) for _ in range(2)]
            for stream in slow:  # two requests whose bodies are still to come
                await stream.send_all(post(b'{"prompt": "a"}')[:-5])
            await handle.app.wait_open_requests(lambda n: n >= 2)
            received = await raw(handle, post(b'{"prompt": "a"}'))
            assert received.startswith(b"HTTP/1.1 503 ")
            assert b"connection: close" in received.lower() and b"retry-after: 1" in received
            for stream in slow:
                await stream.aclose()
            await handle.app.wait_open_requests(lambda n: n == 0)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                ok = await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
                assert ok.status_code == 200
            handle.drain()


@pytest.mark.parametrize(("version", "headers"), [("1.0", ""), ("1.1", "connection: close\r\n")])
async def test_a_stream_closes_after_done_under_http_1_0_and_connection_close(
    version: str, headers: str
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config())
            body = json.dumps({"prompt": "a", "max_tokens": 5, "stream": True}).encode()
            # raw() reads until the server closes the connection: it returns only if it does.
            received = await raw(handle, post(body, version=version, headers=headers))
            assert b"data: [DONE]\n\n" in received
            assert received.count(b'"text_completion"') == 5
            handle.drain()


# --- 7. bodies -----------------------------------------------------------------------------------


async def test_content_length_with_transfer_encoding_is_a_400_and_nothing_after_is_read() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config())
            smuggled = b"GET /v1/workers HTTP/1.1\r\nhost: x\r\n\r\n"
            body = b'{"prompt": "a"}'
            chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
            request = (
                b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n" + chunked + smuggled
            )
            received = await raw(handle, request)
            assert received.startswith(b"HTTP/1.1 400 ") and received.count(b"HTTP/1.1") == 1
            assert b"Transfer-Encoding" in received
            handle.drain()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_is_not_json_is_a_415(content_type: str | None) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, config())
            headers = {} if content_type is None else {"content-type": content_type}
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                response = await client.post(
                    "/v1/completions", content=b'{"prompt": "a"}', headers=headers
                )
                assert response.status_code == 415
                assert response.json()["error"]["type"] == "UnsupportedMediaType"
                charset = {"content-type": "application/json; charset=utf-8"}
                response = await client.post(
                    "/v1/completions", content=b'{"prompt": "a"}', headers=charset
                )
                assert response.status_code == 200
            handle.drain()


# --- 4. signals and exit codes -------------------------------------------------------------------


async def serve_process(tmp_path: Path, toml: str) -> tuple[trio.Process, bytes]:
    path = tmp_path / "serve.toml"
    path.write_text(toml)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_supervise._cli", "serve", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return process, b""


async def read_until(process: trio.Process, output: bytes, marker: bytes) -> bytes:
    assert process.stdout is not None
    while marker not in output:
        data = await process.stdout.receive_some()
        assert data, f"the process ended before {marker!r}: {output.decode(errors='replace')}"
        output += data
    return output


async def read_all(process: trio.Process, output: bytes) -> bytes:
    assert process.stdout is not None
    async for data in process.stdout:
        output += data
    return output


def serve_toml(server: dict[str, Any], **worker: Any) -> str:
    """A serve config of one mock model on the CPU, as TOML text (port 0)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    table = {"name": "mock", "runner": MOCK, "device": "cpu", **worker}
    lines = ["[server]", *(f"{k} = {value(v)}" for k, v in {"port": 0, **server}.items())]
    lines += ["[[workers]]", *(f"{k} = {value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


LOADING = serve_toml({}, runner_args={"load_delay": 600.0})


@pytest.mark.slow
async def test_sigterm_while_a_replica_loads_drains_and_exits_0(tmp_path: Path) -> None:
    with trio.fail_after(60):
        process, output = await serve_process(tmp_path, LOADING)
        # The listener is bound (and the signals handled) before the replicas load.
        output = await read_until(process, output, b"listening on")
        process.send_signal(signal.SIGTERM)
        output = await read_all(process, output)
        assert await process.wait() == 0, output.decode()
        assert b"Traceback" not in output


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_a_second_signal_during_the_drain_exits_at_once_with_one_line(
    tmp_path: Path, signum: int, code: int
) -> None:
    toml = serve_toml({"drain_timeout": 60}, runner_args={"delay": 0.05})
    with trio.fail_after(60):
        process, output = await serve_process(tmp_path, toml)
        output = await read_until(process, output, b"serving")
        url = served_url(output)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = {"prompt": "a", "max_tokens": 4000, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                assert (await lines.__anext__()).startswith("data: ")  # streaming
                process.send_signal(signal.SIGTERM)
                # Another process's state: there is no event to wait on.
                while (await client.get("/readyz")).json()["status"] != "draining":  # noqa: ASYNC110
                    await trio.sleep(0.01)
                process.send_signal(signum)
                output = await read_all(process, output)
                await lines.aclose()
        assert await process.wait() == code, output.decode()
        assert b"Traceback" not in output and b"ExceptionGroup" not in output
        assert f"exit {code}".encode() in output


@pytest.mark.slow
async def test_a_pool_that_gives_up_exits_1_with_one_line(tmp_path: Path) -> None:
    toml = serve_toml(
        {"max_worker_restarts": 0}, runner_args={"no_such_argument": 1}, isolation="process"
    )
    with trio.fail_after(60):
        process, output = await serve_process(tmp_path, toml)
        output = await read_all(process, output)
        assert await process.wait() == 1, output.decode()
        assert b"Traceback" not in output
        lines = [line for line in output.decode().splitlines() if "gave up" in line]
        assert len(lines) == 1, output.decode()
        assert lines[0].rstrip().endswith("so the supervisor gives up"), output.decode()


@pytest.mark.parametrize(
    ("limits", "raised_to", "warned"),
    [
        ((1024, 4096), 1256, False),  # raised to fit
        ((1024, 1100), 1100, True),  # raised as far as the hard limit goes, and said
        ((65536, 65536), None, False),  # room already
    ],
)
def test_serve_raises_the_open_files_limit_to_fit_max_connections(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    limits: tuple[int, int],
    raised_to: int | None,
    warned: bool,
) -> None:
    import resource

    from trio_supervise.serve import server

    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits)
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: set_to.append(value))
    server._make_room_for(1000)
    assert set_to == ([] if raised_to is None else [(raised_to, limits[1])])
    assert ("max_connections=1000" in caplog.text) is warned


async def test_a_drain_while_the_replicas_load_answers_the_waiting_requests_at_once() -> None:
    """A request waits in the pool's queue for a replica that is still loading; a drain stops
    the replicas and the request gets a whole 503 WorkerStopped at once (not a 504 at its
    deadline, not nothing), and serve returns."""
    cfg = config(server={"request_timeout": 600}, runner_args={"load_delay": 1e9})
    listening: list[ServerHandle] = []
    bound = trio.Event()

    def on_listening(handle: ServerHandle) -> None:
        listening.append(handle)
        bound.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve(cfg, on_listening=on_listening))
            await bound.wait()
            handle = listening[0]
            answers: list[httpx.Response] = []
            async with (
                httpx.AsyncClient(base_url=handle.url, timeout=30) as client,
                trio.open_nursery() as asking,
            ):

                async def ask() -> None:
                    answers.append(await client.post("/v1/completions", json={"prompt": "a"}))

                asking.start_soon(ask)
                # The pool's queue has no event (serve/pool.py offers none): polled.
                while not handle.pool._queues["mock"]:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                handle.drain()
        (answer,) = answers
        assert answer.status_code == 503 and answer.json()["error"]["type"] == "WorkerStopped"


async def test_big_prompts_that_arrive_together_go_in_batches_a_frame_can_carry() -> None:
    """Three prompts of 1.5 M characters each fit a frame to a child alone but not together:
    the pool batches them apart, and all three are served (none refused with its batch)."""
    from trio_supervise.runners.mock import MockRecord
    from trio_supervise.serve.pool import BATCH_BYTES

    record = MockRecord()
    cfg = config(isolation="inline", runner_args={"record": record, "max_concurrency": 4})
    pool = WorkerPool(cfg)
    prompt = "x" * (BATCH_BYTES // 4 * 3 // 4)  # 3/4 of the budget each
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            streams = [
                pool.generate(ts.Request(f"r{i}", prompt, ts.SamplingParams(max_tokens=2)))
                for i in range(3)
            ]
            for stream in streams:
                _, text, _, _ = await stream.collect()
                assert text
            nursery.cancel_scope.cancel()
    assert sorted(ids for _, _, ids in record.executes) == [("r0",), ("r1",), ("r2",)]


def test_a_port_in_use_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from trio_supervise._cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}: [Errno 98] Address already in use" in err
    assert "Traceback" not in err


async def test_a_client_that_stops_reading_is_dropped_and_holds_no_slot_nor_the_drain() -> None:
    """A client that sends a stream request and never reads fills its window; the kernel drops
    it after send_timeout (TCP_USER_TIMEOUT on the listening socket): its request is
    cancelled, its slot comes free, and the drain after it ends. Meanwhile /healthz answers,
    though the only slot is taken."""
    import socket

    cfg = config(
        server={"send_timeout": 1.0, "drain_timeout": 1.0, "max_connections": 1},
        runner_args={"delay": 0.0},
        max_model_len=1_000_000,
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            reader = trio.socket.socket()
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await reader.connect(handle.address)
            body = json.dumps({"prompt": "a", "max_tokens": 1_000_000, "stream": True}).encode()
            await reader.send(post(body))
            await handle.app.wait_open_requests(lambda n: n > 0)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                assert (await client.get("/healthz")).status_code == 200
                busy = await client.post("/v1/completions", json={"prompt": "a"})
                assert busy.status_code == 503 and busy.json()["error"]["type"] == "Overloaded"
            await handle.app.wait_open_requests(lambda n: n == 0)
            worker = handle.pool.replicas["mock"][0].worker
            assert worker is not None and worker.statistics().cancelled == 1
            handle.drain()
        reader.close()


async def test_a_drain_cuts_a_slow_reader_after_drain_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that reads, but slowly, keeps a response being written past the drain (its
    stream coalesced into one big write, and hypercorn's writes cannot be cancelled):
    drain_timeout after the workers stopped, its connection is shut down (and the server says
    so), serve returns, and the stream is cut (no [DONE]). Without it, the drain lasts until
    the client has read the whole write (half a minute here; minutes for a slower one)."""
    import socket

    cfg = config(
        server={"drain_timeout": 0.5, "send_timeout": 600},
        runner_args={"delay": 0.0},
        max_model_len=1_000_000,
    )
    served = trio.Event()
    received = bytearray()
    reader = trio.socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    async with trio.open_nursery() as nursery:

        async def run_server(task_status: Any) -> None:
            await serve(cfg, task_status=task_status)
            served.set()

        handle = await nursery.start(run_server)
        await reader.connect(handle.address)
        body = json.dumps({"prompt": "a", "max_tokens": 1_000_000, "stream": True}).encode()
        await reader.send(post(body))
        received += await reader.recv(1024)
        assert received.startswith(b"HTTP/1.1 200 ")
        handle.drain()

        async def read(pause: float) -> None:
            with contextlib.suppress(OSError):  # a reset: the server shut the connection down
                while data := await reader.recv(65536 if pause == 0 else 1024):
                    received.extend(data)
                    await trio.sleep(pause)

        async with trio.open_nursery() as reading:
            reading.start_soon(read, 2.0)  # slowly, on purpose
            with trio.move_on_after(60):
                await served.wait()
            reading.cancel_scope.cancel()
        with trio.fail_after(60):
            await read(0)  # the rest, at once: what the server sent before it shut down
        reader.close()
    assert served.is_set()
    assert b"data: [DONE]" not in received  # cut, not finished
    assert "the drain cut 1 connection(s) still being written to" in caplog.text


def test_a_message_with_markup_is_printed_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich would read "[/x]" in a message as a closing tag and crash; messages are text."""
    from trio_supervise._cli import main

    path = tmp_path / "markup.toml"
    path.write_text("[[workers]]\nname = 'm'\nrunner = 'no_such_module_[/x]:Factory'\n")
    assert main(["serve", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_module_[/x]" in err and "Traceback" not in err


@pytest.mark.parametrize(("value", "read"), [(None, None), (2048, 2048), ("4096", None), (0, None)])
def test_a_runner_says_its_max_model_len_or_gets_a_clear_error(value: Any, read: Any) -> None:
    from trio_supervise.tier._runner import runner_max_model_len

    class Runner:
        max_model_len = value

    if read is None and value is not None:
        with pytest.raises(ts.ConfigError, match=r"max_model_len must be an int >= 1 or None"):
            runner_max_model_len(Runner)
    else:
        assert runner_max_model_len(Runner) == read
