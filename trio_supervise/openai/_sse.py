"""Server-sent events, both ways: a stream is ``data: {json}`` events, then ``data: [DONE]``.

Server side: :func:`sse_event` frames one event, :data:`SSE_DONE` ends a stream. Client side:
:func:`sse_data` takes the data out of one line of a stream, and :func:`decode_event` reads an
event of any generating endpoint (a completion's ``text``, a chat's ``delta.content``) into a
:class:`StreamEvent`; an error event, or one that is not what OpenAI sends, raises the typed
error (an error event's ``code`` is its status; a malformed event is a :class:`ServerError`).
"""

from __future__ import annotations

import json
from typing import Any, final

import attrs

from .._errors import ServerError
from .._types import FinishReason, Usage
from ._choices import finish_reason_of, usage_of
from ._json import encode_json
from ._status import error_for_status

__all__ = [
    "DONE_DATA",
    "SSE_DONE",
    "StreamChoice",
    "StreamEvent",
    "decode_event",
    "sse_data",
    "sse_event",
]

SSE_DONE = b"data: [DONE]\n\n"
"""The last event of every stream."""

DONE_DATA = "[DONE]"
"""The data of the last event."""


def sse_event(body: dict[str, Any]) -> bytes:
    """One event: ``data: {json}`` and a blank line."""
    return b"data: " + encode_json(body) + b"\n\n"


def sse_data(line: str) -> str | None:
    """The data of one line of a stream (``[DONE]`` for the last), or ``None`` for a line that
    carries none (blank lines, comments, other fields)."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


@final
@attrs.frozen
class StreamChoice:
    """What one streamed choice adds."""

    text: str
    """New text (``""`` for none)."""
    token_ids: tuple[int, ...]
    """New token ids, where the server sends them (trio-supervise does; plain OpenAI does not)."""
    finish_reason: FinishReason | None
    """Set on the choice's last event."""


@final
@attrs.frozen
class StreamEvent:
    """One event of a stream, read."""

    choices: tuple[StreamChoice, ...]
    usage: Usage | None
    """Token counts, where the event carries them (usually the last does)."""


def decode_event(data: str, source: str) -> StreamEvent:
    """An event's data, read; ``source`` (the URL) opens the message of any error it raises.

    Raises:
        ServerError: the event is not JSON, not an object, or its choices are not a list of
            objects.
        InferenceError: an error event (after the first byte, a server can only say so in the
            stream): the error of its ``code`` (:func:`error_for_status`; 502 without one).
    """
    try:
        event = json.loads(data)
    except ValueError:
        raise ServerError(f"{source} sent an event that is not JSON: {data[:100]!r}") from None
    if not isinstance(event, dict):
        raise ServerError(f"{source} sent an event that is not an object: {data[:100]!r}")
    error = event.get("error")
    if error is not None:
        detail = error.get("message", error) if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and code >= 400 else 502
        raise error_for_status(status, f"{source} failed mid-stream: {detail}")
    choices = event.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise ServerError(f"{source} sent choices that are not a list of objects: {choices!r:.100}")
    return StreamEvent(tuple(_choice(c) for c in choices), usage_of(event.get("usage")))


def _choice(choice: dict[str, Any]) -> StreamChoice:
    text = choice.get("text")
    if text is None:  # a chat's choice
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    ids = choice.get("token_ids")
    reason = choice.get("finish_reason")
    return StreamChoice(
        text if isinstance(text, str) else "",
        tuple(ids) if isinstance(ids, list) and all(type(t) is int for t in ids) else (),
        None if reason is None else finish_reason_of(reason),
    )
