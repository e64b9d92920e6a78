"""Mid-stream continuation: a request whose tier died after it streamed goes on, exactly once.

A request's consumer has been handed some output when the tier running it fails. Instead of
ending it with ``ContextPoisoned``, the worker runs it again (on its restarted tier, or a pool
on another replica) and the consumer's stream goes on with no token lost and none duplicated:

* ``"replay"``: the same request again, from its prompt, with its seed. A deterministic runner
  (``deterministic = True``: the same request gives the same output whatever its batch)
  produces what was delivered first; that prefix is checked and dropped, the rest is new. A
  re-run that differs from the delivered prefix ends the request with
  :class:`ContinuationMismatch`, never with a spliced stream.
* ``"resume"``: the prompt plus the text (or, for a prompt of token ids, the tokens) already
  delivered, for the remaining ``max_tokens``. Any runner can; the sampling is not the same
  as one uninterrupted run (the random draws start again), and a stop sequence that straddles
  the point of resumption is not seen. ``usage`` still counts each token once.

A :class:`Continuation` lives in the request's ``RequestState`` while continuation is possible:
it records what was delivered (token ids and text, which the garbage collector does not
track: keeping the chunks alive would slow every collection) and, during
a replay, filters the re-run. It is plain data, so a pool hands it to another worker.
"""

from __future__ import annotations

from typing import Literal, final

import attrs

from .._errors import BadRequest, ContinuationMismatch
from .._types import ChatMessage, Chunk, Request, Usage

__all__ = [
    "CONTINUATIONS",
    "CONTINUATION_MODES",
    "Continuation",
    "check_continuation",
    "continuation_mode",
]

Mode = Literal["replay", "resume"]

CONTINUATION_MODES: tuple[Mode, ...] = ("replay", "resume")
"""How a stream cut by a failure goes on (see the module docstring)."""

CONTINUATIONS = ("auto", "replay", "resume", "off")
"""The values of ``Request.continuation``: ``"auto"`` is ``"replay"`` where the runner is
deterministic and the request idempotent, else ``"off"``."""


def may_continue(request: Request) -> bool:
    """Whether ``request`` could be continued on some runner (so its output is recorded)."""
    wanted = request.continuation
    return wanted in ("replay", "resume") or (wanted == "auto" and request.idempotent)


def continuation_mode(request: Request, deterministic: bool | None) -> Mode | None:
    """How ``request`` continues on a runner that is (or is not) deterministic; None: not."""
    wanted = request.continuation
    if wanted == "resume":
        return "resume"
    if wanted == "replay" or (wanted == "auto" and request.idempotent):
        return "replay" if deterministic else None
    return None


def check_continuation(request: Request, deterministic: bool | None, runner: str) -> None:
    """Refuse an explicit replay on a runner known not to be deterministic.

    Raises:
        BadRequest: ``continuation="replay"`` and the runner does not say ``deterministic``.
    """
    if request.continuation == "replay" and deterministic is False:
        raise BadRequest(
            f"request {request.id!r} asks for continuation='replay', which needs a deterministic "
            f"runner, and {runner} does not say deterministic = True; use 'resume' or 'off'"
        )


@final
@attrs.define(eq=False)
class Continuation:
    """What one request delivered so far, and how its next run goes on from there.

    The worker keeps one per request that may be continued; ``RequestStream.carry()`` hands it
    out after the stream failed, for ``Worker.submit(batch, continuing={id: it})`` on another
    worker (what a pool does).
    """

    tokens: list[int] = attrs.Factory(list)
    """The token ids handed to the consumer's buffer, in order (never what a replay dropped)."""
    texts: list[str] = attrs.Factory(list)
    """Their text, a piece per chunk."""
    mode: Mode | None = None
    """Set when a re-run is prepared."""
    deterministic: bool | None = None
    """Whether the runner it was admitted to says it is deterministic (None: not known yet)."""
    attempts: int = 0
    """Runs so far, carried from worker to worker by a pool."""
    times: int = 0
    """How many times the request was continued."""
    carried: int = 0
    """Tokens delivered before the present ``resume`` run (its usage is corrected by them)."""
    _want_tokens: tuple[int, ...] = ()  # a replay's expected prefix, and how far the re-run got
    _want_text: str = ""
    _at_token: int = 0
    _at_char: int = 0
    skipping: bool = False
    """True while a replay has not reproduced the whole delivered prefix yet."""

    @property
    def delivered(self) -> bool:
        """Whether anything was delivered."""
        return bool(self.tokens) or any(self.texts)

    def rerun(self, request: Request, mode: Mode) -> Request | None:
        """Prepare the next run: the request the runner gets, or None when nothing is left to
        run (a resume whose tokens are all delivered)."""
        self.mode = mode
        self.times += 1
        tokens, text = tuple(self.tokens), "".join(self.texts)
        if mode == "replay":
            self._want_tokens, self._want_text = tokens, text
            self._at_token = self._at_char = 0
            self.skipping = bool(tokens or text)
            return request
        left = request.params.max_tokens - len(tokens)
        if left < 1:
            return None
        self.carried = len(tokens)
        prompt = request.prompt
        prompt = prompt + tokens if isinstance(prompt, tuple) else prompt + text
        min_tokens = max(0, request.params.min_tokens - len(tokens))
        params = attrs.evolve(request.params, max_tokens=left, min_tokens=min_tokens)
        messages = request.messages
        if messages:  # a chat: the answer so far becomes the assistant message it continues
            if request.continue_final:
                last = messages[-1]
                messages = (*messages[:-1], ChatMessage("assistant", last.content + text))
            else:
                messages = (*messages, ChatMessage("assistant", text))
        return attrs.evolve(request, prompt=prompt, params=params, messages=messages,
                            continue_final=bool(messages), max_tokens_asked=True)  # fmt: skip

    def skip(self, chunk: Chunk) -> Chunk | None:
        """During a replay: ``chunk`` less what was delivered already (None if nothing is left).

        Raises:
            ContinuationMismatch: the re-run differs from the delivered prefix, or ended first.
        """
        if chunk.error is not None:  # the re-run failed the request before it caught up
            self.skipping = False
            return Chunk(chunk.request_id, error=chunk.error)
        tokens, text = chunk.token_ids, chunk.text
        t, c = self._at_token, self._at_char
        n_tokens = min(len(tokens), len(self._want_tokens) - t)
        n_chars = min(len(text), len(self._want_text) - c)
        if tokens[:n_tokens] != self._want_tokens[t : t + n_tokens]:
            first = next(i for i in range(n_tokens) if tokens[i] != self._want_tokens[t + i])
            raise self._mismatch(chunk.request_id, f"token {t + first + 1}")
        if text[:n_chars] != self._want_text[c : c + n_chars]:
            first = next(i for i in range(n_chars) if text[i] != self._want_text[c + i])
            raise self._mismatch(chunk.request_id, f"character {c + first + 1} of the text")
        self._at_token, self._at_char = t + n_tokens, c + n_chars
        self.skipping = self._at_token < len(self._want_tokens) or self._at_char < len(
            self._want_text
        )
        if self.skipping and chunk.final:
            raise self._mismatch(chunk.request_id, "its end, which came before the delivered part")
        if not self.skipping:
            self._want_tokens, self._want_text = (), ""
        if n_tokens == 0 and n_chars == 0:
            return chunk
        if n_tokens == len(tokens) and n_chars == len(text) and not chunk.final:
            return None
        logprobs = None if chunk.logprobs is None else chunk.logprobs[n_tokens:]
        return attrs.evolve(chunk, token_ids=tokens[n_tokens:], text=text[n_chars:],
                            logprobs=logprobs)  # fmt: skip

    def _mismatch(self, request_id: str, where: str) -> ContinuationMismatch:
        return ContinuationMismatch(
            f"request {request_id!r} was replayed after its tier failed and the re-run differs "
            f"from what was delivered at {where}: the runner is not deterministic for it, so "
            "its stream ends here rather than continue with other output"
        )

    def usage(self, usage: Usage | None) -> Usage | None:
        """A resumed run's usage, with the tokens it was given as prompt counted as completion."""
        if usage is None or not self.carried:
            return usage
        return Usage(max(0, usage.prompt_tokens - self.carried),
                     usage.completion_tokens + self.carried)  # fmt: skip
