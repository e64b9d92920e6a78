"""``/v1/chat/completions``, as a client writes it: the prompt as one user message
(:func:`chat_request`). A chat's streamed choices (``delta.content``) are read by
:func:`~._sse.decode_event`, as a completion's are.
"""

from __future__ import annotations

from typing import Any

from .._errors import BadRequest
from .._types import Request
from ._fields import sampling_body

__all__ = ["CHAT_PATH", "chat_request"]

CHAT_PATH = "/v1/chat/completions"


def chat_request(model: str, request: Request) -> dict[str, Any]:
    """A client's body asking ``model`` to stream a chat answer to ``request``'s prompt.

    Raises:
        BadRequest: the prompt is token ids (a chat takes text).
    """
    if not isinstance(request.prompt, str):
        raise BadRequest("the chat endpoint takes a text prompt, not token ids")
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": request.prompt}],
    }
    return body | sampling_body(request.params)
