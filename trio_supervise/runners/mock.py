"""``MockRunner``: a deterministic runner for tests, examples and benchmarks.

Its tokens are a function of the prompt, the seed and the position only, never of the batch a
request is in, so a request re-run after a restart produces exactly the same output. It
streams one chunk per request per decoding step, honours ``batch.is_cancelled`` and records
what each incarnation did in a :class:`MockRecord` that outlives the runners.

Decoding is continuously batched (``runners/_stepping.py``): every step advances all active
requests of all the batches executing at once (up to ``max_concurrency``), and a batch that
arrives mid-decode joins at the next step. A step sleeps ``delay`` seconds (virtual time under
``autojump_clock``), one sleep for all of them, except a step that only makes first tokens
(which stands for a prefill, and costs nothing): a request of ``n`` tokens alone takes
``(n - 1) * delay``, as before.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any, final

import attrs
import trio

from .._types import Batch, Chunk, RebuildCause, Request, Usage
from ._stepping import Stepper, ending

__all__ = ["MockRecord", "MockRunner"]

WORDS = (
    "the", "a", "model", "runs", "on", "trio", "and", "keeps", "serving", "while",
    "workers", "restart", "under", "supervision", "with", "backoff", "tokens", "flow",
    "through", "channels",
)  # fmt: skip


@final
@attrs.define
class MockRecord:
    """What every incarnation of a :class:`MockRunner` did (pass one in ``runner_args``)."""

    instances: int = 0
    """Runners built."""
    loads: int = 0
    """Successful loads."""
    executes: list[tuple[int, int, tuple[str, ...]]] = attrs.Factory(list)
    """``(instance, batch.seq, request ids)`` for every batch started."""
    rebuilds: list[tuple[int, RebuildCause]] = attrs.Factory(list)
    """``(instance, cause)`` for every rebuild_session."""
    closes: int = 0
    """Runners closed."""
    devices: list[str] = attrs.Factory(list)
    """The device each load got."""
    steps: int = 0
    """Decoding steps run, each one sleep for all the requests active then."""


def token_at(request: Request, position: int, vocab_size: int) -> int:
    """The token at ``position`` for ``request``: a function of prompt, seed and position only."""
    prompt = request.prompt if isinstance(request.prompt, str) else repr(request.prompt)
    key = f"{prompt}\x00{request.params.seed}\x00{position}".encode()
    return zlib.crc32(key) % vocab_size


def text_of(token: int) -> str:
    """The text of a token: a word and a space."""
    return WORDS[token % len(WORDS)] + " "


@attrs.define(eq=False)
class _Decoding:
    """One request being decoded."""

    request: Request
    position: int = 0
    text: str = ""


class MockRunner:
    """A deterministic runner (see the module docstring).

    Args:
        delay: seconds per decoding step, in which all the active requests of all the batches
            executing advance together (a step of first tokens only takes no time).
        load_delay: seconds ``load`` takes.
        vocab_size: tokens are in ``range(vocab_size)``.
        max_concurrency: batches the worker may run at once on one runner; they decode
            together, one step for all (default 1: one batch at a time).
        record: collects what every incarnation did.
    """

    default_policy = None
    needs_device = True
    deterministic = True  # tokens depend on prompt, seed and position only: a replay matches

    def __init__(
        self,
        *,
        delay: float = 0.0,
        load_delay: float = 0.0,
        vocab_size: int = 50_000,
        max_concurrency: int = 1,
        record: MockRecord | None = None,
    ) -> None:
        self.delay = delay
        self.load_delay = load_delay
        self.vocab_size = vocab_size
        self.max_concurrency = max_concurrency
        self.record = record if record is not None else MockRecord()
        self.instance = self.record.instances
        self.record.instances += 1
        self.device: Any = None
        self._stepper = Stepper(self._step)

    def __repr__(self) -> str:
        return f"<MockRunner #{self.instance} delay={self.delay}>"

    async def load(self, device: Any) -> None:
        """Pretend to load weights."""
        await trio.sleep(self.load_delay)
        self.device = device
        self.record.loads += 1
        self.record.devices.append(device.name)

    def execute(self, batch: Batch) -> AsyncIterator[Chunk]:
        """One chunk per request per step until each reaches max_tokens or a stop sequence,
        in steps shared with the other batches executing at once (the stepper's own async
        generator, handed over as it is: one generator less for each chunk to pass through)."""
        self.record.executes.append((self.instance, batch.seq, tuple(r.id for r in batch.requests)))
        return self._stepper.stream(batch, [_Decoding(request) for request in batch.requests])

    async def _step(self, states: list[_Decoding]) -> list[Chunk]:
        """One token for each state, after one sleep (none when all are first tokens: a
        prefill that costs nothing, and as before no trip through the scheduler either)."""
        if any(state.position for state in states):
            await trio.sleep(self.delay)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        self.record.steps += 1
        return [self._advance(state) for state in states]

    def _advance(self, state: _Decoding) -> Chunk:
        request, position = state.request, state.position
        token = token_at(request, position, self.vocab_size)
        text = text_of(token)
        state.text += text
        state.position = position + 1
        reason = ending(state.text, state.position, request.params, len(text))
        usage = None
        if reason is not None:
            prompt = request.prompt
            prompt_tokens = len(prompt.split()) if isinstance(prompt, str) else len(prompt)
            usage = Usage(prompt_tokens, position + 1)
        return Chunk(request.id, (token,), text, reason, usage)

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Record the rebuild."""
        self.record.rebuilds.append((self.instance, cause))
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Record the close."""
        self.record.closes += 1
        await trio.lowlevel.checkpoint()
