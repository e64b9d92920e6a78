"""The generating endpoints, ``POST /v1/completions`` and ``POST /v1/chat/completions``.

A body is read by the codec (:mod:`trio_supervise.openai`) into a ``Generation``, then planned
against its model (:func:`plan`): a chat's messages rendered by the model's chat template (its
tokenizer's, else the codec's default), each prompt counted by the model's tokenizer where it has
one, and ``max_tokens`` checked against ``max_model_len`` (prompt plus completion; a chat that
gives none gets what is left of it, as vLLM does). Each choice (``n`` per prompt) is a request of
its own on the pool; the answer is written whole, or as server-sent events as the chunks come,
the choices' events interleaved. Each choice's text goes through a ``ChoiceOutput`` (the stop
sequence cut, unless ``include_stop_str_in_output``).

One choice failing fails the answer: the other choices are cancelled, and the error is the
answer (a 4xx/5xx before the first event, an error event after it). A client that leaves cancels
every choice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from .._errors import BadRequest, InferenceError, WorkerStopped, shown
from .._types import Chunk, TokenLogprob, Usage
from ..openai import (
    SSE_DONE,
    Answers,
    ChoiceOutput,
    Generation,
    Prompt,
    error_body,
    error_status,
    finish_reason_name,
    render_chat,
    sse_event,
    total_usage,
)
from ..tier._runner import Tokenizer
from ._asgi import Receive, Scope, Send, send_event, send_events_start, send_json, until_disconnect
from ._exchange import EXCHANGE, Exchange
from .pool import PoolStream, WorkerPool


class App(Protocol):
    """What an endpoint needs of the app (``serve/app.py``)."""

    pool: WorkerPool

    async def json_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The body of a JSON request, or None once answered."""

    async def error(self, send: Send, error: BaseException) -> None:
        """Answer with ``error``'s status and body."""


__all__ = ["generate", "plan"]

logger = logging.getLogger("trio_supervise")

COMPLETION_MAX_TOKENS = 16
"""A completion's ``max_tokens`` when it gives none (OpenAI's)."""

BIG_PROMPT = 64 * 1024
"""Characters past which a prompt is tokenized in a thread, off the event loop."""


@attrs.frozen
class Plan:
    """A body planned against its model: its prompts, each one's ``max_tokens``, and what each
    choice echoes before its text."""

    prompts: list[Prompt]
    max_tokens: list[int]
    echoes: list[str]
    max_tokens_asked: bool
    """False: a chat's default, the model's length less the prompt's."""


async def plan(pool: WorkerPool, asked: Generation, model: str) -> Plan:
    """The prompts of ``asked`` on ``model``, counted and checked (see the module docstring).

    Raises:
        BadRequest: token ids for a model with no tokenizer, or outside its vocabulary;
            ``max_tokens`` (with the prompt) past ``max_model_len``.
    """
    tokenizer = pool.tokenizers.get(model)
    limit = pool.max_model_len[model]
    prompts: list[Prompt] = list(asked.prompts)
    if asked.endpoint == "chat":
        prompts = [render_chat(asked.messages, tokenizer,
                               add_generation_prompt=asked.add_generation_prompt,
                               continue_final=asked.continue_final)]  # fmt: skip
    lengths: list[int] = []
    for prompt in prompts:
        if isinstance(prompt, tuple):
            _check_ids(prompt, tokenizer, model)
            lengths.append(len(prompt))
        elif tokenizer is None:
            lengths.append(0)  # not known here: its runner checks it
        elif len(prompt) > BIG_PROMPT:
            lengths.append(len(await trio.to_thread.run_sync(tokenizer.encode, prompt)))
        else:
            lengths.append(len(tokenizer.encode(prompt)))
    given = asked.shared.max_tokens
    budget = []
    for length in lengths:
        wanted = given
        if wanted is None:
            wanted = COMPLETION_MAX_TOKENS if asked.endpoint == "completions" else limit - length
        if length >= limit:
            raise BadRequest(
                f"the prompt has {length} tokens, and the max_model_len of model {model!r} is "
                f"{limit}: no room for a completion"
            )
        if length + wanted > limit:
            counted = f" and the prompt has {length} tokens" if length else ""
            raise BadRequest(
                f"max_tokens must be at most {limit - length} (the max_model_len of model "
                f"{model!r} is {limit}{counted}), got {wanted}"
            )
        budget.append(wanted)
    echoes = [""] * len(prompts)
    if asked.echo:
        echoes = [p if isinstance(p, str) else _decode(tokenizer, p) for p in prompts]
    echoes = [e for e in echoes for _ in range(asked.shared.n)]
    return Plan(prompts, budget, echoes, given is not None or asked.endpoint == "completions")


def _decode(tokenizer: Tokenizer | None, prompt: tuple[int, ...]) -> str:
    assert tokenizer is not None  # token ids were refused without one
    return tokenizer.decode(prompt)


def _check_ids(prompt: tuple[int, ...], tokenizer: Any, model: str) -> None:
    if tokenizer is None:
        raise BadRequest(
            f"model {model!r} has no tokenizer on this server: its prompts must be text, "
            "got token ids"
        )
    size = tokenizer.vocab_size
    bad = [t for t in prompt if t >= size]
    if bad:
        raise BadRequest(
            f"prompt token ids must be in [0, {size}) for model {model!r}, got {shown(bad[:5])}"
        )


@attrs.frozen
class _Answer:
    """A body admitted to the pool, to answer."""

    id: str
    streams: list[PoolStream]
    model: str
    created: int
    """Unix seconds, for the body's ``created``."""
    exchange: Exchange
    """The request's record, for the observers."""
    asked: Generation
    answers: Answers
    echoes: list[str]
    prompts: int

    def outputs(self) -> list[ChoiceOutput]:
        shared = self.asked.shared
        stop, keep = shared.sampling["stop"], shared.include_stop
        return [ChoiceOutput(stop, keep_stop=keep, offset=len(e)) for e in self.echoes]


async def generate(
    app: App, scope: Scope, receive: Receive, send: Send,
    parse: Callable[[bytes], Generation], answers: Answers,
) -> None:  # fmt: skip
    """Answer one generating request (see the module docstring)."""
    exchange: Exchange = scope[EXCHANGE]
    exchange.generating = True
    body = await app.json_body(scope, receive, send)
    if body is None:
        return
    pool = app.pool
    streams: list[PoolStream] = []
    try:
        asked = parse(body)
        model = exchange.model = pool.model_for(asked.shared.model)
        if pool.draining:
            raise WorkerStopped("the server is draining", retry_after=1.0)
        planned = await plan(pool, asked, model)
        answer_id = f"{answers.prefix}-{uuid.uuid4().hex[:24]}"
        requests = asked.requests(answer_id, planned.prompts, planned.max_tokens,
                                  max_tokens_asked=planned.max_tokens_asked)  # fmt: skip
        for request in requests:
            streams.append(pool.generate(request, model))
    except InferenceError as exc:
        for stream in streams:
            await stream.aclose()
        exchange.error = exc
        await app.error(send, exc)
        return
    exchange.streams = streams
    answer = _Answer(answer_id, streams, model, int(time.time()), exchange, asked,
                     answers, planned.echoes, len(planned.prompts))  # fmt: skip
    if asked.stream:
        await _stream(app, receive, send, answer)
    else:
        await _whole(app, receive, send, answer)


async def _each(
    streams: Sequence[PoolStream], read: Callable[[int, PoolStream], Awaitable[None]]
) -> None:
    """``read(index, stream)`` for every stream, at once where there are several; the first
    error cancels the others and is raised (as itself, not in a group). ``read`` closes its
    stream; where something fails or is cancelled, every stream is closed here too."""
    try:
        if len(streams) == 1:
            await read(0, streams[0])
            return
        failed: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def one(index: int, stream: PoolStream) -> None:
                try:
                    await read(index, stream)
                except Exception as exc:
                    failed.append(exc)
                    nursery.cancel_scope.cancel()

            for index, stream in enumerate(streams):
                nursery.start_soon(one, index, stream)
        if failed:
            raise failed[0]
    except BaseException:
        with trio.CancelScope(shield=True):
            for stream in streams:
                await stream.aclose()
        raise


async def _whole(app: App, receive: Receive, send: Send, answer: _Answer) -> None:
    """Answer with the whole answer once every choice has ended."""
    outputs = answer.outputs()
    texts: list[list[str]] = [[] for _ in outputs]
    logprobs: list[list[TokenLogprob] | None] = [None for _ in outputs]
    reasons: list[str | None] = [None for _ in outputs]
    usages: list[Usage | None] = [None for _ in outputs]
    exchange = answer.exchange

    async def read(index: int, stream: PoolStream) -> None:
        stream.wake_at_the_end_only()
        output = outputs[index]
        async with stream:
            async for chunk in stream:
                exchange.completion_tokens += len(chunk.token_ids)
                piece = output.feed(chunk)
                texts[index].append(piece.text)
                if piece.logprobs is not None:
                    logprobs[index] = (logprobs[index] or []) + list(piece.logprobs)
                if piece.finish_reason is not None:
                    reasons[index] = finish_reason_name(piece.finish_reason)
                    usages[index] = piece.usage

    failed: BaseException | None = None
    model = answer.model
    async with until_disconnect(receive) as work:
        with work:
            try:
                await _each(answer.streams, read)
            except Exception as exc:
                if not isinstance(exc, InferenceError):
                    logger.exception("a completion failed")
                failed = exc
        if work.cancelled_caught:
            exchange.left = True
            return  # the client left: every choice's stream was closed, cancelling it
        # The answer is written outside the work's scope: a disconnect cannot cut it.
        if failed is not None:
            exchange.error = failed
            await app.error(send, failed)
            return
        echoes = answer.echoes
        choices = [
            answer.answers.whole_choice(
                i, echoes[i] + "".join(texts[i]), logprobs[i], len(echoes[i]), reasons[i]
            )
            for i in range(len(outputs))
        ]
        usage = total_usage(usages, answer.prompts)
        exchange.finished(usage, reasons)
        await send_json(send, 200, answer.answers.whole(answer.id, model, answer.created, choices,
                                                        usage))  # fmt: skip


async def _stream(app: App, receive: Receive, send: Send, answer: _Answer) -> None:
    """Answer with server-sent events as the chunks come, each choice opened by the endpoint's
    first event for it; with ``include_usage``, a last event of the usage."""
    answers, model, answer_id, created = answer.answers, answer.model, answer.id, answer.created
    outputs = answer.outputs()
    opened = [False] * len(outputs)
    usages: list[Usage | None] = [None] * len(outputs)
    with_usage = answer.asked.shared.include_usage
    began = False
    lock = trio.Lock() if len(answer.streams) > 1 else None
    reasons: list[str | None] = [None] * len(outputs)
    exchange = answer.exchange
    gaps = exchange.chunk_gaps
    last = 0.0

    async def emit(index: int, chunk: Chunk) -> None:
        if lock is None:
            await emit_now(index, chunk)
        else:
            async with lock:  # choices' tasks take turns: one send at a time
                await emit_now(index, chunk)

    async def emit_now(index: int, chunk: Chunk) -> None:
        nonlocal began, last
        exchange.completion_tokens += len(chunk.token_ids)
        now = trio.current_time()
        if began:
            gaps.append(now - last)
        last = now
        if not began:
            began = True
            await send_events_start(send)
        if not opened[index]:
            opened[index] = True
            first = answers.opening(index, answer.echoes[index])
            if first is not None:
                data = answers.event(answer_id, model, created, first, usage_null=with_usage)
                await send_event(send, data)
        piece = outputs[index].feed(chunk)
        reason = finish_reason_name(piece.finish_reason)
        if reason is not None:
            usages[index] = piece.usage
            reasons[index] = reason
        if piece.text or piece.token_ids or reason is not None:
            choice = answers.piece_choice(index, piece, reason)
            usage = None if with_usage else piece.usage
            data = answers.event(answer_id, model, created, choice, usage, usage_null=with_usage)
            await send_event(send, data)

    async def read(index: int, stream: PoolStream) -> None:
        async with stream:
            async for chunk in stream:
                await emit(index, chunk)

    failed: BaseException | None = None
    async with until_disconnect(receive) as work:
        with work:
            try:
                await _each(answer.streams, read)
            except Exception as exc:
                if not isinstance(exc, InferenceError):
                    logger.exception("a streamed completion failed")
                failed = exc
        usage = total_usage(usages, answer.prompts)
        if work.cancelled_caught:
            exchange.left = True
            exchange.finished(usage, reasons)  # what it was sent before it left
            return  # the client left: its choices were cancelled as their streams closed
        # The end is written outside the work's scope: a disconnect cannot cut it.
        exchange.error = failed
        exchange.finished(usage, reasons)
        if failed is not None and not began:
            await app.error(send, failed)
            return
        if not began:
            await send_events_start(send)
        if failed is not None:
            await send_event(send, sse_event(error_body(failed, error_status(failed)[0])))
        elif with_usage:
            await send_event(send, answers.event(answer_id, model, created, None, usage,
                                                 usage_null=True))  # fmt: skip
        await send({"type": "http.response.body", "body": SSE_DONE})
