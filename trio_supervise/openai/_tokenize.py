"""vLLM's ``POST /tokenize`` and ``POST /detokenize``, server side: bodies read and checked.

``/tokenize`` takes ``{"model", "prompt"}`` or ``{"model", "messages", "add_generation_prompt"}``
(the chat rendered by the model's template first) and answers ``{"count", "max_model_len",
"tokens"}``; ``/detokenize`` takes ``{"model", "tokens"}`` and answers ``{"prompt"}``.
"""

from __future__ import annotations

from typing import Any, final

import attrs

from .._errors import BadRequest, shown
from .._types import ChatMessage
from ._chat import read_messages
from ._fields import field_bool
from ._json import decode_object

__all__ = ["DETOKENIZE_PATH", "TOKENIZE_PATH", "Detokenize", "Tokenize", "parse_detokenize",
           "parse_tokenize"]  # fmt: skip

TOKENIZE_PATH = "/tokenize"
DETOKENIZE_PATH = "/detokenize"

MAX_TOKENS_IN = 1 << 20
"""Token ids one ``/detokenize`` body may hold."""


@final
@attrs.frozen
class Tokenize:
    """A ``/tokenize`` body, read: text, or messages to render first."""

    model: str | None
    prompt: str | None
    messages: tuple[ChatMessage, ...]
    add_generation_prompt: bool


@final
@attrs.frozen
class Detokenize:
    """A ``/detokenize`` body, read."""

    model: str | None
    tokens: tuple[int, ...]


def _model(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"model must be a string, got {shown(model)}")
    return model


def parse_tokenize(body: bytes) -> Tokenize:
    """A ``/tokenize`` body, checked."""
    data = decode_object(body)
    model = _model(data)
    if field_bool(data, "add_special_tokens", False):
        raise BadRequest("add_special_tokens is not supported by this server, got true")
    if "messages" in data:
        messages = read_messages(data["messages"])
        return Tokenize(model, None, messages, field_bool(data, "add_generation_prompt", True))
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest(f"prompt must be a string (or give messages), got {shown(prompt)}")
    return Tokenize(model, prompt, (), False)


def parse_detokenize(body: bytes) -> Detokenize:
    """A ``/detokenize`` body, checked."""
    data = decode_object(body)
    model = _model(data)
    tokens = data.get("tokens")
    if not (
        isinstance(tokens, list)
        and len(tokens) <= MAX_TOKENS_IN
        and all(type(t) is int and 0 <= t < 2**63 for t in tokens)
    ):
        raise BadRequest(
            f"tokens must be a list of at most {MAX_TOKENS_IN} token ids (integers in "
            f"[0, 2**63 - 1]), got {shown(tokens)}"
        )
    return Detokenize(model, tuple(tokens))
