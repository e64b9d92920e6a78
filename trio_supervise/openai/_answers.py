"""What the generating endpoints share: a body read into a :class:`Generation` (its prompts or
messages, its choices' requests), and an endpoint's writers of its answers (:class:`Answers`):
a whole body, the events of a stream, the usage event.

An answer has one choice per prompt and per ``n``: choice ``prompt * n + i`` is a request of its
own (its id the answer's with ``-{index}``, where there are several), sampled with the seed
:func:`~._fields.choice_seed` derives for ``i``. Usage sums the choices' completion tokens and
counts each prompt once (OpenAI's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, final

import attrs

from .._types import ChatMessage, Request, TokenLogprob, Usage
from ._choices import usage_body
from ._fields import Shared
from ._output import Piece
from ._sse import sse_event

__all__ = ["Answers", "Generation", "Prompt", "total_usage"]

Prompt = str | tuple[int, ...]


@final
@attrs.frozen
class Generation:
    """A generating request's body, read and checked (but for what needs its model: the length
    of its prompts, the sampling fields its runner honours)."""

    endpoint: str
    """``"completions"`` or ``"chat"``."""
    prompts: tuple[Prompt, ...]
    """A completion's prompts (a chat's is its messages' rendering, by the model's template)."""
    messages: tuple[ChatMessage, ...]
    """A chat's messages."""
    shared: Shared
    """The fields every endpoint shares."""
    logprobs: int | None = None
    """Alternatives per token, where log probabilities are asked for."""
    echo: bool = False
    """A completion's prompt comes before its text."""
    add_generation_prompt: bool = True
    """A chat's rendering ends with the start of the assistant's message."""
    continue_final: bool = False
    """A chat's answer continues its last (assistant) message."""

    @property
    def stream(self) -> bool:
        return self.shared.stream

    def requests(
        self,
        answer_id: str,
        prompts: Sequence[Prompt],
        max_tokens: Sequence[int],
        *,
        max_tokens_asked: bool = True,
    ) -> list[Request]:
        """Each choice's request, by index: prompt ``p`` (with at most ``max_tokens[p]``
        tokens), choice ``i`` of ``n`` (see ``Request.max_tokens_asked``)."""
        shared, n = self.shared, self.shared.n
        several = len(prompts) * n > 1
        requests = []
        for p, prompt in enumerate(prompts):
            for i in range(n):
                params = shared.params(max_tokens[p], i)
                if self.logprobs is not None:
                    params = attrs.evolve(params, logprobs=self.logprobs)
                index = p * n + i
                requests.append(
                    Request(
                        f"{answer_id}-{index}" if several else answer_id,
                        prompt,
                        params,
                        continuation=shared.continuation,
                        messages=self.messages,
                        continue_final=self.continue_final,
                        max_tokens_asked=max_tokens_asked,
                    )
                )
        return requests


def total_usage(usages: Sequence[Usage | None], prompts: int) -> Usage | None:
    """An answer's usage from its choices' (in index order, ``n`` per prompt): each prompt's
    tokens counted once, every choice's completion tokens; None where a choice has none."""
    if not usages or any(u is None for u in usages):
        return None
    n = len(usages) // prompts
    known = [u for u in usages if u is not None]
    return Usage(
        sum(known[p * n].prompt_tokens for p in range(prompts)),
        sum(u.completion_tokens for u in known),
    )


WholeChoice = Callable[[int, str, Sequence[TokenLogprob] | None, int, str | None], dict[str, Any]]
"""``(index, text, logprobs, offset of the text, finish_reason)`` -> a whole answer's choice."""
EventChoice = Callable[[int, Piece, str | None], dict[str, Any]]
"""``(index, piece, finish_reason)`` -> a streamed choice."""
Opening = Callable[[int, str], dict[str, Any] | None]
"""``(index, echoed prompt)`` -> the choice of a stream's first event for it, or None."""


@final
@attrs.frozen
class Answers:
    """An endpoint's writers of its answers."""

    object_whole: str
    """A whole answer's ``object``."""
    object_event: str
    """A stream event's ``object``."""
    prefix: str
    """Of its ids."""
    whole_choice: WholeChoice
    event_choice: EventChoice
    opening: Opening

    def whole(
        self, answer_id: str, model: str, created: int, choices: list[dict[str, Any]],
        usage: Usage | None,
    ) -> dict[str, Any]:  # fmt: skip
        """A whole answer of ``choices`` (``created``: its Unix time, in seconds)."""
        body: dict[str, Any] = {"id": answer_id, "object": self.object_whole,
                                "created": created, "model": model, "choices": choices}  # fmt: skip
        if usage is not None:
            body["usage"] = usage_body(usage)
        return body

    def event(
        self, answer_id: str, model: str, created: int, choice: dict[str, Any] | None,
        usage: Usage | None = None, *, usage_null: bool = False,
    ) -> bytes:  # fmt: skip
        """One event of a stream, of one ``choice`` (None: of none); ``usage`` where given,
        ``"usage": null`` with ``usage_null`` (a stream that ends with its usage event)."""
        choices = [] if choice is None else [choice]
        body: dict[str, Any] = {"id": answer_id, "object": self.object_event, "created": created,
                                "model": model, "choices": choices}  # fmt: skip
        if usage is not None:
            body["usage"] = usage_body(usage)
        elif usage_null:
            body["usage"] = None
        return sse_event(body)

    def piece_choice(self, index: int, piece: Piece, reason: str | None) -> dict[str, Any]:
        """A streamed choice of ``piece``, with its ``token_ids`` (an extension a front reads)."""
        choice = self.event_choice(index, piece, reason)
        choice["token_ids"] = list(piece.token_ids)
        return choice
