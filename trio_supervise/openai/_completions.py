"""``/v1/completions``, both ways: a request body read into a :class:`Generation`
(:func:`parse_completion`) and written by a client (:func:`completion_request`); a response as a
whole body or as the events of a stream (:data:`COMPLETION`).

A prompt is a string, a list of token ids, or a list of either (each prompt its own choices,
``n`` of them, indexed ``prompt * n + choice`` as OpenAI does). A choice is ``{"index", "text",
"logprobs", "finish_reason"}``; a streamed one adds the chunk's ``token_ids`` (a trio-supervise
extension that a front reads back). ``echo`` puts the prompt before the text (a stream's first
event of each choice); ``logprobs`` (0 to 20 alternatives) needs a runner that gives them.
"""

from __future__ import annotations

from typing import Any

from .._errors import BadRequest, shown
from .._types import Request
from ._answers import Answers, Generation
from ._fields import MAX_CHOICES, field_bool, logprobs_count, refuse_unhonoured, sampling_body
from ._fields import shared_fields as read_shared
from ._json import decode_object
from ._logprobs import completion_logprobs

__all__ = ["COMPLETION", "COMPLETIONS_PATH", "completion_request", "parse_completion"]

COMPLETIONS_PATH = "/v1/completions"

Prompt = str | tuple[int, ...]


def _prompts(prompt: Any) -> tuple[Prompt, ...]:
    """A completion's ``prompt``: one string, one list of token ids, or a list of either."""
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, list) and prompt:
        if all(_is_token(t) for t in prompt):
            return (tuple(prompt),)
        if all(isinstance(p, str) for p in prompt):
            return tuple(prompt)
        if all(isinstance(p, list) and p and all(_is_token(t) for t in p) for p in prompt):
            return tuple(tuple(p) for p in prompt)
    raise BadRequest(
        "prompt must be a string, a non-empty list of token ids (integers in [0, 2**63 - 1]), "
        f"or a non-empty list of either, got {shown(prompt)}"
    )


def _is_token(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**63


def parse_completion(body: bytes) -> Generation:
    """A completion request's body, read and checked; a BadRequest names the field and says
    what was expected and what was got."""
    data = decode_object(body)
    prompts = _prompts(data.get("prompt"))
    shared = read_shared(data)
    if len(prompts) * shared.n > MAX_CHOICES:
        raise BadRequest(
            f"a request may ask for at most {MAX_CHOICES} choices (n times the prompts), got "
            f"n={shared.n} for {len(prompts)} prompts"
        )
    echo = field_bool(data, "echo", False)
    logprobs = logprobs_count(data.get("logprobs"), "logprobs")
    if echo and logprobs is not None:
        raise BadRequest(
            "echo with logprobs is not supported by this server (it gives no log "
            "probabilities of the prompt): set one of them, got both"
        )
    refuse_unhonoured(data)
    return Generation("completions", prompts, (), shared, logprobs, echo)


def _choice(index: int, text: str, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


COMPLETION = Answers(
    object_whole="text_completion",
    object_event="text_completion",
    prefix="cmpl",
    whole_choice=lambda index, text, logprobs, offset, reason: _choice(
        index, text, completion_logprobs(logprobs, offset), reason
    ),
    event_choice=lambda index, piece, reason: _choice(
        index, piece.text, completion_logprobs(piece.logprobs, piece.logprobs_offset), reason
    ),
    opening=lambda index, echoed: None if not echoed else _choice(index, echoed, None, None),
)
"""The writers of a completion's answers."""


def completion_request(model: str, request: Request) -> dict[str, Any]:
    """A client's body asking ``model`` to stream the completion of ``request``."""
    prompt = request.prompt
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt if isinstance(prompt, str) else list(prompt),
    }
    return body | sampling_body(request.params)
