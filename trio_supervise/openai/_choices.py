"""What every endpoint's choices and usage carry, both ways: finish reasons and token counts.

OpenAI names two finish reasons a runner gives: ``"length"`` (``max_tokens`` reached) and
``"stop"`` (a stop sequence or the end of text); a reason a server sends that is neither is read
as ``"stop"``. Usage is ``prompt_tokens``, ``completion_tokens`` and their ``total_tokens``.
"""

from __future__ import annotations

from typing import Any

from .._types import FinishReason, Usage

__all__ = ["finish_reason_name", "finish_reason_of", "usage_body", "usage_of"]


def finish_reason_name(reason: FinishReason | None) -> str | None:
    """A choice's ``finish_reason``: ``None`` until its last chunk."""
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


def finish_reason_of(name: object) -> FinishReason:
    """The reason a server's ``finish_reason`` (not null) names."""
    return FinishReason.LENGTH if str(name) == "length" else FinishReason.STOP


def usage_body(usage: Usage) -> dict[str, int]:
    """The ``usage`` object of a response or of a stream's last event."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def usage_of(data: Any) -> Usage | None:
    """The usage a server sent, or ``None`` where there is none (or it is malformed)."""
    if not isinstance(data, dict):
        return None
    prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return Usage(prompt, completion)
    return None
