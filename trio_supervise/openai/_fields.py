"""The fields of a request body that every generating endpoint shares, both ways: read and checked
against what every tier can carry (``n``, ``stop``, ``model``, ``stream``, ``continuation`` and
the sampling fields: :func:`shared_fields`), and written by a client (:func:`sampling_body`).

Each check raises a :class:`BadRequest` that names the field and says what was expected and what
was got. Integers must fit 64 bits (msgpack to a child process, Ray, a remote backend); numbers
are not bools; ``max_tokens`` is checked against the model's own limit later, by the server.
"""

from __future__ import annotations

from typing import Any

from .._errors import BadRequest, shown
from .._types import SamplingParams

__all__ = [
    "INT64",
    "MAX_STOP",
    "SharedFields",
    "field_int",
    "field_number",
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
