"""The runner contract: what a model runner must provide to be supervised by a worker.

A runner owns a model on a device. The worker builds one per tier incarnation with
``factory(**runner_args)``, ``await runner.load(device)``s it, then streams batches through
``runner.execute(batch)``; on a restart it ``await runner.aclose()``s it and builds a new one.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

from .._errors import ConfigError, ContextPoisoned, OutOfMemory, Unrecoverable
from .._types import SAMPLING_EXTRAS
from ..supervision import Backoff, Directive, Policy, RestartIntensity, on, rules

if TYPE_CHECKING:
    from .._types import Batch, Chunk, RebuildCause, Request
    from ..devices import DeviceContext

__all__ = [
    "DEVICE_POLICY",
    "ModelRunner",
    "RunnerFactory",
    "Tokenizer",
    "open_chunks",
    "resolve_factory",
    "runner_attributes",
    "runner_deterministic",
    "runner_max_model_len",
    "runner_sampling_fields",
    "runner_tokenizer",
    "tell_generation",
    "unhonoured_problem",
]


@runtime_checkable
class ModelRunner(Protocol):
    """What a model runner implements.

    Optional attributes: ``max_concurrency`` (int, default 1: how many batches may execute at
    once), ``default_policy`` (a :class:`Policy` used when the worker is given none),
    ``needs_device`` (bool, default True; False means the runner gets a ``CpuDevice`` and never
    opens a GPU, as a remote runner does), ``deterministic`` (bool, default False; True promises
    that a request gives the same output whatever its batch and whenever it runs, given its
    seed, so a stream cut by a failure can be replayed and continued: see ``Request.continuation``),
    ``sampling_fields`` (the names of ``SAMPLING_EXTRAS`` it
    honours, default none: a request that sets another one fails alone with ``BadRequest``),
    ``max_model_len`` (int: the most tokens, prompt plus completion, a request may have), and
    the classmethod ``load_tokenizer(**runner_args)`` (a tokenizer, for the server).
    """

    async def load(self, device: DeviceContext) -> None:
        """Load the model onto ``device``. Raising, or hanging past the readiness timeout, is a
        failure of the tier."""

    def execute(self, batch: Batch) -> AsyncIterator[Chunk]:
        """Stream chunks for the batch's requests, in order per request; each request ends
        with a chunk that has ``finish_reason`` or ``error``. Honour ``batch.is_cancelled``.

        Usually an async generator. A runner that needs a nursery (concurrent streams, as a
        remote runner has) must not hold one open across a ``yield``: it decorates ``execute``
        with :func:`trio.as_safe_channel` instead, and so returns an async context manager
        that yields the chunks' channel; the worker accepts either (see
        :func:`~trio_supervise.open_chunks`).
        """
        ...

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Rebuild session state (re-read credentials, reset caches) without a full reload."""

    async def aclose(self) -> None:
        """Release everything ``load`` took."""


RunnerFactory = Callable[..., Any]


def resolve_factory(factory: str | RunnerFactory) -> RunnerFactory:
    """A callable from a callable or an import path ``"package.module:factory"``.

    Raises:
        ConfigError: the path is malformed, or names nothing callable.
    """
    if callable(factory):
        return factory
    if not isinstance(factory, str) or factory.count(":") != 1:
        raise ConfigError(
            f"runner factory must be a callable or an import path 'module:factory', got {factory!r}"
        )
    module_name, _, attribute = factory.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import runner module {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ConfigError(f"runner factory {factory!r} is not callable, got {target!r}")
    result: RunnerFactory = target
    return result


def runner_attributes(runner_or_factory: Any) -> tuple[int, Policy | None, bool]:
    """``(max_concurrency, default_policy, needs_device)`` of a runner (or its class), checked."""

    concurrency = getattr(runner_or_factory, "max_concurrency", 1)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"runner.max_concurrency must be an int >= 1, got {concurrency!r}")
    policy = getattr(runner_or_factory, "default_policy", None)
    if policy is not None and not isinstance(policy, Policy):
        raise ConfigError(f"runner.default_policy must be a Policy or None, got {policy!r}")
    needs_device = getattr(runner_or_factory, "needs_device", True)
    if not isinstance(needs_device, bool):
        raise ConfigError(f"runner.needs_device must be a bool, got {needs_device!r}")
    return concurrency, policy, needs_device


def runner_deterministic(runner: Any) -> bool:
    """``runner.deterministic`` (default False), checked."""
    deterministic = getattr(runner, "deterministic", False)
    if not isinstance(deterministic, bool):
        raise ConfigError(f"runner.deterministic must be a bool, got {deterministic!r}")
    return deterministic


def runner_sampling_fields(runner_or_factory: Any) -> frozenset[str]:
    """``sampling_fields`` of a runner (or its class): which of
    :data:`~trio_supervise._types.SAMPLING_EXTRAS` it honours (default: none), checked."""
    fields: Any = getattr(runner_or_factory, "sampling_fields", frozenset())
    if not isinstance(fields, frozenset | set | tuple | list) or not set(fields) <= set(
        SAMPLING_EXTRAS
    ):
        raise ConfigError(
            "runner.sampling_fields must be a set of the names "
            f"{', '.join(SAMPLING_EXTRAS)}, got {fields!r}"
        )
    return frozenset(fields)


def unhonoured_problem(request: Request, honoured: frozenset[str], runner: str) -> str | None:
    """Why ``runner`` cannot run ``request`` as asked (a sampling field set that it does not
    honour), or None."""
    extras = request.params.extras()
    missing = [name for name in extras if name not in honoured]
    if not missing:
        return None
    what = ", ".join(sorted(honoured)) if honoured else "none of them"
    return (
        f"{missing[0]} is not supported by {runner}: of the extra sampling fields "
        f"({', '.join(SAMPLING_EXTRAS)}) it honours {what}; got "
        f"{missing[0]}={getattr(request.params, missing[0])!r}"
    )


class Tokenizer(Protocol):
    """What a runner's tokenizer gives the server (``/tokenize``, token-id prompts, prompt
    lengths): text to token ids and back, and the size of the vocabulary. A runner class offers
    one with a classmethod ``load_tokenizer(**runner_args)`` (called off the event loop); one
    whose tokenizer has a ``chat_template`` (a ``transformers`` tokenizer) renders chats with it
    (see :func:`trio_supervise.openai.render_chat`)."""

    @property
    def vocab_size(self) -> int:
        """Token ids are in ``range(vocab_size)``."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of token ids."""
        ...


def runner_tokenizer(factory: Any, runner_args: dict[str, Any]) -> Tokenizer | None:
    """The tokenizer a runner class offers for ``runner_args`` (its ``load_tokenizer``), or
    None. Blocking: call it in a thread.

    Raises:
        ConfigError: ``load_tokenizer`` failed.
    """
    load = getattr(factory, "load_tokenizer", None)
    if load is None:
        return None
    try:
        tokenizer: Tokenizer | None = load(**runner_args)
    except Exception as exc:
        raise ConfigError(f"{factory!r}.load_tokenizer failed: {exc!r}") from exc
    return tokenizer


def runner_max_model_len(runner_or_factory: Any) -> int | None:
    """``max_model_len`` of a runner (or its class): the most tokens a request may have, prompt
    plus completion; None when it says nothing. Checked."""
    value = getattr(runner_or_factory, "max_model_len", None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"runner.max_model_len must be an int >= 1 or None, got {value!r}")
    return value


def tell_generation(runner: Any, generation: int) -> None:
    """Set ``runner.generation`` (the tier's incarnation, 1 for the first) before ``load``.

    A runner may read it (the fault-injection harness triggers on it); one that refuses the
    attribute (``__slots__``, a read-only property) is left alone.
    """
    with contextlib.suppress(AttributeError, TypeError):
        runner.generation = generation


@contextlib.asynccontextmanager
async def open_chunks(produced: Any) -> AsyncGenerator[AsyncIterator[Chunk], None]:
    """Iterate what ``runner.execute(batch)`` returned, and close it in this task.

    ``produced`` is an async iterator (an async generator is closed on the way out, even when
    cancelled) or an async context manager that yields one (what :func:`trio.as_safe_channel`
    makes, so that the runner's nursery lives in a context manager, not across a ``yield``).
    """
    if hasattr(produced, "__aenter__") and not hasattr(produced, "__anext__"):
        async with produced as chunks:
            yield chunks
        return
    try:
        yield produced
    finally:
        if getattr(produced, "ag_frame", None) is not None:  # an unfinished async generator
            with trio.CancelScope(shield=True):
                await produced.aclose()


DEVICE_POLICY = Policy(
    rules(
        on(ContextPoisoned, Directive.RESTART),
        on(OutOfMemory, Directive.RESUME),
        on(Unrecoverable, Directive.STOP),
        default=Directive.ESCALATE,
    ),
    RestartIntensity(3, 60.0),
    Backoff.none(),
)
"""The default for workers: a poisoned context restarts, an OOM fails only its batch, an
unrecoverable error stops the worker, anything else escalates; at most 3 restarts a minute."""
