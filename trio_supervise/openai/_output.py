"""One choice's output as a client gets it: the stop sequence cut, with the log probabilities
that go with the text sent.

A runner ends a request with the token whose text completes a stop sequence, and its text
includes it, with whatever that token wrote after it (a runner's chunks are what the worker
delivers and a continued stream checks). OpenAI and vLLM send the text up to it (vLLM's
``include_stop_str_in_output`` keeps the stop sequence itself), so the server puts each choice's
chunks through a :class:`ChoiceOutput`: text that could be the start of a stop sequence is held
back until the next chunk says whether it is, and a choice that ended on a stop sequence is cut
at its first one. A token's log probability is sent with its text: held back with it, and cut
with it (a token whose text begins before the cut is kept).
"""

from __future__ import annotations

from typing import final

import attrs

from .._types import Chunk, FinishReason, TokenLogprob, Usage

__all__ = ["ChoiceOutput", "Piece"]


@final
@attrs.frozen
class Piece:
    """What to send of one choice now."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    """One per token whose text is in ``text`` (None where the request asked for none)."""
    offset: int
    """Where ``text`` begins in the choice's whole text (echoed prompt included)."""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs_offset: int = 0
    """Where the first token of ``logprobs`` begins (before ``offset`` where its text began
    in an earlier piece)."""


@final
class ChoiceOutput:
    """One choice's chunks in, what its client gets out (see the module docstring).

    Args:
        stop: the request's stop sequences.
        keep_stop: send the stop sequence that ended the choice, not what follows it
            (``include_stop_str_in_output``).
        offset: characters before the first (an echoed prompt's).
    """

    def __init__(self, stop: tuple[str, ...], *, keep_stop: bool = False, offset: int = 0) -> None:
        self.stop = stop
        self.keep_stop = keep_stop
        self._longest = max((len(s) for s in self.stop), default=0)
        self.held = ""
        """Text that may be the start of a stop sequence, not sent yet."""
        self._held_logprobs: list[TokenLogprob] = []
        self._logprobs_at = offset  # where the first held log probability's token begins
        self.offset = offset
        """Characters sent so far (with the echoed prompt)."""

    def feed(self, chunk: Chunk) -> Piece:
        """What of ``chunk`` (and what was held back) to send now."""
        text = self.held + chunk.text if self.held else chunk.text
        final = chunk.finish_reason is not None
        if final:
            keep = len(text)
            if chunk.finish_reason is FinishReason.STOP:
                found = [(i, len(s)) for i, s in ((text.find(s), s) for s in self.stop) if i >= 0]
                if found:  # none: the end of text, or a backend that cut it already
                    at, size = min(found)
                    keep = at + size if self.keep_stop else at
        else:
            keep = len(text) - self._hold(text)
        sent, self.held = text[:keep], text[keep:]
        offset = self.offset
        self.offset += len(sent)
        logprobs = chunk.logprobs
        logprobs_at = offset
        if logprobs is not None or self._held_logprobs:
            if not self._held_logprobs:  # the chunk's first token begins after the held text
                self._logprobs_at = offset + len(text) - len(chunk.text)
            logprobs_at = self._logprobs_at
            logprobs = self._split((*self._held_logprobs, *(logprobs or ())), self.offset, final)
        return Piece(sent, chunk.token_ids, logprobs, offset, chunk.finish_reason, chunk.usage,
                     logprobs_at)  # fmt: skip

    def _split(
        self, logprobs: tuple[TokenLogprob, ...], sent_to: int, final: bool
    ) -> tuple[TokenLogprob, ...]:
        """The log probabilities to send, of the tokens (the first one beginning at
        ``_logprobs_at``) whose text has been sent up to ``sent_to``, or at the end of those
        that begin before it; the rest are held (and dropped at the end)."""
        at = self._logprobs_at
        for i, one in enumerate(logprobs):
            end = at + len(one.token)
            if (at >= sent_to) if final else (end > sent_to):
                self._held_logprobs = [] if final else list(logprobs[i:])
                self._logprobs_at = at
                return logprobs[:i]
            at = end
        self._held_logprobs = []
        self._logprobs_at = at
        return logprobs

    def _hold(self, text: str) -> int:
        """How many characters at the end of ``text`` could begin a stop sequence."""
        for size in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self.stop):
                return size
        return 0
