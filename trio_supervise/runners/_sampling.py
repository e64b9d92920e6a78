"""Host-side sampling for :mod:`~trio_supervise.runners.charlm`: a row of logits to a token.

Per request, in this order (vLLM's and OpenAI's definitions):

1. :class:`LogitsProcessor` (only where the request sets one of its fields): ``logit_bias`` is
   added to the raw logits; ``repetition_penalty`` divides the positive logit (multiplies the
   negative one) of every token seen in the prompt or the output so far; ``presence_penalty``
   and ``frequency_penalty`` subtract ``presence * (count > 0) + frequency * count``, counting
   the output tokens only.
2. :func:`sample_next`: argmax at temperature 0 (no random number taken); otherwise the
   temperature-scaled softmax cut to the ``top_k`` most likely tokens, then to the nucleus of
   ``top_p`` of their mass, then to the tokens at least ``min_p`` times as likely as the most
   likely one, and one draw (exactly one number from the request's generator).

:func:`token_logprob` gives a token's log probability and the most likely alternatives from
the RAW distribution (the log-softmax of the model's logits, before any of the above: vLLM's
default ``raw_logprobs``). :class:`RequestState` is one request's decoding state, whose
:meth:`~RequestState.advance` does all of that for one row and makes the chunk. Everything is a
function of the request's own history and generator, never of its batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import final

import attrs
import numpy
import numpy.typing as npt

from .._errors import BadRequest
from .._types import Chunk, Request, SamplingParams, TokenLogprob, Usage
from ._stepping import ending

__all__ = [
    "LogitsProcessor",
    "RequestState",
    "check_logit_bias",
    "log_softmax",
    "pick_token",
    "request_generator",
    "sample_next",
    "token_logprob",
]

Logits = npt.NDArray[numpy.float64]

_HUGE = 1e300
"""A logit divided by a tiny repetition penalty is capped here (finite, so no inf - inf)."""


def sample_next(
    logits: Logits,
    temperature: float,
    top_p: float,
    rng: numpy.random.Generator,
    top_k: int = 0,
    min_p: float = 0.0,
) -> int:
    """A token from one row of (processed) logits: argmax at temperature 0, else a draw from the
    temperature-scaled softmax restricted to the ``top_k`` most likely tokens (0: all), then to
    the smallest set of the most likely of those whose mass reaches ``top_p`` of theirs
    (nucleus sampling), then to the tokens at least ``min_p`` times as likely as the most likely
    one. A draw takes exactly one number from ``rng``; greedy takes none."""
    if temperature == 0:
        return int(numpy.argmax(logits))
    with numpy.errstate(over="ignore"):  # a tiny temperature: -inf, whose exp is 0, as meant
        scaled = (logits - logits.max()) / temperature
    probs = numpy.exp(scaled)
    probs /= probs.sum()
    order = numpy.argsort(-probs, kind="stable")
    cumulative = numpy.cumsum(probs[order])
    keep = len(order)
    if 0 < top_k < keep:
        keep = top_k
    if top_p < 1.0:
        target = top_p if keep == len(order) else top_p * cumulative[keep - 1]
        keep = min(keep, int(numpy.searchsorted(cumulative, target)) + 1)
    if min_p > 0.0:  # a prefix of the order: invariant to the renormalisations above
        likely = probs[order[:keep]] >= min_p * probs[order[0]]
        keep = max(1, int(numpy.count_nonzero(likely)))
    u = rng.random() * cumulative[keep - 1]
    chosen = min(int(numpy.searchsorted(cumulative[:keep], u, side="right")), keep - 1)
    return int(order[chosen])


def check_logit_bias(params: SamplingParams, vocab_size: int, model: str) -> None:
    """Raises ``BadRequest`` where a ``logit_bias`` token id is not in ``range(vocab_size)``."""
    bad = [token for token, _ in params.logit_bias if not 0 <= token < vocab_size]
    if bad:
        raise BadRequest(
            f"logit_bias token ids must be in [0, {vocab_size}) for {model}'s vocabulary, "
            f"got {bad[:5]}{' ...' if len(bad) > 5 else ''}"
        )


@final
@attrs.define(eq=False)
class LogitsProcessor:
    """One request's logit bias and penalties, with the token history they need (see the
    module docstring). Build it with :meth:`for_request`, which gives None where the request
    sets none of them (the fast path: its logits go to :func:`sample_next` untouched)."""

    bias: Logits | None
    """Added to the logits (``logit_bias`` as a dense row), or None."""
    repetition: float
    """``repetition_penalty`` (1: none)."""
    presence: float
    """``presence_penalty``."""
    frequency: float
    """``frequency_penalty``."""
    seen: npt.NDArray[numpy.bool_] | None
    """Tokens of the prompt or the output so far (with a repetition penalty), or None."""
    counts: Logits | None
    """How many times each token was generated (with a presence or frequency penalty)."""

    @classmethod
    def for_request(
        cls, params: SamplingParams, vocab_size: int, prompt_ids: Sequence[int]
    ) -> LogitsProcessor | None:
        """The processor of a request with these ``params`` and this prompt (valid token ids;
        check ``logit_bias`` first with :func:`check_logit_bias`), or None for none."""
        repetition, presence, frequency = (
            params.repetition_penalty, params.presence_penalty, params.frequency_penalty
        )  # fmt: skip
        if not params.logit_bias and repetition == 1.0 and presence == 0.0 and frequency == 0.0:
            return None
        bias = None
        if params.logit_bias:
            bias = numpy.zeros(vocab_size)
            pairs = dict(params.logit_bias)  # a token given twice: the last bias counts
            bias[list(pairs)] = list(pairs.values())
        seen = None
        if repetition != 1.0:
            seen = numpy.zeros(vocab_size, dtype=numpy.bool_)
            seen[list(prompt_ids)] = True
        counts = numpy.zeros(vocab_size) if presence != 0.0 or frequency != 0.0 else None
        return cls(bias, repetition, presence, frequency, seen, counts)

    def __call__(self, logits: Logits) -> Logits:
        """The processed logits (a new array; ``logits`` is left as it is)."""
        out = logits if self.bias is None else logits + self.bias
        seen = self.seen
        if seen is not None:
            penalty = self.repetition
            with numpy.errstate(over="ignore"):
                penalised = numpy.where(out > 0, numpy.minimum(out / penalty, _HUGE), out * penalty)
            out = numpy.where(seen, penalised, out)
        counts = self.counts
        if counts is not None:
            out = out - (self.presence * (counts > 0) + self.frequency * counts)
        return out

    def record(self, token: int) -> None:
        """Note that ``token`` was generated."""
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1


def log_softmax(logits: Logits) -> Logits:
    """``log(softmax(logits))``, computed stably (the maximum subtracted first)."""
    shifted = logits - logits.max()
    result: Logits = shifted - numpy.log(numpy.exp(shifted).sum())
    return result


def token_logprob(
    text_of: Callable[[int], str], logits: Logits, token: int, top: int
) -> TokenLogprob:
    """``token``'s log probability under the raw ``logits`` (one row of the model's), with the
    ``top`` most likely tokens, most likely first (ties: lower id first); ``text_of(id)`` is a
    token's text."""
    logprobs = log_softmax(logits)
    best = numpy.argsort(-logprobs, kind="stable")[:top] if top else ()
    pairs = tuple((text_of(int(i)), float(logprobs[i])) for i in best)
    return TokenLogprob(text_of(token), float(logprobs[token]), pairs)


def pick_token(
    params: SamplingParams,
    rng: numpy.random.Generator,
    processor: LogitsProcessor | None,
    logits: Logits,
    banned: Sequence[int] = (),
) -> int:
    """The next token of a request from its row of raw ``logits``: through its ``processor``
    (which records it), never one of ``banned`` (an end of text before ``min_tokens``), by
    :func:`sample_next`."""
    processed = logits if processor is None else processor(logits)
    if banned:
        processed = processed.copy() if processed is logits else processed
        processed[list(banned)] = -numpy.inf
    token = sample_next(
        processed, params.temperature, params.top_p, rng, params.top_k, params.min_p
    )
    if processor is not None:
        processor.record(token)
    return token


def request_generator(request: Request) -> numpy.random.Generator:
    """The request's own generator: from its seed, or (seed None) from its id, deterministic."""
    seed = request.params.seed
    if seed is None:
        digest = hashlib.sha256(request.id.encode()).digest()
        return numpy.random.default_rng([2, int.from_bytes(digest[:8], "little")])
    return numpy.random.default_rng([0 if seed >= 0 else 1, abs(seed)])


@final
@attrs.define(eq=False)
class RequestState:
    """One request being decoded, one token per character of ``vocab`` (:meth:`advance`)."""

    request: Request
    token_ids: list[int]
    """Its prompt's and its output's so far."""
    prompt_tokens: int
    rng: numpy.random.Generator
    processor: LogitsProcessor | None
    """Its logit bias and penalties; None where it sets none."""
    logprobs: int | None
    """``params.logprobs``."""
    text: str = ""
    completion_tokens: int = 0

    @classmethod
    def start(
        cls, request: Request, prompt_ids: list[int], vocab_size: int, model: str
    ) -> RequestState:
        """The state of a request whose prompt is ``prompt_ids`` (valid token ids).

        Raises:
            BadRequest: a ``logit_bias`` token id is not in the vocabulary of ``model``.
        """
        params = request.params
        check_logit_bias(params, vocab_size, model)
        processor = LogitsProcessor.for_request(params, vocab_size, prompt_ids)
        rng = request_generator(request)
        return cls(request, prompt_ids, len(prompt_ids), rng, processor, params.logprobs)

    def advance(self, vocab: str, logits: Logits) -> Chunk:
        """Sample the next token from the request's row of raw ``logits``; its chunk."""
        request = self.request
        params = request.params
        token = pick_token(params, self.rng, self.processor, logits)
        char = vocab[token]
        self.token_ids.append(token)
        self.text += char
        self.completion_tokens += 1
        reason = ending(self.text, self.completion_tokens, params)
        usage = None if reason is None else Usage(self.prompt_tokens, self.completion_tokens)
        top = self.logprobs
        if top is None:
            return Chunk(request.id, (token,), char, reason, usage)
        logprobs = (token_logprob(vocab.__getitem__, logits, token, top),)
        return Chunk(request.id, (token,), char, reason, usage, logprobs=logprobs)
