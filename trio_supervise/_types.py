"""The data that flows through a worker: requests in, batches to the runner, chunks out.

All are frozen attrs values with validators, so a bad request fails at construction with a
:class:`BadRequest` that says what was expected and what was got.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable
from typing import Any, final

import attrs

from ._errors import BadRequest, InferenceError, shown

__all__ = [
    "SAMPLING_EXTRAS",
    "Batch",
    "ChatMessage",
    "Chunk",
    "FinishReason",
    "RebuildCause",
    "Request",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
]


class FinishReason(enum.Enum):
    """Why a request ended."""

    STOP = "stop"
    """A stop sequence or the end of text."""
    LENGTH = "length"
    """``max_tokens`` reached."""
    CANCELLED = "cancelled"
    """Its consumer left before the end."""
    ERROR = "error"
    """It failed (the chunk's ``error`` says how)."""


class RebuildCause(enum.Enum):
    """Why an operator asked the runner to rebuild its session."""

    CONTEXT_POISONED = "context_poisoned"
    MANUAL = "manual"
    CONFIG_CHANGE = "config_change"
    REMOTE_AUTH_FAILURE = "remote_auth_failure"


def _bad(message: str) -> BadRequest:
    return BadRequest(message)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_LOGPROBS = 20
"""The most alternatives per token a request may ask for (vLLM's default limit)."""
"""Every integer a request carries fits in 64 bits: what every tier can carry (msgpack frames
to a child process or a Ray actor, JSON to a remote backend)."""


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT64_MAX:
        raise _bad(f"{name} must be an int in [{minimum}, 2**63 - 1], got {shown(value)}")


def _check_text(name: str, value: str) -> None:
    """Text must be Unicode that encodes as UTF-8 (a lone surrogate does not)."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise _bad(
                f"{name} must be valid Unicode text, got a lone surrogate at {exc.start}"
            ) from None


def _check_float(name: str, value: object, low: float, high: float) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )
    if not ok:
        raise _bad(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


@final
@attrs.frozen
class SamplingParams:
    """How to sample a completion.

    Example: ``SamplingParams(max_tokens=64, temperature=0.7, seed=1, stop=("\\n\\n",))``.
    """

    max_tokens: int
    """The most tokens to generate (``>= 1``)."""
    temperature: float = 1.0
    """Sampling temperature, in [0, 100] (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    seed: int | None = None
    """Seeds sampling, so the same request gives the same output whatever its batch."""
    stop: tuple[str, ...] = ()
    """Stop sequences: generation ends when the text ends with one of them (the text keeps
    it; the server cuts it from what a client gets)."""
    top_k: int = 0
    """Sample only among the ``top_k`` most likely tokens (0: all)."""
    min_p: float = 0.0
    """Drop tokens less likely than ``min_p`` times the most likely one (0: none)."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token already generated, in [-2, 2]."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was generated, in [-2, 2]."""
    repetition_penalty: float = 1.0
    """Divides a positive logit (multiplies a negative one) of every token in the prompt or the
    output, in (0, 2]; 1: none (vLLM's and transformers' definition)."""
    min_tokens: int = 0
    """Neither a stop sequence nor the end of text ends the output before this many tokens."""
    ignore_eos: bool = False
    """Go on past the end-of-text token (to ``max_tokens`` or a stop sequence)."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """``(token id, bias)`` pairs: the bias, in [-100, 100], is added to that token's logit."""
    logprobs: int | None = None
    """Return each generated token's log probability and this many most likely alternatives
    (0 to 20); None: none."""

    def __attrs_post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, 1)
        _check_float("temperature", self.temperature, 0.0, 100.0)
        _check_float("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0:
            raise _bad(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        seed = self.seed
        if seed is not None and (
            isinstance(seed, bool)
            or not isinstance(seed, int)
            or not INT64_MIN <= seed <= INT64_MAX
        ):
            raise _bad(f"seed must be an int in [-2**63, 2**63 - 1] or None, got {shown(seed)}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise _bad(f"stop must be a tuple of non-empty str, got {shown(self.stop)}")
        for stop in self.stop:
            _check_text("stop", stop)
        _check_int("top_k", self.top_k, 0)
        _check_float("min_p", self.min_p, 0.0, 1.0)
        _check_float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_float("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_float("repetition_penalty", self.repetition_penalty, 0.0, 2.0)
        if self.repetition_penalty == 0:
            raise _bad("repetition_penalty must be a number in (0, 2], got 0")
        _check_int("min_tokens", self.min_tokens, 0)
        if self.min_tokens > self.max_tokens:
            raise _bad(
                f"min_tokens must be at most max_tokens={self.max_tokens}, got {self.min_tokens}"
            )
        if not isinstance(self.ignore_eos, bool):
            raise _bad(f"ignore_eos must be a bool, got {shown(self.ignore_eos)}")
        bias: Any = self.logit_bias
        if not isinstance(bias, tuple):
            raise _bad(f"logit_bias must be a tuple of (token id, bias) pairs, got {shown(bias)}")
        for pair in bias:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise _bad(f"logit_bias must hold (token id, bias) pairs, got {shown(pair)}")
            _check_int("a logit_bias token id", pair[0], 0)
            _check_float("a logit_bias value", pair[1], -100.0, 100.0)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0)
            if self.logprobs > MAX_LOGPROBS:
                raise _bad(f"logprobs must be in [0, {MAX_LOGPROBS}] or None, got {self.logprobs}")

    def extras(self) -> tuple[str, ...]:
        """The names of the fields of ``SAMPLING_EXTRAS`` set to anything but their neutral
        value, in that order: what a runner must honour (its ``sampling_fields``) to run it."""
        return tuple(name for name, neutral in SAMPLING_EXTRAS.items()
                     if getattr(self, name) != neutral)  # fmt: skip


SAMPLING_EXTRAS: dict[str, Any] = {
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_tokens": 0,
    "ignore_eos": False,
    "logit_bias": (),
    "logprobs": None,
}
"""The sampling fields beyond the ones every runner honours (``max_tokens``, ``temperature``,
``top_p``, ``seed``, ``stop``), with their neutral values. A runner lists those it honours in
``sampling_fields``; a request that sets another one fails with a BadRequest naming it."""


@final
@attrs.frozen
class ChatMessage:
    """One message of a chat: ``ChatMessage("user", "Hello")``."""

    role: str
    """``"system"``, ``"user"`` or ``"assistant"``."""
    content: str
    """Its text."""

    def __attrs_post_init__(self) -> None:
        if self.role not in CHAT_ROLES:
            raise _bad(f"a message's role must be one of {', '.join(CHAT_ROLES)}, "
                       f"got {shown(self.role)}")  # fmt: skip
        if not isinstance(self.content, str):
            raise _bad(f"a message's content must be a str, got {shown(self.content)}")
        _check_text("a message's content", self.content)


CHAT_ROLES = ("system", "user", "assistant")


def _as_messages(messages: Iterable[ChatMessage]) -> tuple[ChatMessage, ...]:
    return tuple(messages)


@final
@attrs.frozen
class Request:
    """One completion request.

    Example: ``Request("r1", "Once upon a time", SamplingParams(max_tokens=16))``.
    """

    id: str
    """Unique among the requests in flight on one worker."""
    prompt: str | tuple[int, ...]
    """Text, or token ids."""
    params: SamplingParams
    """How to sample."""
    idempotent: bool = True
    """Whether it may be run again after a restart if no output was produced yet."""
    deadline: float | None = None
    """An absolute ``trio.current_time()`` after which it fails with ``RequestTimeout``."""
    continuation: str = "auto"
    """What happens when its tier fails after it streamed: ``"replay"`` (run it again from the
    prompt with the same seed, drop what was delivered: needs a ``deterministic`` runner),
    ``"resume"`` (run the prompt plus what was delivered, for the tokens left: any runner, other
    sampling), ``"off"`` (end with ``ContextPoisoned``), or ``"auto"``: ``"replay"`` where the
    runner is deterministic and the request idempotent, else ``"off"``."""
    messages: tuple[ChatMessage, ...] = attrs.field(default=(), converter=_as_messages)
    """A chat request's messages (its ``prompt`` is their rendering by the model's chat
    template): a runner that speaks chat itself (a remote backend's chat endpoint) sends them
    instead of the prompt. Empty for a completion."""
    continue_final: bool = False
    """With ``messages``: the output continues the last (assistant) message rather than
    starting a new one (how a chat stream is resumed on another runner)."""
    max_tokens_asked: bool = True
    """False where the client gave no ``max_tokens`` and it is the model's length less the
    prompt's, as counted here (a chat's default): a runner that passes the request on to a
    server that counts the prompt itself (a remote backend) leaves it to that server."""

    def __attrs_post_init__(self) -> None:
        if self.continuation not in ("auto", "replay", "resume", "off"):
            raise _bad(
                "continuation must be 'auto', 'replay', 'resume' or 'off', "
                f"got {self.continuation!r}"
            )
        if not isinstance(self.id, str) or not self.id:
            raise _bad(f"id must be a non-empty str, got {self.id!r}")
        prompt = self.prompt
        if isinstance(prompt, tuple):
            if not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= INT64_MAX
                for t in prompt
            ):
                raise _bad(f"prompt token ids must be ints in [0, 2**63 - 1], got {shown(prompt)}")
        elif isinstance(prompt, str):
            _check_text("prompt", prompt)
        else:
            raise _bad(f"prompt must be a str or a tuple of token ids, got {shown(prompt)}")
        if not all(isinstance(m, ChatMessage) for m in self.messages):
            raise _bad(f"messages must be ChatMessage values, got {shown(self.messages)}")
        if not isinstance(self.max_tokens_asked, bool):
            raise _bad(f"max_tokens_asked must be a bool, got {self.max_tokens_asked!r}")
        if self.continue_final and (not self.messages or self.messages[-1].role != "assistant"):
            raise _bad("continue_final needs messages whose last one is the assistant's")
        if not isinstance(self.params, SamplingParams):
            raise _bad(f"params must be a SamplingParams, got {self.params!r}")
        if not isinstance(self.idempotent, bool):
            raise _bad(f"idempotent must be a bool, got {self.idempotent!r}")
        if self.deadline is not None and not (
            isinstance(self.deadline, int | float)
            and not isinstance(self.deadline, bool)
            and not math.isnan(self.deadline)
        ):
            raise _bad(
                f"deadline must be a trio.current_time() value or None, got {self.deadline!r}"
            )


def _as_tuple(requests: Iterable[Request]) -> tuple[Request, ...]:
    return tuple(requests)


@final
@attrs.frozen
class Batch:
    """Requests that a runner executes together.

    ``seq`` is a worker-wide 0-based number that the worker stamps on each batch it dispatches
    (a re-run gets a new one). ``is_cancelled(request_id)`` tells the runner that a request's
    consumer left (or its deadline passed): stop producing for it.
    """

    requests: tuple[Request, ...] = attrs.field(converter=_as_tuple)
    """The requests, in order."""
    seq: int = 0
    """The worker-wide batch number."""
    _cancelled: Collection[str] = attrs.field(
        factory=frozenset, eq=False, repr=False, alias="cancelled"
    )

    def __attrs_post_init__(self) -> None:
        if not self.requests:
            raise _bad("a batch needs at least one request, got none")
        ids = [r.id for r in self.requests if isinstance(r, Request)]
        if len(ids) != len(self.requests):
            bad = next(r for r in self.requests if not isinstance(r, Request))
            raise _bad(f"a batch holds Request values, got {bad!r}")
        if len(set(ids)) != len(ids):
            raise _bad(f"request ids in a batch must be unique, got {sorted(ids)}")

    def is_cancelled(self, request_id: str) -> bool:
        """Whether the request's consumer left, so the runner may stop producing for it."""
        return request_id in self._cancelled


@final
@attrs.frozen
class Usage:
    """Token counts of a finished request."""

    prompt_tokens: int
    """Tokens in the prompt."""
    completion_tokens: int
    """Tokens generated."""


@final
@attrs.frozen
class TokenLogprob:
    """One generated token's log probability, and the most likely alternatives at its place."""

    token: str
    """The token's text."""
    logprob: float
    """Its natural log probability."""
    top: tuple[tuple[str, float], ...] = ()
    """``(text, logprob)`` of the most likely tokens at its place, most likely first (as many
    as the request's ``logprobs`` asked for)."""


@final
@attrs.frozen
class Chunk:
    """A piece of one request's output. The last one has ``finish_reason`` (or ``error``)."""

    request_id: str
    """The request it belongs to."""
    token_ids: tuple[int, ...] = ()
    """New token ids, in order."""
    text: str = ""
    """Their text."""
    finish_reason: FinishReason | None = None
    """Set on the request's last chunk."""
    usage: Usage | None = None
    """Token counts, usually on the last chunk."""
    error: InferenceError | None = None
    """When set, the request ends with this error (one request of a batch can fail alone)."""
    logprobs: tuple[TokenLogprob, ...] | None = None
    """One per token of ``token_ids``, where the request asked for ``logprobs``."""

    @property
    def final(self) -> bool:
        """Whether this chunk ends its request."""
        return self.finish_reason is not None or self.error is not None


def chunk_problem(chunk: Any) -> str | None:
    """What is wrong with something a runner yielded as a chunk, or None if it is fine."""
    if not isinstance(chunk, Chunk):
        return f"the runner yielded {chunk!r}, expected a Chunk"
    token_ids: Any = chunk.token_ids
    if not isinstance(token_ids, tuple):
        return f"chunk.token_ids must be a tuple of ints, got {token_ids!r}"
    error: Any = chunk.error
    if error is not None and not isinstance(error, InferenceError):
        return f"chunk.error must be an InferenceError, got {error!r}"
    logprobs: Any = chunk.logprobs
    if logprobs is not None and (
        not isinstance(logprobs, tuple) or len(logprobs) != len(token_ids)
        or not all(isinstance(one, TokenLogprob) for one in logprobs)
    ):  # fmt: skip
        return (f"chunk.logprobs must be a tuple of one TokenLogprob per token "
                f"({len(token_ids)}), got {logprobs!r}")  # fmt: skip
    return None
