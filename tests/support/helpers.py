"""Small helpers shared by the Trio driver tests."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import trio

import trio_supervise as ts
from trio_supervise.runners.mock import MockRunner


class Recorder:
    """An ``on_event`` callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[ts.SupervisionEvent] = []

    def __call__(self, event: ts.SupervisionEvent) -> None:
        self.events.append(event)

    def kinds(self, child: str | None = None) -> list[str]:
        return [e.kind.name for e in self.events if child is None or e.child == child]

    def times(self, kind: ts.EventKind, child: str | None = None) -> list[float]:
        return [
            e.time for e in self.events if e.kind is kind and (child is None or e.child == child)
        ]

    def timeline(self, child: str | None = None) -> list[tuple[float, str, int]]:
        return [
            (e.time, e.kind.name, e.generation)
            for e in self.events
            if child is None or e.child == child
        ]


def all_tasks() -> list[trio.lowlevel.Task]:
    """Every task in this run, walking the task tree from the root."""
    found = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


def always(directive: ts.Directive, max_restarts: int = 100, within: float = 1.0) -> ts.Policy:
    """A policy whose decider always answers ``directive``."""
    return ts.Policy(
        ts.rules(default=directive), ts.RestartIntensity(max_restarts, within), ts.Backoff.none()
    )


class Boom(Exception):
    """A failure for tests."""


class FaultRunner(MockRunner):
    """A MockRunner with scripted faults, keyed by batch seq or runner instance (tests only).

    ``batch_faults[seq] = (after_chunks, what)`` where ``what`` is an exception to raise, or
    ``"hang"``, ``"unknown"`` (a chunk for an unknown request), ``"unfinished"`` (end early),
    or ``("error", request_id, exc)`` (a chunk with ``error`` for one request).
    ``load_faults[instance]`` is an exception to raise in load, or ``"hang"``.
    ``rebuild_faults[n]`` is an exception for the n-th rebuild (0-based, across instances).
    """

    def __init__(
        self,
        *,
        batch_faults: dict[int, tuple[int, object]] | None = None,
        load_faults: dict[int, object] | None = None,
        rebuild_faults: dict[int, BaseException] | None = None,
        rebuild_time: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_faults = batch_faults or {}
        self.load_faults = load_faults or {}
        self.rebuild_faults = rebuild_faults or {}
        self.rebuild_time = rebuild_time
        self.rebuilding = False

    async def load(self, device: Any) -> None:
        fault = self.load_faults.get(self.instance)
        if fault == "hang":
            await trio.sleep_forever()
        if isinstance(fault, BaseException):
            raise fault
        await super().load(device)

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        assert not self.rebuilding, "a batch started executing inside a rebuild"
        after, what = self.batch_faults.get(batch.seq, (None, None))
        if after == 0:
            self.record.executes.append((self.instance, batch.seq, tuple(batch_ids(batch))))
            await self._fault(what)
        count = 0
        finished: set[str] = set()
        async with contextlib.aclosing(super().execute(batch)) as chunks:
            async for chunk in chunks:
                yield chunk
                if chunk.final:
                    finished.add(chunk.request_id)
                count += 1
                if count == after:
                    if what == "unfinished":
                        return
                    if what == "unknown":
                        yield ts.Chunk("no-such-request", (1,), "x")
                    elif isinstance(what, tuple):  # ("error", request id or None, exc)
                        _, request_id, exc = what
                        if request_id is None:  # the first request still running, if any
                            running = [r.id for r in batch.requests if r.id not in finished]
                            request_id = running[0] if running else None
                        if request_id is not None:
                            yield ts.Chunk(request_id, error=exc)
                    else:
                        await self._fault(what)

    async def _fault(self, what: object) -> None:
        if what == "hang":
            await trio.sleep_forever()
        if isinstance(what, BaseException):
            raise what

    async def rebuild_session(self, cause: ts.RebuildCause) -> None:
        assert not self.rebuilding, "rebuild_session ran concurrently with itself"
        n = len(self.record.rebuilds)
        self.rebuilding = True
        try:
            await trio.sleep(self.rebuild_time)
            await super().rebuild_session(cause)
        finally:
            self.rebuilding = False
        fault = self.rebuild_faults.get(n)
        if fault is not None:
            raise fault


def batch_ids(batch: ts.Batch) -> list[str]:
    return [r.id for r in batch.requests]


def failing_factory(failures: dict[int, BaseException], **kwargs: Any) -> FaultRunner:
    """A factory whose n-th call (0-based, counted in ``kwargs['record']``) raises."""
    record = kwargs["record"]
    fault = failures.get(record.instances)
    if fault is not None:
        record.instances += 1
        raise fault
    return FaultRunner(**kwargs)


def serve_config(**worker: Any) -> Any:
    """A serve config of one mock model on the CPU (port 0); ``server`` and ``runner_args``
    entries go over the defaults, every other keyword into the ``[[workers]]`` table."""
    from trio_supervise.serve import ServeConfig

    server = worker.pop("server", None) or {}
    runner_args = {"delay": 0.005, **worker.pop("runner_args", {})}
    return ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 5, **server},
            "batching": {"max_wait": 0.001},
            "workers": [
                {
                    "name": "mock",
                    "runner": "trio_supervise.runners.mock:MockRunner",
                    "runner_args": runner_args,
                    "device": "cpu",
                    **worker,
                }
            ],
        }
    )


def restarting_once(error: Any = None, **worker: Any) -> Any:
    """``serve_config`` of a mock model whose first runner fails its first batch with ``error``
    (default ``ContextPoisoned("sticky")``), before any chunk: one tier restart, one re-queued
    run. ``runner_args`` entries go over these, every other keyword into the table."""
    from trio_supervise.runners.mock import MockRecord

    args = {
        "fail_instances": (0,),
        "error": ts.ContextPoisoned("sticky") if error is None else error,
        "record": MockRecord(),  # shared, so that only the first runner fails
        **worker.pop("runner_args", {}),
    }
    return serve_config(runner="tests.serve.test_serve_pool:StoppingRunner", runner_args=args,
                        **worker)  # fmt: skip


async def start_server(nursery: trio.Nursery, config: Any) -> Any:
    """``serve(config)`` started in ``nursery``: its handle, once every replica is ready."""
    from trio_supervise.serve.server import serve

    return await nursery.start(serve, config)


@contextlib.contextmanager
def logged(fragment: str, logger: str = "trio_supervise") -> Iterator[trio.Event]:
    """An event set once ``logger`` logs a record whose message holds ``fragment``: a wait for
    what Trio code in this run logs (a handler only observes; it sets the event)."""
    event = trio.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if fragment in record.getMessage():
                event.set()

    handler = Handler()
    target = logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield event
    finally:
        target.removeHandler(handler)


async def outcome(stream: ts.RequestStream) -> tuple[str, object]:
    """("ok", the text) or ("error", the exception): how a request ended."""
    try:
        _, text, _, _ = await stream.collect()
    except ts.InferenceError as exc:
        return "error", exc
    return "ok", text


_SERVING = re.compile(r"^serving \[.*\] on (\S+)$", re.MULTILINE)


def served_url(output: str | bytes) -> str:
    """The URL in the CLI's "serving [models] on URL" line of ``serve``'s output."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    found = _SERVING.search(text)
    assert found is not None, f"no 'serving ... on URL' line in:\n{text}"
    return found.group(1)
