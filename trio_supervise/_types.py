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
    "Batch",
    "Chunk",
    "FinishReason",
    "RebuildCause",
    "Request",
    "SamplingParams",
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
    """Stop sequences: generation ends when the text ends with one of them."""

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
    return None
