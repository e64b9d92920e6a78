"""``MockRunner``: a deterministic runner for tests, examples and benchmarks.

Its tokens are a function of the prompt, the seed and the position only, never of the batch a
request is in, so a request re-run after a restart produces exactly the same output. It
streams one chunk per request per decoding step, sleeps ``delay`` seconds per step (virtual
time under ``autojump_clock``), honours ``batch.is_cancelled`` and records what each
incarnation did in a :class:`MockRecord` that outlives the runners.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any, final

import attrs
import trio

from .._types import Batch, Chunk, FinishReason, RebuildCause, Request, Usage

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


def token_at(request: Request, position: int, vocab_size: int) -> int:
    """The token at ``position`` for ``request``: a function of prompt, seed and position only."""
    prompt = request.prompt if isinstance(request.prompt, str) else repr(request.prompt)
    key = f"{prompt}\x00{request.params.seed}\x00{position}".encode()
    return zlib.crc32(key) % vocab_size


def text_of(token: int) -> str:
    """The text of a token: a word and a space."""
    return WORDS[token % len(WORDS)] + " "


class MockRunner:
    """A deterministic runner (see the module docstring).

    Args:
        delay: seconds per decoding step (all requests of the batch advance together).
        load_delay: seconds ``load`` takes.
        vocab_size: tokens are in ``range(vocab_size)``.
        max_concurrency: batches the worker may run at once on one runner.
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

    def __repr__(self) -> str:
        return f"<MockRunner #{self.instance} delay={self.delay}>"

    async def load(self, device: Any) -> None:
        """Pretend to load weights."""
        await trio.sleep(self.load_delay)
        self.device = device
        self.record.loads += 1
        self.record.devices.append(device.name)

    async def execute(self, batch: Batch) -> AsyncIterator[Chunk]:
        """One chunk per request per step until each reaches max_tokens or a stop sequence."""
        self.record.executes.append((self.instance, batch.seq, tuple(r.id for r in batch.requests)))
        active = list(batch.requests)
        texts = {r.id: "" for r in active}
        position = 0
        while active:
            still = []
            for request in active:
                if batch.is_cancelled(request.id):
                    continue
                token = token_at(request, position, self.vocab_size)
                text = text_of(token)
                texts[request.id] += text
                params = request.params
                reason = None
                if any(texts[request.id].endswith(stop) for stop in params.stop):
                    reason = FinishReason.STOP
                elif position + 1 >= params.max_tokens:
                    reason = FinishReason.LENGTH
                usage = None
                if reason is not None:
                    prompt_tokens = (
                        len(request.prompt.split())
                        if isinstance(request.prompt, str)
                        else len(request.prompt)
                    )
                    usage = Usage(prompt_tokens, position + 1)
                else:
                    still.append(request)
                yield Chunk(request.id, (token,), text, reason, usage)
            active = still
            position += 1
            if active:
                await trio.sleep(self.delay)

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Record the rebuild."""
        self.record.rebuilds.append((self.instance, cause))
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Record the close."""
        self.record.closes += 1
        await trio.lowlevel.checkpoint()
