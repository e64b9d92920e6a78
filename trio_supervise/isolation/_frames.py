"""The wire protocol between a worker and its child tier in a child process or a Ray actor:
the messages (frames) that cross, and how the values they carry become data and back.

How a frame becomes bytes is :mod:`._codec`'s (msgpack; length-prefixed on a child process's
socket, one Ray call's argument or result, or one item of its stream, for a Ray actor).

Parent to child: :class:`Init`, :class:`Activate`, :class:`Execute`, :class:`Cancel`,
:class:`Rebuild`, :class:`Stop`. Child to parent: :class:`Ready`, :class:`Parked`,
:class:`ChunkFrame`, :class:`BatchEnd`, :class:`BatchFailed`, :class:`RebuildDone`,
:class:`Fatal`, :class:`Heartbeat`.

Errors cross as data (:class:`ErrorData`): the exported class name, message, retryable,
retry_after and the traceback text. Classes that are not the library's own arrive as
:class:`RunnerError`. A runner's ``default_policy`` crosses as :class:`PolicyData`.
"""

from __future__ import annotations

import builtins
import traceback
from typing import Any

import msgspec

from .. import _errors
from .._errors import ConfigError, InferenceError, RunnerError, SuperviseError
from .._types import (
    SAMPLING_EXTRAS,
    ChatMessage,
    Chunk,
    FinishReason,
    Request,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from ..supervision import Backoff, Directive, Policy, RestartIntensity, Rules, on
from ..supervision import rules as rules_

__all__ = [
    "MAX_FRAME",
    "Activate",
    "BatchEnd",
    "BatchFailed",
    "Cancel",
    "ChunkFrame",
    "ErrorData",
    "Execute",
    "Fatal",
    "Heartbeat",
    "Init",
    "Message",
    "Parked",
    "PolicyData",
    "Ready",
    "Rebuild",
    "RebuildDone",
    "Reply",
    "RequestData",
    "Stop",
    "chunk_from_frame",
    "chunk_to_frame",
    "error_from_data",
    "error_to_data",
    "policy_from_data",
    "policy_to_data",
    "request_from_data",
    "request_to_data",
]

MAX_FRAME = 16 * 1024 * 1024
"""The largest frame, in bytes."""


class _Message(msgspec.Struct, tag=True, array_like=True):
    """A frame's payload: tagged with its class name, encoded as an array."""


class ErrorData(msgspec.Struct, array_like=True, frozen=True):
    """An exception as data."""

    cls: str
    message: str
    retryable: bool | None = None
    retry_after: float | None = None
    traceback: str = ""


class RequestData(msgspec.Struct, array_like=True, frozen=True):
    """A :class:`Request` as data."""

    id: str
    prompt: str | list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    idempotent: bool
    deadline: float | None
    extras: dict[str, Any] = msgspec.field(default_factory=dict)
    """The sampling fields of ``SAMPLING_EXTRAS`` that are set (logit_bias as pairs)."""
    messages: list[tuple[str, str]] = msgspec.field(default_factory=list)
    continue_final: bool = False
    max_tokens_asked: bool = True


# --- parent to child --------------------------------------------------------------------------


class Init(_Message):
    """Build the runner: ``factory`` (an import path) with ``runner_args``, on ``device``.

    With ``probe``, only import the factory, answer ``Ready`` with its class-level attributes
    (``max_concurrency``, ``default_policy``) and exit: the parent learns the runner's policy
    without importing it. With ``park``, build the runner and open the device (and load it, with
    ``preload``), answer ``Parked`` and wait for ``Activate``: a standby spare.
    """

    factory: str
    runner_args: dict[str, Any]
    device: str
    sys_path: list[str]
    generation: int
    probe: bool = False
    park: bool = False
    preload: bool = False


class Activate(_Message):
    """A parked spare takes over as incarnation ``generation``: probe the device, load, Ready."""

    generation: int


class Execute(_Message):
    """Run a batch."""

    seq: int
    requests: list[RequestData]


class Cancel(_Message):
    """A request's consumer left: the runner sees it through ``batch.is_cancelled``."""

    seq: int
    request_id: str


class Rebuild(_Message):
    """Call ``runner.rebuild_session(cause)``."""

    token: int
    cause: str


class Stop(_Message):
    """Close the runner and exit."""


# --- child to parent --------------------------------------------------------------------------


class PolicyData(msgspec.Struct, array_like=True, frozen=True):
    """A :class:`Policy` as data: rules over the library's and the builtin exception classes."""

    rules: list[tuple[list[str], str]]
    default: str
    intensity: tuple[int, float]
    backoff: tuple[float, float, float, float, float | None]


class Parked(_Message):
    """A standby spare is built and waits for ``Activate``."""

    pid: int


class Ready(_Message):
    """The runner is loaded (or, after a probe, its factory imported)."""

    pid: int
    max_concurrency: int
    policy: PolicyData | None = None
    deterministic: bool = False
    sampling_fields: list[str] = msgspec.field(default_factory=list)


class ChunkFrame(_Message):
    """One chunk of batch ``seq``."""

    seq: int
    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None
    error: ErrorData | None = None
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] | None = None


class BatchEnd(_Message):
    """Batch ``seq`` ended normally (the runner's iterator was exhausted)."""

    seq: int


class BatchFailed(_Message):
    """Batch ``seq`` raised ``error``; ``sticky``: the child exits after this report."""

    seq: int
    error: ErrorData
    sticky: bool = False


class RebuildDone(_Message):
    """The rebuild ``token`` finished, with ``error`` if it raised."""

    token: int
    error: ErrorData | None = None


class Fatal(_Message):
    """The child cannot go on (a failed build or load, a sticky error); it exits after this."""

    error: ErrorData


class Heartbeat(_Message):
    """The child is alive; ``progress`` counts chunks produced so far, ``busy`` batches running."""

    progress: int
    busy: int


Message = Init | Activate | Execute | Cancel | Rebuild | Stop
"""What the parent sends."""
Reply = Ready | Parked | ChunkFrame | BatchEnd | BatchFailed | RebuildDone | Fatal | Heartbeat
"""What the child sends."""

# --- conversions ------------------------------------------------------------------------------


def error_to_data(error: BaseException) -> ErrorData:
    """An exception as data: its class name if the library exports it, else the qualified name."""
    cls = type(error)
    name = cls.__name__ if getattr(_errors, cls.__name__, None) is cls else cls.__qualname__
    text = "".join(traceback.format_exception(error))
    if isinstance(error, InferenceError):
        return ErrorData(name, error.message, error.retryable, error.retry_after, text)
    return ErrorData(name, str(error), None, None, text)


def error_from_data(data: ErrorData) -> SuperviseError:
    """The exception back: the library's own classes as themselves, others as RunnerError.

    The child's traceback text is attached as a note.
    """
    cls = getattr(_errors, data.cls, None)
    error: SuperviseError
    if isinstance(cls, type) and issubclass(cls, InferenceError):
        error = cls(data.message, retryable=data.retryable, retry_after=data.retry_after)
    elif isinstance(cls, type) and issubclass(cls, SuperviseError):
        error = cls(data.message)  # ConfigError and the supervision errors take a message
    else:
        error = RunnerError(f"{data.cls}: {data.message}")
    if data.traceback:
        error.add_note(f"in the child process:\n{data.traceback.rstrip()}")
    return error


def request_to_data(request: Request) -> RequestData:
    """A request as data."""
    params = request.params
    prompt = request.prompt if isinstance(request.prompt, str) else list(request.prompt)
    return RequestData(
        request.id,
        prompt,
        params.max_tokens,
        params.temperature,
        params.top_p,
        params.seed,
        list(params.stop),
        request.idempotent,
        request.deadline,
        {name: getattr(params, name) for name in params.extras()},
        [(m.role, m.content) for m in request.messages],
        request.continue_final,
        request.max_tokens_asked,
    )


def request_from_data(data: RequestData) -> Request:
    """The request back."""
    extras = {k: v for k, v in data.extras.items() if k in SAMPLING_EXTRAS}
    if "logit_bias" in extras:
        extras["logit_bias"] = tuple(tuple(pair) for pair in extras["logit_bias"])
    params = SamplingParams(
        data.max_tokens, data.temperature, data.top_p, data.seed, tuple(data.stop), **extras
    )
    prompt = data.prompt if isinstance(data.prompt, str) else tuple(data.prompt)
    messages = tuple(ChatMessage(role, content) for role, content in data.messages)
    return Request(data.id, prompt, params, data.idempotent, data.deadline,
                   messages=messages, continue_final=data.continue_final,
                   max_tokens_asked=data.max_tokens_asked)  # fmt: skip


def chunk_to_frame(seq: int, chunk: Chunk) -> ChunkFrame:
    """A chunk as data."""
    usage = (
        None if chunk.usage is None else (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    )
    reason = None if chunk.finish_reason is None else chunk.finish_reason.value
    error = None if chunk.error is None else error_to_data(chunk.error)
    logprobs = None
    if chunk.logprobs is not None:
        logprobs = [(one.token, one.logprob, list(one.top)) for one in chunk.logprobs]
    return ChunkFrame(
        seq, chunk.request_id, list(chunk.token_ids), chunk.text, reason, usage, error, logprobs
    )


def chunk_from_frame(frame: ChunkFrame) -> Chunk:
    """The chunk back (an error that is not an InferenceError arrives as RunnerError)."""
    usage = None if frame.usage is None else Usage(*frame.usage)
    reason = None if frame.finish_reason is None else FinishReason(frame.finish_reason)
    error = None
    if frame.error is not None:
        restored = error_from_data(frame.error)
        error = restored if isinstance(restored, InferenceError) else RunnerError(str(restored))
    logprobs = None
    if frame.logprobs is not None:
        logprobs = tuple(TokenLogprob(token, logprob, tuple(map(tuple, top)))  # type: ignore[arg-type]
                         for token, logprob, top in frame.logprobs)  # fmt: skip
    return Chunk(frame.request_id, tuple(frame.token_ids), frame.text, reason, usage, error,
                 logprobs)  # fmt: skip


def _exception_class(name: str) -> type[Exception]:
    cls = getattr(_errors, name, None) or getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise ConfigError(f"policy rule names {name!r}, not an exception class")
    return cls


def policy_to_data(policy: Policy) -> PolicyData:
    """A policy as data.

    Raises:
        ConfigError: its decider is not ``rules(...)``, or names an exception class that is
            neither the library's nor a builtin one (the parent must not import the runner).
    """
    decider = policy.decider
    if not isinstance(decider, Rules):
        raise ConfigError(
            f"a process-isolated runner's default_policy must use rules(...), got {decider!r}; "
            "pass policy= to open_worker instead"
        )
    rules = []
    for rule in decider.rules:
        names = []
        for cls in rule.exception_types:
            if _exception_class_or_none(cls.__name__) is not cls:
                raise ConfigError(
                    f"a process-isolated runner's default_policy names {cls.__qualname__}, which "
                    "the parent cannot import; pass policy= to open_worker instead"
                )
            names.append(cls.__name__)
        rules.append((names, rule.directive.name))
    b = policy.backoff
    return PolicyData(
        rules,
        decider.default.name,
        (policy.intensity.max_restarts, policy.intensity.within),
        (b.initial, b.maximum, b.multiplier, b.jitter, b.reset_after),
    )


def _exception_class_or_none(name: str) -> type | None:
    try:
        return _exception_class(name)
    except ConfigError:
        return None


def policy_from_data(data: PolicyData) -> Policy:
    """The policy back."""
    rules = [
        on(*(_exception_class(name) for name in names), Directive[directive])
        for names, directive in data.rules
    ]
    return Policy(
        rules_(*rules, default=Directive[data.default]),
        RestartIntensity(*data.intensity),
        Backoff(*data.backoff),
    )
