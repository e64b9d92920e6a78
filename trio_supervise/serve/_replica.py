"""One replica of a model: its worker's options, the worker running in it now, and its record.

The pool's root supervisor runs :meth:`Replica.run` in each slot: a fresh :class:`Worker` built
from the replica's one :class:`WorkerOptions` (the ``[[workers]]`` table, checked by
:func:`~trio_supervise.worker._options.check_options`, with the replica's own ``replica_args``
and name) every time the root starts the slot again.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any, final

import attrs
import trio

from .._errors import ConfigError
from ..supervision import EventCallback, Policy, leaves
from ..tier._runner import (
    DEVICE_POLICY,
    Tokenizer,
    resolve_factory,
    runner_attributes,
    runner_max_model_len,
    runner_tokenizer,
)
from ..worker._options import HEARTBEAT_TIMEOUT, WorkerOptions, check_options
from ..worker._worker import Worker, WorkerState, WorkerStatistics
from ._config_tables import WorkerConfig

logger = logging.getLogger("trio_supervise")

__all__ = [
    "DEFAULT_MAX_MODEL_LEN",
    "Replica",
    "SlotTotals",
    "load_tokenizer",
    "max_model_len",
    "replicas_of",
]


@final
@attrs.define(eq=False)
class SlotTotals:
    """A slot's counts over every worker it has run: what a counter in ``/metrics`` shows, so
    that it never goes down when the pool replaces a worker."""

    tokens: int = 0
    batches: int = 0
    requeued: int = 0
    mismatched: int = 0
    continued: collections.Counter[str] = attrs.Factory(collections.Counter)
    """By mode."""
    restarts: collections.Counter[str] = attrs.Factory(collections.Counter)
    """Counted tier restarts and replacements of the worker, by the class of their error."""
    resumes: collections.Counter[str] = attrs.Factory(collections.Counter)
    cuda_errors: collections.Counter[str] = attrs.Factory(collections.Counter)

    @classmethod
    def of(cls, stats: WorkerStatistics) -> SlotTotals:
        """One worker's counts."""
        return cls(
            stats.tokens, stats.batches, stats.requeued, stats.mismatched,
            collections.Counter(stats.continued_modes), collections.Counter(stats.restart_causes),
            collections.Counter(stats.resume_causes), collections.Counter(stats.cuda_errors),
        )  # fmt: skip

    def add(self, other: SlotTotals) -> None:
        """Add another's counts to these."""
        self.tokens += other.tokens
        self.batches += other.batches
        self.requeued += other.requeued
        self.mismatched += other.mismatched
        self.continued.update(other.continued)
        self.restarts.update(other.restarts)
        self.resumes.update(other.resumes)
        self.cuda_errors.update(other.cuda_errors)

    def plus(self, stats: WorkerStatistics | None) -> SlotTotals:
        """These counts and a running worker's, as a new value."""
        total = SlotTotals()
        total.add(self)
        if stats is not None:
            total.add(SlotTotals.of(stats))
        return total


RECENT = 256
"""First-token times a replica keeps for its recent TTFT percentiles (``/v1/workers``)."""


@final
@attrs.define(eq=False)
class Replica:
    """One slot of a model: the worker running in it now (a fresh one after a root restart)."""

    config: WorkerConfig
    index: int
    options: WorkerOptions
    """What each worker in this slot is built from."""
    worker: Worker | None = None
    restarts: int = 0
    dispatched: int = 0
    """Batches sent to it: breaks ties between equally loaded replicas, round robin."""
    retired: SlotTotals = attrs.Factory(SlotTotals)
    """The counts of the workers that ran in this slot before the present one (and of its
    replacements)."""
    last_end: str | None = None
    """The class of the error that ended the last worker in this slot (None: none failed)."""
    recent_ttft: collections.deque[float] = attrs.Factory(lambda: collections.deque(maxlen=RECENT))
    """Seconds to the first token of its latest requests (observed by the server)."""

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def ready(self) -> bool:
        worker = self.worker
        return worker is not None and worker.state.value is WorkerState.READY

    @property
    def stopped(self) -> bool:
        """Stopped for good by its policy (a FAILED worker is replaced by the root supervisor)."""
        worker = self.worker
        return worker is not None and worker.state.value is WorkerState.STOPPED

    @property
    def load(self) -> int:
        """Requests waiting for or running on it."""
        worker = self.worker
        return 0 if worker is None else worker.open_requests()

    @property
    def busy(self) -> bool:
        """A batch sent now would wait: it has as many requests as batches it runs at once
        (one, for most runners; a :class:`~trio_supervise.runners.remote.RemoteRunner` streams
        ``max_connections`` at once, so it is busy only with that many)."""
        worker = self.worker
        return worker is not None and self.load >= worker.concurrency

    async def run(
        self,
        changed: Callable[[], None],
        *,
        on_event: Sequence[EventCallback] = (),
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a fresh worker in this slot until it returns; ``changed()`` when it is put in the
        slot and when it ends; ``on_event`` gets the worker's supervision events (observers)."""
        if self.worker is not None:  # the root supervisor replaces the worker that ended
            self.restarts += 1
            # Its counts go to the slot's as it leaves the slot (until then, `totals` reads it).
            self.retired.add(SlotTotals.of(self.worker.statistics()))
            self.retired.restarts[self.last_end or "return"] += 1
        worker = Worker.from_options(self.options, on_event=on_event)
        self.worker = worker
        changed()
        try:
            await worker.run(task_status=task_status)
        except BaseException as exc:
            if not all(isinstance(leaf, trio.Cancelled) for leaf in leaves(exc)):
                self.last_end = type(exc).__name__
            raise
        else:  # it returned: what ended an earlier worker is not this one's end
            self.last_end = None
        finally:
            changed()

    def totals(self) -> SlotTotals:
        """Its counts over every worker it has run, the present one's included."""
        worker = self.worker
        return self.retired.plus(None if worker is None else worker.statistics())

    def status(self, model: str) -> dict[str, Any]:
        """Its record in ``/v1/workers``."""
        worker = self.worker
        stats = worker.statistics() if worker is not None else None
        where = worker.placement() if worker is not None else {}
        totals = self.totals()
        last_cause = stats.last_restart_cause if stats else None
        ttft = sorted(self.recent_ttft)
        return {
            "name": self.name,
            "model": model,
            "replica": self.index,
            "state": stats.state.value if stats else "starting",
            "generation": stats.generation if stats else 0,
            "restarts": sum(totals.restarts.values()),
            "resumes": sum(totals.resumes.values()),
            "last_restart_cause": last_cause or self.last_end,
            "replaced": self.restarts,
            "pending": stats.pending if stats else 0,
            "in_flight": stats.in_flight if stats else 0,
            "tokens": totals.tokens,
            "ttft_p50": _quantile(ttft, 0.5),
            "ttft_p99": _quantile(ttft, 0.99),
            "isolation": self.config.isolation,
            "pid": where.get("pid"),
            "actor_id": where.get("actor_id"),
            "actor_name": where.get("name"),
            "node_id": where.get("node_id"),
            "node_ip": where.get("node_ip"),
            "frames": where.get("frames"),
            "breaker": stats.breaker.value if stats and stats.breaker else None,
        }


def _quantile(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile of sorted values (nearest rank), None when there are none."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def replicas_of(w: WorkerConfig, drain_timeout: float) -> list[Replica]:
    """The replicas of one ``[[workers]]`` table, each with its checked options.

    Raises:
        ConfigError: an argument the worker refuses (the config's checks passed already).
    """
    policy = w.policy.apply(_runner_policy(w)) if w.policy is not None else None
    return [Replica(w, i, _options(w, i, policy, drain_timeout)) for i in range(w.replica_count)]


def _options(w: WorkerConfig, index: int, policy: Policy | None, drain: float) -> WorkerOptions:
    return check_options(
        w.runner,
        runner_args=w.args_of(index),
        device=w.device,
        policy=policy,
        max_pending=w.max_pending,
        max_attempts=w.max_attempts,
        hang_timeout=w.hang_timeout,
        readiness_timeout=w.readiness_timeout,
        drain_timeout=drain,
        name=f"{w.name}#{index}",
        isolation=w.isolation,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,  # not in the config: the worker's default
        standby=w.standby,
        standby_load=w.standby_load,
        ray_options=w.ray_options or None,
        ray_address=w.ray_address,
        ray_frames=w.ray_frames,
    )


def _runner_policy(w: WorkerConfig) -> Policy:
    """The policy a ``[workers.policy]`` table overrides: the runner's ``default_policy``
    (not imported for a process-isolated runner: DEVICE_POLICY), else DEVICE_POLICY."""
    if w.isolation == "inline":
        _, policy, _ = runner_attributes(resolve_factory(w.runner))
        if policy is not None:
            return policy
    return DEVICE_POLICY


DEFAULT_MAX_MODEL_LEN = 4096
"""``max_model_len`` where neither the config nor the runner gives one."""


def max_model_len(w: WorkerConfig, tokenizer: Any = None) -> int:
    """The config's ``max_model_len``, else the runner's own (an inline runner's attribute: a
    process-isolated runner is not imported here), else its tokenizer's (a
    ``TransformersRunner``'s: the model config's), else :data:`DEFAULT_MAX_MODEL_LEN`."""
    if w.max_model_len is not None:
        return w.max_model_len
    if w.isolation == "inline":
        own = runner_max_model_len(resolve_factory(w.runner))
        if own is not None:
            return own
    told = getattr(tokenizer, "max_model_len", None)
    if isinstance(told, int) and not isinstance(told, bool) and told >= 1:
        return told
    return DEFAULT_MAX_MODEL_LEN


def load_tokenizer(w: WorkerConfig) -> Tokenizer | None:
    """The tokenizer the runner class of ``w`` offers for its first replica's arguments (its
    ``load_tokenizer``), or None. Blocking: call it in a thread. The runner's module is
    imported here even for a process-isolated runner (importing it must not touch a GPU); one
    that cannot be imported here has no tokenizer on this server.

    Raises:
        ConfigError: ``load_tokenizer`` failed.
    """
    try:
        factory = resolve_factory(w.runner)
    except ConfigError as exc:
        logger.warning("model %r has no tokenizer here: %s", w.name, exc)
        return None
    return runner_tokenizer(factory, w.args_of(0))
