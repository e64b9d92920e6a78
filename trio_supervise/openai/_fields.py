"""The fields of a request body that every generating endpoint shares, both ways: read and checked
against what every tier can carry (``n``, ``stop``, ``model``, ``stream``, ``continuation`` and
the sampling fields: :func:`shared_fields`), and written by a client (:func:`sampling_body`).
The fields OpenAI (or vLLM) defines that no tier honours yet are refused when set to anything but
their neutral value (:data:`UNHONOURED`, :func:`refuse_unhonoured`), so nothing a client asks for
is dropped silently; ``stream_options`` is read by :func:`include_usage`.

Each check raises a :class:`BadRequest` that names the field and says what was expected and what
was got. Integers must fit 64 bits (msgpack to a child process, Ray, a remote backend); numbers
are not bools; ``max_tokens`` is checked against the model's own limit later, by the server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import BadRequest, shown
from .._types import SamplingParams

__all__ = [
    "INT64",
    "MAX_STOP",
    "UNHONOURED",
    "SharedFields",
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

CONTINUATIONS = ("auto", "replay", "resume", "off")

SharedFields = tuple[SamplingParams, str | None, bool, str]
"""``(params, model, stream, continuation)``."""


def shared_fields(data: dict[str, Any]) -> SharedFields:
    """The shared fields of a decoded body, checked in a fixed order (the first bad one is
    named)."""
    field_int(data, "n", 1, 1, 1)  # one choice per request
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
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, got {shown(stream)}")
    continuation = data.get("continuation", "auto")
    if continuation not in CONTINUATIONS:
        raise BadRequest(
            f"continuation must be 'auto', 'replay', 'resume' or 'off', got {shown(continuation)}"
        )
    max_tokens = field_int(data, "max_tokens", 16, 1, INT64[1])
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=field_number(data, "temperature", 1.0, 0.0, 2.0),
        top_p=field_number(data, "top_p", 1.0, 0.0, 1.0),
        seed=field_int(data, "seed", None, *INT64),
        stop=tuple(stop),
    )
    return params, model, stream, continuation


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
    "echo": (_one_of(False), "null or false"),
    "logprobs": (_one_of(), "null (no log probabilities)"),
    "suffix": (_one_of(), "null"),
    "presence_penalty": (_number_is(0), "null or 0"),
    "frequency_penalty": (_number_is(0), "null or 0"),
    "logit_bias": (_one_of({}), "null or {}"),
    # vLLM's sampling extras
    "top_k": (_number_is(-1, 0), "null, -1 or 0 (no top-k)"),
    "min_p": (_number_is(0), "null or 0"),
    "repetition_penalty": (_number_is(1), "null or 1"),
    "min_tokens": (_number_is(0), "null or 0"),
    "ignore_eos": (_one_of(False), "null or false"),
    "include_stop_str_in_output": (_one_of(False), "null or false"),
    "use_beam_search": (_one_of(False), "null or false"),
    # tools and formats
    "tools": (_one_of([]), "null or []"),
    "tool_choice": (_one_of("none"), 'null or "none"'),
    "functions": (_one_of([]), "null or []"),
    "function_call": (_one_of("none"), 'null or "none"'),
    "response_format": (_one_of({"type": "text"}), 'null or {"type": "text"}'),
}
"""The request fields no tier honours yet, in the order they are checked: ``field -> (whether a
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
    """A client's streamed request fields for ``params`` (usage asked for in the last event)."""
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
    return body
