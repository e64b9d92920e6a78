"""Continuous batching with no leader: one decoding step for the requests of every batch.

Theory of operation
-------------------
A runner keeps one :class:`Stepper` and streams each ``execute(batch)`` through
:meth:`Stepper.stream`. That registers the batch's requests (the runner's per-request decoding
states) in the stepper's active set, with a buffer for the batch's chunks, and loops:

1. if the batch's buffer is empty, take the step lock (a ``trio.Lock``: fair, first come,
   first served);
2. under it, if the buffer is still empty, run ONE step, ``step(states)``: one forward pass over
   every active request of every registered batch, whose chunks go to their batches' buffers;
3. release the lock, yield the batch's own buffered chunks, go round.

No task belongs to the runner: whichever execute finds its buffer empty runs the next step for
everyone, and the others find their chunks when the lock reaches them. A step that computes
lets other tasks run (it awaits the device, or sleeps), so a batch that arrives while others
decode is in the next step; a long request therefore never holds a short one behind it.
Leaving (finished, cancelled, closed by its consumer) takes the batch's requests out in a
``finally``; a request that ``batch.is_cancelled`` drops out at the next step, the rest of its
batch going on. ``step`` changes no state before its last await, so
a step cancelled there changed nothing and the next holder of the lock runs it again. A step
that raises fails every batch that was in it: the one that ran it raises the error, each other
one its own copy chained to it, after the chunks it already had. Chunks buffered for a batch
whose consumer is slow wait for it; each request produces at most ``max_tokens`` of them.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar, final

import attrs
import trio

from .._errors import RunnerError
from .._types import Batch, Chunk, FinishReason, Request, SamplingParams

__all__ = ["Decoding", "Stepper", "ending"]


class Decoding(Protocol):
    """A runner's decoding state of one request."""

    @property
    def request(self) -> Request:
        """The request being decoded."""
        ...


S = TypeVar("S", bound=Decoding)


@attrs.define(eq=False)
class _Member(Generic[S]):
    """One execute registered with the stepper."""

    batch: Batch
    states: list[S]
    """Its unfinished requests, in batch order."""
    buffer: list[Chunk] = attrs.Factory(list)
    """Chunks stepped for it and not yet yielded."""
    error: BaseException | None = None
    """Its copy of the error of a step it was in, raised once its buffer is empty."""
    joined: bool = True
    """False once its execute ended: a step still in flight then drops its chunks."""


@final
class Stepper(Generic[S]):
    """The shared decoding loop of one runner (see the module docstring).

    Args:
        step: ``await step(states)`` decodes one token for each state, in one forward pass,
            and returns one chunk per state, in order (a final one ends its request), or None
            for a state it left for a later step (a runner whose batch is full). It must
            check for cancellation, should let other tasks run when it computes, and must
            change no state before its last await (so that a step cancelled while it awaits
            the device changed nothing; a step that cannot be cancelled, as one in a thread
            that is never abandoned, may).
    """

    def __init__(self, step: Callable[[list[S]], Awaitable[Sequence[Chunk | None]]]) -> None:
        self.step = step
        self._members: list[_Member[S]] = []  # in order of arrival
        self._lock = trio.Lock()

    def __repr__(self) -> str:
        active = sum(len(member.states) for member in self._members)
        return f"<Stepper {len(self._members)} batches, {active} requests active>"

    async def stream(self, batch: Batch, states: Iterable[S]) -> AsyncGenerator[Chunk, None]:
        """Decode ``states`` (requests of ``batch``) together with every other batch's until
        each one's last chunk, yielding this batch's chunks in order per request.

        Raises:
            Exception: what a step this batch was in raised (a copy, chained to it, where
                another batch's execute ran the step).
        """
        member = _Member(batch, list(states))
        if not member.states:
            await trio.lowlevel.checkpoint()
            return
        self._members.append(member)
        try:
            while True:
                if not member.buffer:
                    await self._take_step(member)
                chunks, member.buffer = member.buffer, []
                for chunk in chunks:
                    if not batch.is_cancelled(chunk.request_id):
                        yield chunk
                if member.buffer:
                    continue  # other executes stepped while this one's consumer was away
                error = member.error
                if error is not None:
                    raise error from error.__cause__
                if not member.states:
                    return
        finally:
            member.joined = False
            self._members.remove(member)

    async def _take_step(self, member: _Member[S]) -> None:
        """Run one step for everyone, unless another execute ran it while this one waited."""
        lock = self._lock
        try:
            lock.acquire_nowait()  # uncontended: the step's own await is the checkpoint
            waited = False
        except trio.WouldBlock:
            await lock.acquire()
            waited = True
        try:
            if member.states and not member.buffer and member.error is None:
                await self._step(member)
            elif not waited:
                await trio.lowlevel.checkpoint()
        finally:
            lock.release()

    async def _step(self, stepping: _Member[S]) -> None:
        for member in self._members:
            cancelled = member.batch.is_cancelled
            member.states = [s for s in member.states if not cancelled(s.request.id)]
        members = [member for member in self._members if member.states]
        if not members:
            await trio.lowlevel.checkpoint()
            return
        states = [s for member in members for s in member.states]
        try:
            chunks = await self.step(states)
            if len(chunks) != len(states):
                raise RunnerError(
                    f"a step returned {len(chunks)} chunks for {len(states)} requests"
                )
        except Exception as exc:
            for member in members:
                member.states = []
                if member is not stepping and member.joined:
                    member.error = _copy_for_another(exc)
            raise
        start = 0
        for member in members:  # a batch that joined meanwhile is in the next step
            mine = chunks[start : start + len(member.states)]
            start += len(member.states)
            if member.joined:  # else it left while the step awaited the device
                member.buffer.extend(c for c in mine if c is not None)
                member.states = [s for s, c in zip(member.states, mine, strict=True)
                                 if c is None or not c.final]  # fmt: skip


def ending(text: str, produced: int, params: SamplingParams, added: int = 1) -> FinishReason | None:
    """How a request whose output so far is ``text`` (``produced`` tokens, the last of which
    wrote its last ``added`` characters) ends now: ``STOP`` when a stop sequence ends within
    those characters (not before ``min_tokens`` tokens: a token's text may go on past it, as a
    word's trailing space does), ``LENGTH`` at ``max_tokens``, else None."""
    if params.stop and added and produced >= params.min_tokens:
        for stop in params.stop:
            if stop in text[-(len(stop) + added - 1) :]:
                return FinishReason.STOP
    if produced >= params.max_tokens:
        return FinishReason.LENGTH
    return None


def _copy_for_another(error: Exception) -> BaseException:
    """Another batch's own copy of a step's error, chained to it."""
    try:
        own = copy.copy(error)
    except Exception:  # an __init__ that copy cannot call: share the object, the type matters
        return error
    own.__cause__ = error
    own.__traceback__ = None
    return own
