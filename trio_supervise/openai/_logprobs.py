"""Log probabilities as each endpoint writes them.

A completion's choice has ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``
(lists, one entry per token; ``top_logprobs`` maps a token's text to its log probability); a
chat's has ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``. Both are
``null`` where the request asked for none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._types import TokenLogprob

__all__ = ["chat_logprobs", "completion_logprobs"]


def completion_logprobs(logprobs: Sequence[TokenLogprob] | None, offset: int) -> Any:
    """A completion choice's ``logprobs``: its tokens beginning at character ``offset``."""
    if logprobs is None:
        return None
    offsets = []
    for one in logprobs:
        offsets.append(offset)
        offset += len(one.token)
    return {
        "tokens": [one.token for one in logprobs],
        "token_logprobs": [one.logprob for one in logprobs],
        "top_logprobs": [dict(one.top) for one in logprobs],
        "text_offset": offsets,
    }


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", "replace"))}


def chat_logprobs(logprobs: Sequence[TokenLogprob] | None) -> Any:
    """A chat choice's ``logprobs``."""
    if logprobs is None:
        return None
    return {
        "content": [
            _entry(one.token, one.logprob) | {"top_logprobs": [_entry(t, lp) for t, lp in one.top]}
            for one in logprobs
        ]
    }
