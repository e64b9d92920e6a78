"""``FaultyRunner``: wrap any runner and inject the faults a plan says, where it says."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import trio

from .._errors import ConfigError, ContextPoisoned, OutOfMemory, Unrecoverable
from .._types import Batch, Chunk, RebuildCause
from ..isolation._host import CHILD_ENV
from ..tier._runner import open_chunks, resolve_factory, runner_tokenizer
from ._plan import PROCESS_ONLY, Fault, FaultPlan, Trigger

__all__ = ["FaultyRunner", "InjectedError"]


class InjectedError(Exception):
    """The generic exception of Fault.ERROR: not the library's, so the default policy escalates."""


class FaultyRunner:
    """Wraps a runner and injects faults: before a batch, after its k-th chunk, in ``load``, in
    ``rebuild_session``, as ``plan`` says.

    Args:
        inner: the runner to wrap, or an import path ``"module:factory"`` built with
            ``inner_args`` (the form a child process needs: everything is plain data).
        plan: a :class:`FaultPlan`, or its ``to_dict()``.
        inner_args: keyword arguments for ``inner`` when it is an import path.

    Example (process tier)::

        open_worker("trio_supervise.testing:FaultyRunner", isolation="process", runner_args={
            "inner": "trio_supervise.runners.mock:MockRunner", "inner_args": {"delay": 0.01},
            "plan": FaultPlan.at(batch=3, fault=Fault.EXIT).to_dict()})
    """

    def __init__(
        self,
        inner: Any,
        plan: FaultPlan | Mapping[str, Any] | None = None,
        *,
        inner_args: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(inner, str):
            inner = resolve_factory(inner)(**dict(inner_args or {}))
        elif inner_args:
            raise ConfigError("inner_args goes with inner given as an import path")
        self.inner = inner
        if plan is None:
            plan = FaultPlan.none()
        elif not isinstance(plan, FaultPlan):
            plan = FaultPlan.from_dict(dict(plan))
        self.plan = plan
        if plan.faults & PROCESS_ONLY and os.environ.get(CHILD_ENV) != "1":
            names = sorted(f.name for f in plan.faults & PROCESS_ONLY)
            raise ConfigError(
                f"faults {names} end the process: they need isolation='process' "
                "(inline, they would take the application down)"
            )
        self.generation = 0
        self.max_concurrency = getattr(inner, "max_concurrency", 1)
        self.default_policy = getattr(inner, "default_policy", None)
        self.needs_device = getattr(inner, "needs_device", True)
        self.deterministic = getattr(inner, "deterministic", False)  # faults change no output
        self.sampling_fields = frozenset(getattr(inner, "sampling_fields", frozenset()))
        self.max_model_len = getattr(inner, "max_model_len", None)

    @classmethod
    def load_tokenizer(
        cls, *, inner: Any, inner_args: Mapping[str, Any] | None = None, **_ignored: Any
    ) -> Any:
        """The tokenizer of the runner it wraps (its class's ``load_tokenizer``), or None."""
        factory = resolve_factory(inner) if isinstance(inner, str) else type(inner)
        return runner_tokenizer(factory, dict(inner_args or {}))

    def __repr__(self) -> str:
        return f"FaultyRunner({self.inner!r}, {self.plan!r})"

    async def load(self, device: Any) -> None:
        """Fail when the plan says FAIL_LOAD for this generation, else load the inner runner."""
        if hasattr(self.inner, "generation"):
            self.inner.generation = self.generation
        if self.plan.for_generation(Fault.FAIL_LOAD, self.generation):
            raise ContextPoisoned(f"fault injected: load failed in generation {self.generation}")
        await self.inner.load(device)

    def execute(self, batch: Batch) -> Any:
        """The inner runner's chunks, with the planned fault for this batch's seq.

        An async generator, or (when the inner runner's ``execute`` is a
        :func:`trio.as_safe_channel`) the same wrapped the same way, so that the inner
        runner's nursery is never held open across a ``yield``.
        """
        produced = self.inner.execute(batch)
        if hasattr(produced, "__aenter__") and not hasattr(produced, "__anext__"):
            return _safe_faulty_chunks(self.plan, batch, produced)
        return _faulty_chunks(self.plan, batch, produced)

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Fail when the plan says FAIL_REBUILD for this generation."""
        if self.plan.for_generation(Fault.FAIL_REBUILD, self.generation):
            raise ContextPoisoned(f"fault injected: rebuild failed in generation {self.generation}")
        await self.inner.rebuild_session(cause)

    async def aclose(self) -> None:
        """Close the inner runner."""
        await self.inner.aclose()


async def _faulty_chunks(plan: FaultPlan, batch: Batch, produced: Any) -> AsyncGenerator[Chunk]:
    trigger = plan.for_batch(batch.seq)
    if trigger is not None and trigger.token == 0 and trigger.fault is not Fault.SLOW:
        await _fire(trigger, batch)
    count = 0
    async with open_chunks(produced) as chunks:
        async for chunk in chunks:
            if trigger is not None and trigger.fault is Fault.SLOW:
                await trio.sleep(trigger.delay)
            yield chunk
            count += 1
            if trigger is not None and count == trigger.token and trigger.fault is not Fault.SLOW:
                await _fire(trigger, batch)


_safe_faulty_chunks = trio.as_safe_channel(_faulty_chunks)


async def _fire(trigger: Trigger, batch: Batch) -> None:
    where = f"batch {batch.seq} after {trigger.token} chunks"
    fault = trigger.fault
    if fault is Fault.POISON:
        raise ContextPoisoned(f"fault injected: poisoned context at {where}")
    if fault is Fault.OOM:
        raise OutOfMemory(f"fault injected: out of memory at {where}")
    if fault is Fault.UNRECOVERABLE:
        raise Unrecoverable(f"fault injected: unrecoverable at {where}")
    if fault is Fault.ERROR:
        raise InjectedError(f"fault injected: a generic error at {where}")
    if fault is Fault.HANG:
        await trio.sleep_forever()
    if fault is Fault.EXIT:
        os._exit(1)
    if fault is Fault.KILL:
        os.kill(os.getpid(), signal.SIGKILL)
        await trio.sleep_forever()  # the signal arrives
