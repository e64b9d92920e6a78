"""Requests and their outcomes, shared by the worker's tests."""

from __future__ import annotations

from typing import Any

import trio_supervise as ts
from trio_supervise import FinishReason, Request, SamplingParams
from trio_supervise.runners.mock import MockRecord, text_of, token_at


def req(rid: str, max_tokens: int = 4, **kwargs: Any) -> Request:
    return Request(rid, f"prompt {rid}", SamplingParams(max_tokens=max_tokens, seed=7), **kwargs)


def expected_text(request: Request) -> str:
    return "".join(text_of(token_at(request, i, 50_000)) for i in range(request.params.max_tokens))


async def outcome(stream: ts.RequestStream) -> tuple[str, object]:
    """("ok", text) or ("error", the exception)."""
    try:
        _, text, reason, _ = await stream.collect()
    except ts.InferenceError as exc:
        return "error", exc
    return "ok", text if reason is FinishReason.LENGTH else reason


def worker_args(record: MockRecord, **runner: Any) -> dict[str, Any]:
    return {"runner_args": {"record": record, "delay": 1.0, **runner}, "device": "cpu"}
