"""The fault-injection harness: plans, the faulty runner, and a checker that does fail."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_supervise as ts
from trio_supervise.runners.mock import MockRecord, MockRunner, token_at
from trio_supervise.testing import (
    ChaosReport,
    Fault,
    FaultPlan,
    FaultyRunner,
    InjectedError,
    Violation,
    assert_survives,
    run_chaos,
)
from trio_supervise.testing._cli import (
    HANG_TIMEOUTS,
    add_chaos_parser,
    build_plan,
    render,
    worker_factory,
)

Clock = trio.testing.MockClock
POLICY = attrs.evolve(ts.DEVICE_POLICY, intensity=ts.RestartIntensity(1000, 60.0))


def expected(request: ts.Request) -> list[int]:
    return [token_at(request, i, 50_000) for i in range(request.params.max_tokens)]


def mock_factory(plan: FaultPlan, **worker: Any) -> Any:
    record = MockRecord()
    worker.setdefault("policy", POLICY)
    return ts.open_worker(
        lambda: FaultyRunner(MockRunner(record=record, delay=0.01), plan), device="cpu", **worker
    )


# --- plans ------------------------------------------------------------------------------------


def test_plans_are_deterministic_replayable_and_cross_as_data() -> None:
    plan = (
        FaultPlan.at(fault=Fault.POISON, batch=3, token=2)
        + FaultPlan.random(7, {Fault.POISON: 0.1, Fault.OOM: 0.2})
        + FaultPlan.every(5, Fault.SLOW, delay=0.5)
        + FaultPlan.at(fault=Fault.FAIL_LOAD, generation=2)
    )
    assert eval(repr(plan), {"FaultPlan": FaultPlan, "Fault": Fault}) == plan
    assert FaultPlan.from_dict(plan.to_dict()) == plan
    fired = [plan.for_batch(seq) for seq in range(2000)]
    assert fired == [plan.for_batch(seq) for seq in range(2000)]  # a pure function of seq
    assert fired[3] is not None and fired[3].fault is Fault.POISON and fired[3].token == 2
    kinds = [t.fault for t in fired if t is not None and t.rate is not None]
    assert 0.25 < len(kinds) / 2000 < 0.35
    assert 1.5 < kinds.count(Fault.OOM) / kinds.count(Fault.POISON) < 2.6
    assert plan.for_generation(Fault.FAIL_LOAD, 2) and not plan.for_generation(Fault.FAIL_LOAD, 1)
    assert repr(FaultPlan.none()) == "FaultPlan.none()"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FaultPlan.at(fault=Fault.POISON), r"needs batch=N \(an int >= 0\), got None"),
        (lambda: FaultPlan.at(fault=Fault.FAIL_LOAD, batch=1), r"needs generation=N"),
        (lambda: FaultPlan.every(0, Fault.OOM), r"^every\(\) takes an int n >= 1, got 0$"),
        (lambda: FaultPlan.random(1, {Fault.OOM: 1.5}), r"must be in \[0, 1\], got 1.5$"),
        (lambda: FaultPlan.random(1, {Fault.OOM: 0.6, Fault.POISON: 0.6}), r"at most 1, got 1.2"),
        (lambda: FaultPlan.random(1, {Fault.FAIL_LOAD: 0.1}), r"takes batch faults"),
        (lambda: FaultyRunner(MockRunner(), FaultPlan.at(fault=Fault.EXIT, batch=0)), r"EXIT"),
    ],
)
def test_plans_refuse_what_cannot_work(build: Any, message: str) -> None:
    with pytest.raises(ts.ConfigError, match=message):
        build()


async def test_a_fault_at_a_batch_fires_once_not_in_every_new_runner(autojump_clock: Clock) -> None:
    plan = FaultPlan.at(fault=Fault.POISON, batch=0)
    async with mock_factory(plan) as worker:
        for i in range(3):
            await worker.generate(ts.Request(f"r{i}", "p", ts.SamplingParams(3))).collect()
        assert worker.generation == 2  # the re-run of batch 0 is batch 1: no second fault


# --- each fault, inline -----------------------------------------------------------------------


async def first_outcome(worker: ts.Worker) -> object:
    try:
        await worker.generate(
            ts.Request("a", "p", ts.SamplingParams(4), idempotent=False)
        ).collect()
    except ts.InferenceError as exc:
        return exc
    return "ok"


@pytest.mark.parametrize(
    ("fault", "error", "generation"),
    [
        (Fault.POISON, ts.ContextPoisoned, 2),
        (Fault.OOM, ts.OutOfMemory, 1),
        (Fault.HANG, ts.HungWorker, 2),
    ],
)
async def test_batch_faults_inline(
    fault: Fault, error: type, generation: int, autojump_clock: Clock
) -> None:
    async with mock_factory(FaultPlan.at(fault=fault, batch=0, token=1), hang_timeout=1) as worker:
        assert isinstance(await first_outcome(worker), error)
        assert await first_outcome(worker) == "ok"
        assert worker.generation == generation


async def test_unrecoverable_stops_and_error_escalates(autojump_clock: Clock) -> None:
    async with mock_factory(FaultPlan.at(fault=Fault.UNRECOVERABLE, batch=0)) as worker:
        assert isinstance(await first_outcome(worker), ts.Unrecoverable)
        assert worker.state.value is ts.WorkerState.STOPPED
    with pytest.raises(InjectedError):
        async with mock_factory(FaultPlan.at(fault=Fault.ERROR, batch=0)) as worker:
            await first_outcome(worker)
            await trio.sleep_forever()


async def test_slow_load_and_rebuild_faults(autojump_clock: Clock) -> None:
    plan = (
        FaultPlan.at(fault=Fault.SLOW, batch=0, delay=2.0)
        + FaultPlan.at(fault=Fault.FAIL_LOAD, generation=1)
        + FaultPlan.at(fault=Fault.FAIL_REBUILD, generation=2)
    )
    async with mock_factory(plan) as worker:
        assert worker.generation == 2  # the first load failed
        start = trio.current_time()
        assert await first_outcome(worker) == "ok"
        assert trio.current_time() - start >= 4 * 2.0
        with pytest.raises(ts.ContextPoisoned, match=r"rebuild failed in generation 2"):
            await worker.rebuild()
        await worker.state.wait_value(ts.WorkerState.READY)
        assert worker.generation == 3


# --- process-only faults ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", [Fault.EXIT, Fault.KILL, Fault.HANG])
async def test_process_faults(fault: Fault) -> None:
    plan = FaultPlan.at(fault=fault, batch=0, token=1)
    runner_args = {"inner": "trio_supervise.runners.mock:MockRunner", "plan": plan.to_dict()}
    with trio.fail_after(30):
        async with ts.open_worker(
            "trio_supervise.testing:FaultyRunner",
            runner_args=runner_args,
            device="cpu",
            isolation="process",
            policy=POLICY,
            hang_timeout=0.5,
        ) as worker:
            assert isinstance(await first_outcome(worker), ts.ContextPoisoned)
            assert await first_outcome(worker) == "ok"
            assert worker.generation == 2


# --- the checker fails when it should ---------------------------------------------------------


class BrokenWorker:
    """A worker-like object that serves MockRunner tokens, broken in one way."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.served = 0
        if how in ("splice", "none"):
            self.deterministic = True  # the checker compares with a run without faults

    def generate(self, request: ts.Request) -> AsyncIterator[ts.Chunk]:
        return self._stream(request)

    async def _stream(self, request: ts.Request) -> AsyncIterator[ts.Chunk]:
        self.served += 1
        tokens = [token_at(request, i, 50_000) for i in range(request.params.max_tokens)]
        if self.how == "untyped" and self.served == 3:
            raise ValueError("not one of ours")
        if self.how == "dead_handle" and request.id == "chaos-after":
            raise ts.WorkerStopped("this handle went dead")
        if self.how == "drop" and self.served == 3:
            return  # ends without a final chunk or an error
        if self.how == "reorder":
            tokens = tokens[::-1]
        for i, token in enumerate(tokens):
            spliced = self.how == "splice" and self.served == 3 and i == 0
            yield ts.Chunk(request.id, (token,), "y" if spliced else "x")
            if self.how == "duplicate" and i == 0:
                yield ts.Chunk(request.id, (token,), "x")
            await trio.lowlevel.checkpoint()
        usage = ts.Usage(1, len(tokens))
        yield ts.Chunk(request.id, (), "", ts.FinishReason.LENGTH, usage)


@pytest.mark.parametrize(
    ("how", "invariant"),
    [
        ("drop", "one_outcome"),
        ("duplicate", "chunks_in_order"),
        ("reorder", "chunks_in_order"),
        ("untyped", "typed_errors"),
        ("leak", "no_leftovers"),
        ("dead_handle", "stable_handle"),
        ("splice", "same_text"),
    ],
)
async def test_the_checker_reports_broken_workers(
    how: str, invariant: str, autojump_clock: Clock
) -> None:
    runs = 0

    @contextlib.asynccontextmanager
    async def factory(plan: FaultPlan) -> AsyncIterator[BrokenWorker]:
        nonlocal runs
        runs += 1
        if how == "leak":  # a task that nobody owns any more
            trio.lowlevel.spawn_system_task(trio.sleep_forever)
        yield BrokenWorker(how if runs == 1 else "none")  # the run without faults is healthy

    report = await run_chaos(
        factory, requests=20, concurrency=4, plan=FaultPlan.none(), expected=expected, timeout=10
    )
    assert invariant in {v.invariant for v in report.violations}, report.summary()
    with pytest.raises(AssertionError, match=rf"invariant\(s\) violated:\n  - {invariant}"):
        assert_survives(report)


async def test_a_healthy_worker_passes_the_checker() -> None:
    @contextlib.asynccontextmanager
    async def factory(plan: FaultPlan) -> AsyncIterator[BrokenWorker]:
        yield BrokenWorker("none")

    report = await run_chaos(
        factory, requests=50, concurrency=8, plan=FaultPlan.none(), expected=expected
    )
    assert report.ok, report.summary()
    assert report.outcomes == {"finished": 50}
    assert report.compared == 50  # it says it is deterministic: compared with a second run


async def test_a_task_that_ends_soon_after_the_worker_is_no_leftover(autojump_clock: Clock) -> None:
    @contextlib.asynccontextmanager
    async def factory(plan: FaultPlan) -> AsyncIterator[BrokenWorker]:
        yield BrokenWorker("none")
        trio.lowlevel.spawn_system_task(trio.sleep, 0.5)  # ends within the check's grace

    report = await run_chaos(
        factory, requests=5, concurrency=2, plan=FaultPlan.none(), expected=expected
    )
    assert report.ok, report.summary()
    assert trio.current_time() == 0.5  # the check woke when that task ended, not at its grace


# --- chaos at scale ---------------------------------------------------------------------------


async def test_two_thousand_requests_with_poison_and_oom_survive() -> None:
    plan = FaultPlan.random(11, {Fault.POISON: 0.01, Fault.OOM: 0.02}, token=1)

    def factory(plan: FaultPlan) -> Any:
        return ts.open_worker(lambda: FaultyRunner(MockRunner(), plan), device="cpu", policy=POLICY)

    with trio.fail_after(60):
        report = await run_chaos(
            factory, requests=2000, concurrency=64, plan=plan, seed=5, expected=expected
        )
    assert_survives(report)
    assert report.restarts >= 5 and report.outcomes["finished"] >= 1900
    assert report.outcomes.get("failed: OutOfMemory", 0) >= 10
    # MockRunner is deterministic: streams cut by a poisoning went on, with the fault-free text
    assert report.continued >= 1 and report.compared == 2000


def test_the_cli_inline_and_with_process_isolation(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_supervise._cli import main

    assert main(["chaos", "--requests", "300", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "all invariants hold" in out and "300 requests compared" in out
    assert main(["chaos", "--requests", "60", "--isolation", "process", "--fault-rate", "0.1"]) == 0
    assert "all invariants hold" in capsys.readouterr().out
    assert main(["chaos", "--faults", "nonsense=1"]) == 2
    assert "--faults takes KIND=RATE pairs" in capsys.readouterr().out


async def test_a_worker_that_fails_out_of_its_context_did_not_survive(
    autojump_clock: Clock,
) -> None:
    report = await run_chaos(
        mock_factory,
        requests=50,
        concurrency=8,
        plan=FaultPlan.at(fault=Fault.ERROR, batch=10),
        expected=expected,
    )
    failed = [v for v in report.violations if v.invariant == "stable_handle"]
    assert failed and "the worker failed: InjectedError(" in failed[0].message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"requests": 0}, r"^requests must be an int >= 1, got 0$"),
        ({"concurrency": 0}, r"^concurrency must be an int >= 1, got 0$"),
        ({"min_success": 1.5}, r"^min_success must be in \[0, 1\], got 1.5$"),
        ({"plan": "poison"}, r"^plan must be a FaultPlan, got 'poison'$"),
    ],
)
async def test_run_chaos_refuses_bad_arguments(options: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"requests": 1, "concurrency": 1, "plan": FaultPlan.none(), **options}
    with pytest.raises(ts.ConfigError, match=message):
        await run_chaos(mock_factory, **args)


# --- what the report says ---------------------------------------------------------------------


def made_report(**fields: Any) -> ChaosReport:
    values: dict[str, Any] = {
        "requests": 2000,
        "outcomes": {"finished": 1957, "failed: OutOfMemory": 36, "failed: ContextPoisoned": 7},
        "restarts": 25,
        "restarts_by_cause": {"OutOfMemory": 36, "ContextPoisoned": 7},
        "succeeded_untouched": 1.0,
        "tokens_per_s": 1000.0,
        "latency_p50": 0.001,
        "latency_p99": 0.002,
        "duration": 1.0,
        "policy": repr(POLICY),
        "plan": repr(FaultPlan.random(1, {Fault.POISON: 0.015, Fault.OOM: 0.015}, token=1)),
        "seed": 1,
        "violations": (),
        **fields,
    }
    return ChaosReport(**values)


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        (
            {},
            "43 of 2000 requests did not finish, all of them touched by a fault; "
            "of the 1957 requests no fault touched, 100.00% finished",
        ),
        (
            {
                "outcomes": {"finished": 1955, "failed: OutOfMemory": 43, "open": 2},
                "restarts_by_cause": {"OutOfMemory": 43},
                "succeeded_untouched": 1955 / 1957,
            },
            "45 of 2000 requests did not finish, 43 of them touched by a fault; "
            "of the 1957 requests no fault touched, 99.90% finished",
        ),
        (
            {
                "requests": 20,
                "outcomes": {"finished": 19, "open": 1},
                "restarts_by_cause": {},
                "succeeded_untouched": 0.95,
            },
            "1 of 20 requests did not finish, not touched by a fault; "
            "of the 20 requests no fault touched, 95.00% finished",
        ),
        (
            {"requests": 5, "outcomes": {"finished": 5}, "restarts_by_cause": {}},
            "all 5 requests finished",
        ),
    ],
)
def test_the_report_says_how_many_did_not_finish_and_whether_faults_touched_them(
    fields: dict[str, Any], line: str
) -> None:
    report = made_report(**fields)
    assert report.describe_served() == line
    assert line in report.summary().splitlines()
    assert "served, untouched" not in report.summary()


def test_the_summary_and_the_cli_table_show_the_policy_and_the_plan_whole() -> None:
    from rich.console import Console

    report = made_report(violations=(Violation("success", "[bold]not markup"),))
    lines = report.summary().splitlines()
    assert f"policy: {report.policy}" in lines
    assert f"plan: {report.plan}; seed 1" in lines
    out = io.StringIO()
    Console(file=out, width=60).print(render(report, hang_timeout=0.5))
    table = out.getvalue()
    assert "\u2026" not in table  # no ellipsis: nothing is cut
    cells = "".join(
        line.split("\u2502")[2] for line in table.splitlines() if line.count("\u2502") == 3
    )
    squeezed = cells.replace(" ", "")
    assert report.policy.replace(" ", "") in squeezed
    assert report.plan.replace(" ", "") in squeezed
    assert "[bold]notmarkup" in squeezed and "0.5s" in squeezed


async def test_the_report_counts_the_texts_that_matched_and_that_differed() -> None:
    runs = 0

    @contextlib.asynccontextmanager
    async def factory(plan: FaultPlan) -> AsyncIterator[BrokenWorker]:
        nonlocal runs
        runs += 1
        yield BrokenWorker("splice" if runs == 1 else "none")  # one text differs, the 3rd

    report = await run_chaos(factory, requests=20, concurrency=4, plan=FaultPlan.none())
    assert (report.compared, report.differed) == (20, 1)
    assert "texts: 20 requests compared with a fault-free run: 19 matched, 1 differed" in (
        report.summary().splitlines()
    )

    @contextlib.asynccontextmanager
    async def healthy(plan: FaultPlan) -> AsyncIterator[BrokenWorker]:
        yield BrokenWorker("none")

    report = await run_chaos(healthy, requests=10, concurrency=4, plan=FaultPlan.none())
    assert (report.compared, report.differed) == (10, 0)
    assert report.describe_texts() == "10 requests compared with a fault-free run: 10 matched"
    report = await run_chaos(
        healthy, requests=10, concurrency=4, plan=FaultPlan.none(), fault_free=False
    )
    assert report.compared == 0 and report.describe_texts() == "not compared with a fault-free run"


async def test_faults_fired_are_counted_by_kind(autojump_clock: Clock) -> None:
    # One request at a time, so each batch holds one request and the seqs are fixed: the run
    # reaches batch 30 at least, never batch 500.
    plan = (
        FaultPlan.at(fault=Fault.OOM, batch=2)
        + FaultPlan.at(fault=Fault.OOM, batch=5)
        + FaultPlan.at(fault=Fault.POISON, batch=7)
        + FaultPlan.at(fault=Fault.HANG, batch=10)
        + FaultPlan.at(fault=Fault.FAIL_LOAD, generation=2)
        + FaultPlan.at(fault=Fault.OOM, batch=500)
    )
    factory = functools.partial(mock_factory, hang_timeout=1)
    report = await run_chaos(
        factory, requests=30, concurrency=1, plan=plan, seed=2, expected=expected
    )
    assert_survives(report)
    assert report.faults_fired == {"oom": 2, "poison": 1, "hang": 1, "fail_load": 1}
    assert "faults fired: fail_load 1, hang 1, oom 2, poison 1; " in report.summary()
    # each counted fault did fire: the OOMs failed their requests, the rest restarted the tier
    assert report.outcomes["failed: OutOfMemory"] == 2 and report.restarts == 3
    quiet = await run_chaos(mock_factory, requests=5, concurrency=1, plan=FaultPlan.none())
    assert quiet.faults_fired == {} and "faults fired: none; " in quiet.summary()


def chaos_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_chaos_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["chaos", *argv])


async def test_the_chaos_command_takes_a_hang_timeout(autojump_clock: Clock) -> None:
    args = chaos_args(
        "--requests", "100", "--seed", "4", "--fault-rate", "0.02", "--faults", "hang=0.05",
        "--hang-timeout", "0.25",
    )  # fmt: skip
    factory = worker_factory(args)
    async with factory(FaultPlan.none()) as worker:
        assert worker.hang_timeout == 0.25
    async with worker_factory(chaos_args())(FaultPlan.none()) as worker:
        assert worker.hang_timeout == HANG_TIMEOUTS["inline"] == 5.0
    start = trio.current_time()
    report = await run_chaos(factory, requests=100, concurrency=8, plan=build_plan(args), seed=4)
    assert_survives(report)
    hangs = report.faults_fired["hang"]
    assert hangs >= 1 and report.outcomes.get("failed: HungWorker", 0) <= hangs
    assert trio.current_time() - start == pytest.approx(0.25 * hangs)  # each hang: 0.25 s


def test_the_chaos_command_refuses_a_bad_hang_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_supervise._cli import main

    parser = argparse.ArgumentParser()
    add_chaos_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["chaos", "--help"])
    assert "--hang-timeout SECONDS" in capsys.readouterr().out
    for bad in ("0", "-1", "inf", "nan"):
        assert main(["chaos", "--hang-timeout", bad]) == 2
        assert "--hang-timeout must be a finite number of seconds > 0" in capsys.readouterr().out
