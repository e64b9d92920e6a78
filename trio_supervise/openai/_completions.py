"""``/v1/completions``, both ways: a request body read into a :class:`CompletionRequest`
(:func:`parse_completion`) and written by a client (:func:`completion_request`); a response as a
whole body (:func:`completion_body`) or as one event of a stream (:func:`completion_event`, or
:class:`UsageEvents` for a stream whose client asked for its usage in a last event of its own).

A response's choice is ``{"index": 0, "text", "logprobs": null, "finish_reason"}``; a streamed
one adds the chunk's ``token_ids`` (a trio-supervise extension that a front reads back).
"""

from __future__ import annotations

from typing import Any, final

import attrs

from .._errors import BadRequest, shown
from .._types import Chunk, FinishReason, Request, SamplingParams, Usage
from ._choices import finish_reason_name, usage_body
from ._fields import include_usage, refuse_unhonoured, sampling_body, shared_fields
from ._json import decode_object
from ._sse import sse_event

__all__ = [
    "COMPLETIONS_PATH",
    "CompletionRequest",
    "UsageEvents",
    "completion_body",
    "completion_event",
    "completion_request",
    "parse_completion",
]

COMPLETIONS_PATH = "/v1/completions"


@final
@attrs.frozen
class CompletionRequest:
    """A completion request's fields, checked (``max_tokens`` against the model's limit later,
    where the model is known)."""

    prompt: str
    params: SamplingParams
    model: str | None
    """The model asked for; ``None`` when the server is to pick its only one."""
    stream: bool
    """Whether the answer is streamed as server-sent events."""
    continuation: str
    """What happens when its tier fails after it streamed (see :class:`Request`)."""
    include_usage: bool = False
    """A stream ends with one more event, of no choices and the usage
    (``stream_options.include_usage``)."""

    def request(self, request_id: str) -> Request:
        """The request to generate, under ``request_id``."""
        return Request(request_id, self.prompt, self.params, continuation=self.continuation)


def parse_completion(body: bytes) -> CompletionRequest:
    """A completion request's body, read and checked; a BadRequest names the field and says
    what was expected and what was got."""
    data = decode_object(body)
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest(f"prompt must be a string, got {shown(prompt)}")
    params, model, stream, continuation = shared_fields(data)
    usage = include_usage(data, stream)
    refuse_unhonoured(data)
    return CompletionRequest(prompt, params, model, stream, continuation, usage)


def completion_body(
    request_id: str,
    model: str,
    created: int,
    text: str,
    finish_reason: FinishReason | None,
    usage: Usage | None,
) -> dict[str, Any]:
    """A whole completion (``created``: its Unix time, in seconds)."""
    reason = finish_reason_name(finish_reason)
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    body: dict[str, Any] = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if usage is not None:
        body["usage"] = usage_body(usage)
    return body


def completion_event(request_id: str, model: str, created: int, chunk: Chunk) -> bytes:
    """One chunk of a streamed completion, as its event."""
    body = completion_body(request_id, model, created, chunk.text, chunk.finish_reason, chunk.usage)
    body["choices"][0]["token_ids"] = list(chunk.token_ids)
    return sse_event(body)


@final
class UsageEvents:
    """The events of a stream whose client asked for its usage (OpenAI's
    ``stream_options.include_usage``): each choice's event has ``"usage": null``, and
    :meth:`last` is one more event, of no choices, with the usage of the whole response: the
    usage its last chunk carried (where a stream was continued on another replica, its tier
    counted each token the client was sent once), or ``null`` where the runner gave none."""

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def __call__(self, request_id: str, model: str, created: int, chunk: Chunk) -> bytes:
        """One chunk's event, as :func:`completion_event` writes it but for its usage."""
        if chunk.usage is not None:
            self.usage = chunk.usage
        reason = finish_reason_name(chunk.finish_reason)
        choice = {"index": 0, "text": chunk.text, "logprobs": None, "finish_reason": reason,
                  "token_ids": list(chunk.token_ids)}  # fmt: skip
        return sse_event({"id": request_id, "object": "text_completion", "created": created,
                          "model": model, "choices": [choice], "usage": None})  # fmt: skip

    def last(self, request_id: str, model: str, created: int) -> bytes:
        """The usage event, after the last choice's and before ``data: [DONE]``."""
        usage = None if self.usage is None else usage_body(self.usage)
        return sse_event({"id": request_id, "object": "text_completion", "created": created,
                          "model": model, "choices": [], "usage": usage})  # fmt: skip


def completion_request(model: str, request: Request) -> dict[str, Any]:
    """A client's body asking ``model`` to stream the completion of ``request``."""
    prompt = request.prompt
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt if isinstance(prompt, str) else list(prompt),
    }
    return body | sampling_body(request.params)
