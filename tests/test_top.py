"""``trio-supervise top``: its frame from two polls (no server), and ``--once`` against a served
instance, with and without the API key it asks for, and against a port nobody listens on."""

from __future__ import annotations

import argparse
import io
import socket
import time
from typing import Any

import httpx
import pytest
import trio
from rich.console import Console

from tests.support.helpers import restarting_once, serve_config, start_server
from trio_supervise._cli import main
from trio_supervise._top import API_KEY_ENV, add_top_parser, frame, run_top


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_top_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["top", *argv])


def top(*argv: str) -> tuple[int, str, str]:
    """Run ``top ARGV``: its exit code, the frame, and its error output."""
    out, err = io.StringIO(), io.StringIO()
    code = run_top(
        parse(*argv),
        console=Console(file=out, width=200, color_system=None),
        errors=Console(file=err, width=200, soft_wrap=True, color_system=None),
    )
    return code, out.getvalue(), err.getvalue()


def rendered(view: Any, *, color: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system="standard" if color else None,
                      force_terminal=color)  # fmt: skip
    console.print(view)
    return out.getvalue()


def record(name: str = "mock#0", **fields: Any) -> dict[str, Any]:
    """A replica's record in ``/v1/workers``, as the server writes it."""
    return {
        "name": name, "model": "mock", "replica": 0, "state": "ready", "generation": 1,
        "restarts": 0, "resumes": 0, "last_restart_cause": None, "replaced": 0, "pending": 0,
        "in_flight": 0, "tokens": 0, "ttft_p50": None, "ttft_p99": None, "isolation": "inline",
        "pid": None, "actor_id": None, "actor_name": None, "node_id": None, "node_ip": None,
        "breaker": None, **fields,
    }  # fmt: skip


def event(at: float, kind: str, text: str, worker: str = "mock#0") -> dict[str, Any]:
    return {"time": at, "worker": worker, "supervisor": "pool", "generation": 1, "kind": kind,
            "error": None, "text": text}  # fmt: skip


def row(output: str, name: str) -> list[str]:
    """The cells of the table row of replica ``name`` (an empty last cell left out)."""
    (line,) = [line for line in output.splitlines() if line.startswith(f"{name} ")]
    return line.split()


# --- the frame, from two polls ----------------------------------------------------------------


def test_tokens_per_second_is_the_growth_between_two_polls_and_a_dash_before() -> None:
    before = {"workers": [record(tokens=100), record("mock#1", tokens=7)], "events": []}
    after = {"workers": [record(tokens=150), record("mock#1", tokens=7), record("mock#2")],
             "events": []}  # fmt: skip
    both = rendered(frame(before, after, 2.0))
    assert row(both, "mock#0")[7] == "25.0"
    assert row(both, "mock#1")[7] == "0.0"
    assert row(both, "mock#2")[7] == "-"  # not in the previous poll
    first = rendered(frame(None, after, 0.0))
    assert [row(first, name)[7] for name in ("mock#0", "mock#1", "mock#2")] == ["-", "-", "-"]
    fewer = {"workers": [record(tokens=10)], "events": []}  # a new server: the count went down
    assert row(rendered(frame(before, fewer, 1.0)), "mock#0")[7] == "-"


def test_nulls_are_dashes_ttft_is_in_ms_and_a_breaker_column_only_when_there_is_one() -> None:
    poll = {"workers": [record(ttft_p50=None, ttft_p99=0.25, restarts=2,
                               last_restart_cause="ContextPoisoned")], "events": []}  # fmt: skip
    output = rendered(frame(None, poll, 0.0, source="http://h:1"))
    assert row(output, "mock#0") == ["mock#0", "ready", "1", "2", "0", "0", "0", "-", "-",
                                     "250.0ms", "ContextPoisoned"]  # fmt: skip
    assert "breaker" not in output and "http://h:1 1 replica(s)" in output
    assert "no supervision events yet" in output
    remote = {"workers": [record(breaker="open"), record("mock#1")], "events": []}
    output = rendered(frame(None, remote, 0.0))
    assert "breaker" in output
    assert row(output, "mock#0")[10:] == ["open"] and row(output, "mock#1")[10:] == []


def test_states_are_coloured() -> None:
    states = ["ready", "starting", "rebuilding", "stopped", "failed"]
    poll = {"workers": [record(f"m#{i}", state=s) for i, s in enumerate(states)], "events": []}
    output = rendered(frame(None, poll, 0.0), color=True)
    green, yellow, red = "\x1b[32m", "\x1b[33m", "\x1b[31m"
    for state, colour in zip(states, [green, yellow, yellow, red, red], strict=True):
        assert f"{colour}{state}" in output, state


def test_the_latest_ten_events_newest_last_at_local_time_and_their_text_as_is() -> None:
    start = 1_800_000_000.0
    events = [event(start + i, "restarting", f"pool/mock#0#{i} restarting [bold]x[/bold]")
              for i in range(15)]  # fmt: skip
    output = rendered(frame(None, {"workers": [record()], "events": events}, 0.0))
    lines = [line for line in output.splitlines() if "restarting" in line]
    assert len(lines) == 10
    for i, line in zip(range(5, 15), lines, strict=True):
        clock = time.strftime("%H:%M:%S", time.localtime(start + i))
        assert line.split() == [clock, "mock#0", "restarting", f"pool/mock#0#{i}", "restarting",
                                "[bold]x[/bold]"]  # fmt: skip


def test_the_root_supervisors_start_and_ready_of_a_slot_are_not_shown_twice() -> None:
    start = 1_800_000_000.0
    mine = {**event(start, "ready", "mock#0/mock#0#1 ready"), "supervisor": "mock#0"}
    events = [event(start, "started", "pool/mock#0#1 started"), mine,
              event(start, "ready", "pool/mock#0#1 ready"),
              event(start + 1, "restarting", "pool/mock#0#1 restarting")]  # fmt: skip
    output = rendered(frame(None, {"workers": [record()], "events": events}, 0.0))
    assert "mock#0/mock#0#1 ready" in output and "pool/mock#0#1 restarting" in output
    assert "pool/mock#0#1 ready" not in output and "pool/mock#0#1 started" not in output


# --- against a served instance ----------------------------------------------------------------


async def test_once_shows_a_restarted_replica_and_its_restarting_event() -> None:
    cfg = restarting_once()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, cfg)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                done = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
                assert done.status_code == 200
            code, output, errors = await trio.to_thread.run_sync(
                top, handle.url, "--once", "--interval", "0"
            )
            handle.drain()
    assert (code, errors) == (0, "")
    cells = row(output, "mock#0")
    assert cells[:4] == ["mock#0", "ready", "2", "1"] and cells[-1] == "ContextPoisoned"
    assert cells[7] == "-"  # one poll: no tokens/s
    assert cells[8].endswith("ms")  # the request's time to its first token
    assert any("mock#0" in line and "restarting" in line for line in output.splitlines())


async def test_a_server_with_a_key_needs_it_and_answers_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, serve_config(server={"api_keys": ["k"]}))
            url = handle.url
            without = await trio.to_thread.run_sync(top, url, "--once", "--interval", "0")
            wrong = await trio.to_thread.run_sync(top, url, "--once", "--api-key", "not-the-key")
            # Two polls 10 ms apart (no traffic, so 0.0 tokens/s rather than "-").
            given = await trio.to_thread.run_sync(
                top, url, "--once", "--api-key", "k", "--interval", "0.01"
            )
            monkeypatch.setenv(API_KEY_ENV, "k")
            from_env = await trio.to_thread.run_sync(top, url, "--once", "--interval", "0")
            handle.drain()
    code, output, errors = without
    assert (code, output) == (2, "")
    assert errors.count("\n") == 1 and "needs an API key" in errors and "--api-key" in errors
    code, output, errors = wrong
    assert (code, output) == (2, "") and "refused the API key" in errors
    assert "not-the-key" not in errors  # a key is never shown
    code, output, errors = given
    assert (code, errors) == (0, "")
    assert row(output, "mock#0")[:2] == ["mock#0", "ready"] and row(output, "mock#0")[7] == "0.0"
    assert from_env[0] == 0 and row(from_env[1], "mock#0")[1] == "ready"


def test_a_port_nobody_listens_on_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as sock:  # a free port, closed again: nobody listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert main(["top", url, "--once", "--interval", "0"]) == 2  # through the CLI
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"cannot reach {url}/v1/workers: ConnectError")
    assert "Traceback" not in captured.err


def test_a_bad_interval_is_refused() -> None:
    code, output, errors = top("http://127.0.0.1:1", "--interval", "-1")
    assert (code, output) == (2, "") and "--interval" in errors
    code, output, errors = top("http://127.0.0.1:1", "--interval", "0")  # live, with no interval
    assert (code, output) == (2, "") and "--once" in errors
