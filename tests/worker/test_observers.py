"""Observers only observe: an ``on_event`` callback that raises changes no request's outcome.

The worker settles each decision of its policy (re-queue or fail what the ended tier left, or
stop everything) in its own restart loop, before the decision's event is emitted, never inside
an event callback. So the same faults (a restart, an operator restart that is resumed, and
finally a STOP or a give-up) end every request the same way whether the observers work, raise
on every event, or every callback the worker's events reach raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import trio_supervise as ts
from tests.support.helpers import FaultRunner, Recorder
from trio_supervise import Request, SamplingParams, WorkerState
from trio_supervise.runners.mock import MockRecord
from trio_supervise.supervision._events import Emitter

Clock = trio.testing.MockClock
Observer = Callable[[ts.SupervisionEvent], object]


def req(rid: str, max_tokens: int = 4, **kwargs: Any) -> Request:
    return Request(rid, f"prompt {rid}", SamplingParams(max_tokens=max_tokens, seed=7), **kwargs)


async def outcome(stream: ts.RequestStream) -> tuple[str, ...]:
    """("ok", text) or ("error", its class, its message)."""
    try:
        _, text, _, _ = await stream.collect()
    except ts.InferenceError as exc:
        return "error", type(exc).__name__, str(exc)
    return "ok", text


def broken(event: ts.SupervisionEvent) -> None:
    raise RuntimeError(f"observer bug on {event.kind.name}")


async def restart_resume_stop(on_event: Observer) -> list[object]:
    """A poisoning (RESTART), an operator restart (RESUME), then an Unrecoverable (STOP)."""
    faults = {0: (1, ts.ContextPoisoned("p0")), 6: (1, ts.Unrecoverable("gone"))}
    args = {"record": MockRecord(), "delay": 1.0, "batch_faults": faults}
    async with ts.open_worker(FaultRunner, runner_args=args, device="cpu", on_event=on_event) as w:
        first = w.submit(ts.Batch([req("a"), req("b", idempotent=False)]))
        queued = w.generate(req("c"))  # waits behind the poisoned batch: re-queued after it
        results: list[object] = [await outcome(s) for s in (*first, queued)]
        streaming = w.generate(req("d", 6))
        await trio.sleep(1.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w.restart)  # waits for "d" to finish, then a fresh runner
            await trio.testing.wait_all_tasks_blocked()
            waiting = w.generate(req("g", idempotent=False))  # queued while it restarts
        results += [await outcome(streaming), await outcome(waiting)]
        last = [w.generate(req(rid)) for rid in ("e", "f", "h")]  # "f" is batch 6: a STOP
        results += [await outcome(s) for s in last]
    return [*results, *where(w)]


async def poison_until_it_gives_up(on_event: Observer) -> list[object]:
    """Four poisonings within a minute: three restarts, then the policy gives up."""
    poison = {seq: (1, ts.ContextPoisoned(f"p{seq}")) for seq in range(4)}
    args = {"record": MockRecord(), "delay": 1.0, "batch_faults": poison}
    streams: list[ts.RequestStream] = []
    results: list[object] = []
    with pytest.raises(ts.RestartIntensityExceeded) as info:
        async with ts.open_worker(
            FaultRunner, runner_args=args, device="cpu", on_event=on_event
        ) as w:
            for n in range(4):
                streams.append(w.generate(req(f"r{n}", continuation="off")))
                streams.append(w.generate(req(f"q{n}")))
                results.append(await outcome(streams[-2]))
            await trio.sleep_forever()
    results += [str(info.value), *[await outcome(s) for s in streams]]
    return [*results, *where(w)]


def where(worker: ts.Worker) -> list[object]:
    stats = worker.statistics()
    counts = (stats.accepted, stats.finished, stats.failed, stats.requeued, stats.continued)
    return [worker.state.value, worker.generation, dict(worker.restart_causes), counts]


SCENARIOS = {
    "stop": (restart_resume_stop, {"RESTARTING", "RESUMED", "STOPPED"}),
    "give_up": (poison_until_it_gives_up, {"RESTARTING", "GAVE_UP"}),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("observers", ["one raises", "every callback raises"])
async def test_a_raising_observer_changes_no_outcome(
    scenario: str, observers: str, autojump_clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive, decisions = SCENARIOS[scenario]
    recorder = Recorder()
    with trio.fail_after(1000):  # a request stranded by a lost settlement would wait forever
        expected = await drive(recorder)
    assert decisions <= set(recorder.kinds())  # the faults drove every kind of decision
    assert expected[-4] in (WorkerState.STOPPED, WorkerState.FAILED)
    if observers == "every callback raises":
        # Whatever callbacks an emitter holds (the worker's own, if it had any), each raises.
        emit = Emitter.emit

        def emit_to_broken_callbacks(self: Emitter, *args: Any, **kwargs: Any) -> None:
            kept, self.callbacks = self.callbacks, tuple(broken for _ in self.callbacks)
            try:
                emit(self, *args, **kwargs)
            finally:
                self.callbacks = kept

        monkeypatch.setattr(Emitter, "emit", emit_to_broken_callbacks)
    with trio.fail_after(1000):
        got = await drive(broken)
    assert got == expected
