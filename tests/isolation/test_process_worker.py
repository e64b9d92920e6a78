"""Process isolation with real child processes, on the real clock (a thread or a process
outside the event loop makes the autojump clock jump), each test bounded by fail_after."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_supervise as ts
import trio_supervise.runners.mock
from tests.support.helpers import outcome
from trio_supervise import Request, SamplingParams, WorkerState

RUNNERS = "tests.support.child_runners:OnceRunner"


def req(rid: str, max_tokens: int = 4, **kwargs: Any) -> Request:
    return Request(rid, f"prompt {rid}", SamplingParams(max_tokens=max_tokens, seed=3), **kwargs)


def child_pid(worker: ts.Worker) -> int:
    placement = worker.placement()
    assert "pid" in placement, placement
    return int(placement["pid"])


async def spare_pid(worker: ts.Worker) -> int:
    children = worker._children
    assert children is not None
    while children.spare is None:
        await children.spare_parked.wait()
    assert children.spare.process is not None
    return int(children.spare.process.pid)


def assert_gone(pid: int) -> None:
    """Neither the process nor its process group is left (reaped, not a zombie)."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def args(tmp_path: Path, fault: str, **kwargs: Any) -> dict[str, Any]:
    runner_args = {"marker": str(tmp_path / "fired"), "fault": fault, "delay": 0.01, **kwargs}
    return {"runner_args": runner_args, "device": "cpu", "isolation": "process"}


async def test_serves_like_inline_and_leaves_no_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_supervise")
    with trio.fail_after(30):
        async with ts.open_worker(RUNNERS, **args(tmp_path, "print")) as worker:
            pid = child_pid(worker)
            assert pid != os.getpid()
            kind, text = await outcome(worker.generate(req("a", 6)))
            assert kind == "ok" and len(str(text).split()) == 6
            assert worker.generation == 1
    assert worker.state.value is WorkerState.STOPPED
    assert_gone(pid)
    # The runner's prints reached the log, tagged, and did not disturb the frames.
    assert f"OnceRunner child pid {pid} generation 1: loading on cpu" in caplog.text
    assert "goes to the parent's log, not into the frames" in caplog.text


@pytest.mark.parametrize("fault", ["exit", "poison", "garbage"])
async def test_a_dying_child_is_replaced_by_a_fresh_process(tmp_path: Path, fault: str) -> None:
    with trio.fail_after(30):
        async with ts.open_worker(RUNNERS, **args(tmp_path, fault)) as worker:
            handle, first = worker, child_pid(worker)
            a = worker.generate(req("a", 6, idempotent=False))
            kind, error = await outcome(a)
            assert kind == "error" and isinstance(error, ts.ContextPoisoned) and error.retryable
            assert await outcome(worker.generate(req("b"))) == ("ok", await_text("b"))
            assert worker is handle and worker.generation == 2
            second = child_pid(worker)
            assert second != first
    assert_gone(first)  # old children are reaped by the worker, at the latest when it ends
    assert_gone(second)


def await_text(rid: str) -> str:
    from trio_supervise.runners.mock import text_of, token_at

    request = req(rid)
    return "".join(text_of(token_at(request, i, 50_000)) for i in range(4))


async def test_a_child_killed_from_outside_is_replaced(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with ts.open_worker(RUNNERS, **args(tmp_path, "none")) as worker:
            first = child_pid(worker)
            os.kill(first, signal.SIGKILL)
            await worker.state.wait_value(lambda s: s is not WorkerState.READY)
            await worker.state.wait_value(WorkerState.READY)
            assert worker.generation == 2
            assert await outcome(worker.generate(req("b"))) == ("ok", await_text("b"))
    assert_gone(first)


async def test_a_child_blocked_in_a_call_is_hung_and_killed(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with ts.open_worker(RUNNERS, hang_timeout=1.0, **args(tmp_path, "hang")) as worker:
            first = child_pid(worker)
            stream = worker.generate(req("a", 6, continuation="off"))
            _kind, error = await outcome(stream)
            assert isinstance(error, ts.ContextPoisoned)  # HungWorker or ChildDied: both poisoned
            assert await outcome(worker.generate(req("b"))) == ("ok", await_text("b"))
            assert worker.generation == 2
    assert_gone(first)


async def test_a_foreign_exception_arrives_as_runner_error(tmp_path: Path) -> None:
    with trio.fail_after(30), pytest.raises(ts.RunnerError, match=r"^KeyError: 'a class the"):
        async with ts.open_worker(RUNNERS, **args(tmp_path, "foreign")) as worker:
            pid = child_pid(worker)
            await outcome(worker.generate(req("a")))
            await trio.sleep_forever()
    assert_gone(pid)


async def test_build_and_import_errors_are_config_errors_at_once(tmp_path: Path) -> None:
    with trio.fail_after(30):
        with pytest.raises(ts.ConfigError, match=r"cannot import runner module 'no_such'"):
            async with ts.open_worker("no_such:Runner", device="cpu", isolation="process"):
                pass
        with pytest.raises(ts.ConfigError, match=r"factory got bad arguments: \['x'\]"):
            async with ts.open_worker(
                "tests.support.child_runners:failing_factory",
                runner_args={"x": 1},
                device="cpu",
                isolation="process",
            ):
                pass


async def test_a_load_failure_in_the_child_is_restarted(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with ts.open_worker(RUNNERS, **args(tmp_path, "load")) as worker:
            assert worker.generation == 2
            assert await outcome(worker.generate(req("b"))) == ("ok", await_text("b"))


async def test_cancelling_the_parent_while_the_child_is_busy_leaves_nothing(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        with trio.CancelScope() as parent:
            async with ts.open_worker(RUNNERS, **args(tmp_path, "none", delay=0.5)) as worker:
                pid = child_pid(worker)
                stream = worker.generate(req("a", 100))
                await stream.__anext__()  # the child is streaming: busy for 50 s more
                parent.cancel()
                await outcome(stream)
        assert parent.cancelled_caught
        assert_gone(pid)


def test_process_isolation_refuses_what_cannot_cross() -> None:
    with pytest.raises(ts.ConfigError, match=r"takes the runner factory as an import path"):
        ts.Worker(ts.runners.mock.MockRunner, isolation="process")  # type: ignore[attr-defined]
    with pytest.raises(ts.ConfigError, match=r"^runner_args must be plain data that msgspec"):
        ts.Worker(RUNNERS, runner_args={"x": object()}, isolation="process")
    with pytest.raises(ts.ConfigError, match=r"^isolation must be 'inline', 'process' or 'ray'"):
        ts.Worker(RUNNERS, isolation="thread")


async def test_the_runners_default_policy_crosses_as_data() -> None:
    from tests.support.child_runners import PoliteRunner

    with trio.fail_after(30):
        async with ts.open_worker(
            "tests.support.child_runners:PoliteRunner", device="cpu", isolation="process"
        ) as worker:
            assert worker.policy.decider.inner == PoliteRunner.default_policy.decider  # type: ignore[attr-defined]
            assert worker.policy.intensity == PoliteRunner.default_policy.intensity
            assert worker.policy.backoff == PoliteRunner.default_policy.backoff
        with pytest.raises(
            ts.ConfigError, match=r"names ForeignPolicyRunner.Local, which the parent"
        ):
            async with ts.open_worker(
                "tests.support.child_runners:ForeignPolicyRunner", device="cpu", isolation="process"
            ):
                pass


@pytest.mark.parametrize("preload", [False, True])
async def test_a_standby_process_takes_over_and_the_next_one_parks(
    tmp_path: Path, preload: bool
) -> None:
    with trio.fail_after(30):
        async with ts.open_worker(
            RUNNERS, standby=True, standby_load=preload, **args(tmp_path, "poison")
        ) as worker:
            first = child_pid(worker)
            spare = await spare_pid(worker)  # the spare parks in the background
            _kind, error = await outcome(worker.generate(req("a", 6, idempotent=False)))
            assert isinstance(error, ts.ContextPoisoned)
            assert await outcome(worker.generate(req("b"))) == ("ok", await_text("b"))
            assert child_pid(worker) == spare and worker.generation == 2
            next_spare = await spare_pid(worker)
            assert next_spare not in (first, spare)
    for pid in (first, spare, next_spare):
        assert_gone(pid)


def test_standby_needs_process_isolation() -> None:
    with pytest.raises(
        ts.ConfigError, match=r"^standby and standby_load need isolation='process' or 'ray'$"
    ):
        ts.Worker(RUNNERS, standby=True)


PARENT = """
import sys, trio
import trio_supervise as ts

async def main():
    async with ts.open_worker("tests.support.child_runners:OnceRunner", device="cpu",
                              isolation="process", policy=ts.DEVICE_POLICY,
                              runner_args={"marker": sys.argv[1], "fault": "none"}) as worker:
        print(worker.placement()["pid"], flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_a_sigkilled_parent_leaves_no_orphan(tmp_path: Path) -> None:
    import subprocess
    import sys

    tests = str(Path(__file__).parents[2])  # the repository: tests.support is importable
    with trio.fail_after(30):
        parent = await trio.lowlevel.open_process(
            [sys.executable, "-c", PARENT, str(tmp_path / "m")],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")},
        )
        assert parent.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await parent.stdout.receive_some()
        child = int(line)
        os.kill(child, 0)  # alive
        exited = os.pidfd_open(child)  # readable once it exits (not our child: no waitpid)
        try:
            parent.kill()
            await parent.wait()
            await trio.lowlevel.wait_readable(exited)
        finally:
            os.close(exited)
        assert not running(child)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by whoever adopted it, if anyone does)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_an_idle_child_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    # Trio starts processes from a worker thread and retires idle threads after 10 s: a child
    # tied to that thread would die then. Linux ties a process to the thread that forked it
    # only by a parent-death signal (PR_SET_PDEATHSIG, sent when that *thread* exits): the
    # child reports that it has none, so no thread's exit can end it.
    report = tmp_path / "parent-death-signal"
    with trio.fail_after(30):
        async with ts.open_worker(
            "tests.isolation.thread_tie:ParentDeathSignalRunner",
            runner_args={"report": str(report)}, device="cpu", isolation="process",
        ) as worker:  # fmt: skip
            pid = child_pid(worker)
            assert report.read_text() == "0"  # written by the child's load, before its Ready
            assert child_pid(worker) == pid and worker.generation == 1
            assert await outcome(worker.generate(req("b"))) == ("ok", await_text("b"))


async def test_sampling_fields_and_logprobs_cross_to_a_child_and_back() -> None:
    """What a child's runner honours crosses in its Ready: CharLM in a child samples with
    top_k and gives log probabilities, as inline; MockRunner in a child refuses top_k alone."""
    params = SamplingParams(5, temperature=0.9, seed=3, top_k=4, logprobs=2)
    with trio.fail_after(60):
        got = {}
        for isolation in ("inline", "process"):
            async with ts.open_worker(
                "trio_supervise.runners.charlm:CharLM", device="cpu", isolation=isolation
            ) as worker:
                chunks = []
                async with worker.generate(Request("a", "The ", params)) as stream:
                    chunks = [chunk async for chunk in stream]
                got[isolation] = chunks
        async with ts.open_worker(
            "trio_supervise.runners.mock:MockRunner", device="cpu", isolation="process"
        ) as worker:
            kind, error = await outcome(worker.generate(Request("b", "x", params)))
            ok, _ = await outcome(worker.generate(req("c", 2)))
    texts = {k: "".join(c.text for c in v) for k, v in got.items()}
    logprobs = {k: [lp for c in v for lp in c.logprobs or ()] for k, v in got.items()}
    assert texts["inline"] == texts["process"] and len(texts["process"]) == 5
    assert [lp.token for lp in logprobs["process"]] == list(texts["process"])
    assert all(len(lp.top) == 2 for lp in logprobs["process"])
    assert [lp.token for lp in logprobs["inline"]] == [lp.token for lp in logprobs["process"]]
    assert kind == "error" and isinstance(error, ts.BadRequest) and ok == "ok"
    assert "top_k is not supported by the runner of worker" in str(error)
