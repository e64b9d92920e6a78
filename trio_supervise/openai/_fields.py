"""The fields of a request body that every generating endpoint shares, both ways: read and checked
against what every tier can carry (:func:`shared_fields`: ``n``, ``stop``, ``model``,
``stream``, ``continuation``, ``max_tokens`` and the sampling fields), and written by a client
(:func:`sampling_body`). The fields OpenAI (or vLLM) defines that no tier honours are refused
when set to anything but their neutral value (:data:`UNHONOURED`, :func:`refuse_unhonoured`), so
nothing a client asks for is dropped silently; ``stream_options`` is read by
:func:`include_usage`. Each endpoint reads its own fields (a completion's ``prompt``, ``echo``
and ``logprobs``; a chat's ``messages`` and ``top_logprobs``) on top.

Each check raises a :class:`BadRequest` that names the field and says what was expected and what
was got. Integers must fit 64 bits (msgpack to a child process, Ray, a remote backend); numbers
are not bools. ``max_tokens`` is checked against the model's own limit later, by the server,
where the prompt's length is known; a sampling field a runner does not honour is refused by its
tier (``sampling_fields``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, final

import attrs

from .._errors import BadRequest, shown
from .._types import MAX_LOGPROBS, SamplingParams

__all__ = [
    "INT64",
    "MAX_CHOICES",
    "MAX_LOGIT_BIAS",
    "MAX_STOP",
    "UNHONOURED",
    "Shared",
    "choice_seed",
    "field_bool",
    "field_int",
    "field_number",
    "include_usage",
    "refuse_unhonoured",
    "sampling_body",
    "shared_fields",
]

INT64 = (-(2**63), 2**63 - 1)
"""The integers every tier can carry (msgpack to a child process, Ray, a remote backend)."""

MAX_STOP = 4
"""Stop sequences a request may give (OpenAI's limit)."""

MAX_CHOICES = 16
"""Choices one request may ask for, ``n`` times the prompts of a list: each is a request of its
own on the pool, so one body cannot fill a model's queue."""

MAX_LOGIT_BIAS = 300
"""Entries of ``logit_bias`` a request may give (OpenAI's limit)."""

CONTINUATIONS = ("auto", "replay", "resume", "off")


@final
@attrs.frozen
class Shared:
    """The shared fields of a body, checked."""

    sampling: dict[str, Any]
    """``SamplingParams`` keyword arguments but ``max_tokens`` (and, set per choice, ``seed``)."""
    seed: int | None
    """The request's seed: choice ``i`` samples with :func:`choice_seed` of it."""
    max_tokens: int | None
    """``max_tokens`` (a chat's ``max_completion_tokens`` wins); None: not given."""
    n: int
    """Choices per prompt."""
    model: str | None
    """The model asked for; ``None`` when the server is to pick its only one."""
    stream: bool
    """Whether the answer is streamed as server-sent events."""
    continuation: str
    """What happens when its tier fails after it streamed (see ``Request.continuation``)."""
    include_usage: bool
    """A stream ends with one more event, of no choices and the usage."""
    include_stop: bool
    """vLLM's ``include_stop_str_in_output``: the stop sequence stays in the text."""

    def params(self, max_tokens: int, index: int) -> SamplingParams:
        """The sampling parameters of choice ``index``."""
        return SamplingParams(
            max_tokens=max_tokens, seed=choice_seed(self.seed, index), **self.sampling
        )


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index`` of a request seeded ``seed``: ``seed`` itself for the first
    (so ``n=1`` and the first of ``n=2`` agree), then a 64-bit hash of ``(seed, index)``: the same
    request gives the same choices. None stays None (each choice's request id seeds it)."""
    if seed is None or index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def shared_fields(data: dict[str, Any], *, chat: bool = False) -> Shared:
    """The shared fields of a decoded body, checked in a fixed order (the first bad one is
    named). ``chat``: also ``max_completion_tokens``, which wins over ``max_tokens``."""
    n = field_int(data, "n", 1, 1, MAX_CHOICES)
    stop = data.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise BadRequest(f"stop must be a non-empty string or a list of them, got {shown(stop)}")
    if len(stop) > MAX_STOP:
        raise BadRequest(f"stop may hold at most {MAX_STOP} sequences, got {len(stop)}")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"model must be a string, got {shown(model)}")
    stream = field_bool(data, "stream", False)
    continuation = data.get("continuation", "auto")
    if continuation not in CONTINUATIONS:
        raise BadRequest(
            f"continuation must be 'auto', 'replay', 'resume' or 'off', got {shown(continuation)}"
        )
    max_tokens = field_int(data, "max_tokens", None, 1, INT64[1])
    if chat:
        max_tokens = field_int(data, "max_completion_tokens", max_tokens, 1, INT64[1])
    top_k = field_int(data, "top_k", 0, -1, INT64[1])
    sampling = {
        "temperature": field_number(data, "temperature", 1.0, 0.0, 2.0),
        "top_p": field_number(data, "top_p", 1.0, 0.0, 1.0),
        "stop": tuple(stop),
        "top_k": max(top_k, 0),  # vLLM's -1 and 0 both mean all tokens
        "min_p": field_number(data, "min_p", 0.0, 0.0, 1.0),
        "presence_penalty": field_number(data, "presence_penalty", 0.0, -2.0, 2.0),
        "frequency_penalty": field_number(data, "frequency_penalty", 0.0, -2.0, 2.0),
        "repetition_penalty": field_number(data, "repetition_penalty", 1.0, 0.0, 2.0),
        "min_tokens": field_int(data, "min_tokens", 0, 0, INT64[1]),
        "ignore_eos": field_bool(data, "ignore_eos", False),
        "logit_bias": _logit_bias(data.get("logit_bias")),
    }
    if sampling["top_p"] == 0:
        raise BadRequest("top_p must be a number in (0, 1], got 0")
    if sampling["repetition_penalty"] == 0:
        raise BadRequest("repetition_penalty must be a number in (0, 2], got 0")
    return Shared(
        sampling,
        field_int(data, "seed", None, *INT64),
        max_tokens,
        n,
        model,
        stream,
        continuation,
        include_usage(data, stream),
        field_bool(data, "include_stop_str_in_output", False),
    )


def _logit_bias(bias: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias``: token ids (as JSON object keys) to a bias in [-100, 100]."""
    if bias is None:
        return ()
    if not isinstance(bias, dict):
        raise BadRequest(f"logit_bias must be an object of token ids to numbers, got {shown(bias)}")
    if len(bias) > MAX_LOGIT_BIAS:
        raise BadRequest(f"logit_bias may hold at most {MAX_LOGIT_BIAS} tokens, got {len(bias)}")
    pairs = []
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 19):
            raise BadRequest(f"logit_bias keys must be token ids (0 or more), got {shown(key)}")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (-100 <= value <= 100)
        ):
            raise BadRequest(
                f"logit_bias values must be numbers in [-100, 100], got {shown(value)}"
            )
        pairs.append((int(key), float(value)))
    tokens = [t for t, _ in pairs]
    if len(set(tokens)) != len(tokens):
        twice = next(t for t in tokens if tokens.count(t) > 1)
        raise BadRequest(f"logit_bias gives token {twice} more than once")
    token = next((t for t, _ in pairs if t > INT64[1]), None)
    if token is not None:
        raise BadRequest(f"logit_bias keys must be token ids within 64 bits, got {token}")
    return tuple(sorted(pairs))


def logprobs_count(value: Any, field: str) -> int | None:
    """A count of alternatives per token, in [0, MAX_LOGPROBS], or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LOGPROBS:
        raise BadRequest(f"{field} must be an integer in [0, {MAX_LOGPROBS}], got {shown(value)}")
    return value


def _number_is(*neutral: float) -> Callable[[Any], bool]:
    """Null, or a number (not a bool) equal to one of ``neutral``."""
    return lambda v: v is None or (not isinstance(v, bool) and isinstance(v, int | float)
                                   and v in neutral)  # fmt: skip


def _one_of(*neutral: Any) -> Callable[[Any], bool]:
    """Null, or one of ``neutral`` (compared by type too: ``0`` is not ``False``)."""
    return lambda v: v is None or any(type(v) is type(n) and v == n for n in neutral)


UNHONOURED: dict[str, tuple[Callable[[Any], bool], str]] = {
    # OpenAI's
    "best_of": (_number_is(1), "null or 1 (one candidate per choice)"),
    "suffix": (_one_of(), "null"),
    # vLLM's
    "use_beam_search": (_one_of(False), "null or false"),
    "prompt_logprobs": (_one_of(), "null"),
    # tools, formats and other modalities
    "tools": (_one_of([]), "null or []"),
    "tool_choice": (_one_of("none"), 'null or "none"'),
    "functions": (_one_of([]), "null or []"),
    "function_call": (_one_of("none"), 'null or "none"'),
    "response_format": (_one_of({"type": "text"}), 'null or {"type": "text"}'),
    "audio": (_one_of(), "null"),
    "modalities": (_one_of(["text"]), 'null or ["text"]'),
    "prediction": (_one_of(), "null"),
}
"""The request fields no tier honours, in the order they are checked: ``field -> (whether a
value is neutral, what is accepted)``. A value that is not neutral is a 400 naming the field."""

_UNHONOURED_NAMES = frozenset(UNHONOURED)


def refuse_unhonoured(data: dict[str, Any]) -> None:
    """Raise a BadRequest naming the first field of :data:`UNHONOURED` (in its order) that
    ``data`` sets to a value that is not neutral; fields nobody defines stay ignored."""
    if _UNHONOURED_NAMES.isdisjoint(data):  # the usual body: one set test, no loop
        return
    for key, (neutral, accepted) in UNHONOURED.items():
        value = data.get(key)
        if not neutral(value):
            raise BadRequest(
                f"{key} is not supported by this server: it accepts {accepted}, got {shown(value)}"
            )


_STREAM_OPTIONS_NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "continuous_usage_stats": (_one_of(False), "null or false"),
}


def include_usage(data: dict[str, Any], stream: bool) -> bool:
    """Whether ``stream_options`` asks for a last event with the usage (``include_usage``).

    OpenAI allows ``stream_options`` only with ``stream: true``; a key other than
    ``include_usage`` is a 400 naming it (vLLM's ``continuous_usage_stats`` is accepted when
    false)."""
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequest(f"stream_options must be an object, got {shown(options)}")
    if not stream:
        raise BadRequest("stream_options is only allowed when stream is true")
    for key, value in options.items():
        if key == "include_usage":
            if value is not None and not isinstance(value, bool):
                raise BadRequest(
                    f"stream_options.include_usage must be a boolean, got {shown(value)}"
                )
            continue
        neutral, accepted = _STREAM_OPTIONS_NEUTRAL.get(key, (_one_of(), ""))
        if not neutral(value) or not accepted:
            also = f" (and {key}: {accepted})" if accepted else ""
            raise BadRequest(
                f"stream_options.{key} is not supported by this server: stream_options accepts "
                f"include_usage{also}, got {shown(value)}"
            )
    return options.get("include_usage") is True


def field_bool(data: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean field, or its default (null)."""
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be a boolean, got {shown(value)}")
    return value


def field_int(data: dict[str, Any], key: str, default: Any, low: int, high: int) -> Any:
    """An integer field (not a bool, not a float) within ``[low, high]``, or its default."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise BadRequest(f"{key} must be an integer in [{low}, {high}], got {shown(value)}")
    return value


def field_number(data: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """A number field (an int or a float, not a bool) within ``[low, high]``, or its default."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key} must be a number, got {shown(value)}")
    if not low <= value <= high:  # exact for any int, and false for NaN
        raise BadRequest(f"{key} must be a number in [{low:g}, {high:g}], got {shown(value)}")
    return float(value)


def sampling_body(params: SamplingParams) -> dict[str, Any]:
    """A client's streamed request fields for ``params`` (usage asked for in the last event;
    the extra sampling fields where set, ``logprobs`` not: a client reads no log
    probabilities back)."""
    body: dict[str, Any] = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    for name in params.extras():
        if name == "logit_bias":
            body[name] = {str(token): bias for token, bias in params.logit_bias}
        elif name != "logprobs":
            body[name] = getattr(params, name)
    return body
