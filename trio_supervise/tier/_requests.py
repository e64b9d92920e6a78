"""One accepted request's life: its output buffer, its one terminal outcome, its consumer.

The runner side pushes chunks into a :class:`RequestState` without ever blocking: a slow
consumer's tokens and text coalesce in the buffer (bounded by the request's ``max_tokens``).
The consumer side is :class:`RequestStream`, an async iterator and async context manager that
hands out everything buffered as one chunk, then the end (a final chunk, or the error).

Theory of operation: ``outcome`` is set exactly once, by whichever comes first of the runner
finishing the request, an error, the deadline, or the consumer leaving. After that, late chunks
are dropped quietly (the consumer left) or reported as a runner mistake (the runner finished it
already), never delivered.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, final

import attrs
import trio

from .._errors import ContinuationMismatch, InferenceError, RequestTimeout, RunnerError
from .._types import Chunk, FinishReason, Request, TokenLogprob, Usage
from ._continuation import Continuation, continuation_mode, may_continue

__all__ = ["RequestState", "RequestStream", "error_for_request"]


def error_for_request(error: BaseException) -> InferenceError:
    """A request's own copy of ``error``, typed, and chained to it.

    An :class:`InferenceError` is copied; anything else becomes a :class:`RunnerError`.
    """
    if isinstance(error, InferenceError):
        try:
            own = copy.copy(error)
        except Exception:  # a user subclass whose __init__ takes other arguments
            own = RunnerError(str(error), retryable=error.retryable, retry_after=error.retry_after)
    else:
        own = RunnerError(f"the runner failed: {error!r}")
    own.__cause__ = error
    own.__traceback__ = None
    return own


class RequestState:
    """An accepted request: output buffer, attempts, and its one terminal outcome."""

    __slots__ = (
        "attempts",
        "cancelled_ids",
        "continuation",
        "continuing",
        "delivered",
        "delivered_text",
        "error",
        "finish_reason",
        "first_chunk_at",
        "generation",
        "max_tokens",
        "on_outcome",
        "outcome",
        "pending",
        "produced",
        "produced_this_attempt",
        "request",
        "reruns",
        "run_request",
        "usage",
        "waiter",
        "wake_each_chunk",
    )

    def __init__(
        self,
        request: Request,
        on_outcome: Callable[[RequestState], None],
        continuing: Continuation | None = None,
    ) -> None:
        self.request = request
        self.run_request = request  # what the runner gets: a resumed run's prompt is longer
        self.max_tokens = request.params.max_tokens
        self.pending: list[Chunk] = []  # from the runner, not yet taken by the consumer
        self.produced = 0
        self.produced_this_attempt = False
        self.attempts = 0
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.error: InferenceError | None = None
        self.outcome: str | None = None  # "finished", "failed" or "cancelled"
        self.waiter: trio.lowlevel.Task | None = None  # the consumer, while it waits
        self.on_outcome = on_outcome
        self.cancelled_ids: set[str] | None = None  # the running batch's, while one runs it
        self.wake_each_chunk = True  # False: a reader that wants the whole answer, at the end
        # What was delivered, while the request could be continued after a tier failure.
        self.continuation = Continuation() if may_continue(request) else None
        if continuing is not None:  # its stream began on another worker: it goes on here
            self.continuation = continuing
            self.attempts = continuing.attempts
            self.produced = len(continuing.tokens)
        self.delivered = None if self.continuation is None else self.continuation.tokens
        self.delivered_text = [] if self.continuation is None else self.continuation.texts
        self.continuing = False  # True while a continued run's chunks need _continue
        self.first_chunk_at: float | None = None
        """``trio.current_time()`` when the runner's first chunk for it arrived."""
        self.generation = 0
        """The tier incarnation that took it last (0: none yet)."""
        self.reruns: list[tuple[float, str]] | None = None
        """Each run after a restart: when it was decided, and ``"continued"`` or ``"again"``."""

    def __repr__(self) -> str:
        return f"<RequestState {self.request.id!r} {self.outcome or 'open'}>"

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def open(self) -> bool:
        """No terminal outcome yet."""
        return self.outcome is None

    def _end(self, outcome: str) -> None:
        self.outcome = outcome
        if self.waiter is not None:
            self._wake()
        self.on_outcome(self)

    def _wake(self) -> None:
        """Reschedule the waiting consumer (the caller checked there is one)."""
        task, self.waiter = self.waiter, None
        assert task is not None
        trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Until a chunk or the outcome arrives (one consumer at a time), or cancelled.

        A single waiter rescheduled directly: the consumer's wake-up is the hot path of
        streaming, and a ParkingLot costs more for what is always one task.
        """
        if self.waiter is not None:
            raise trio.BusyResourceError(
                f"another task is already reading request {self.id!r}'s stream"
            )
        self.waiter = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def push(self, chunk: Chunk) -> int:
        """Take a chunk from the runner (the caller checked that the request is open); return
        how many of its tokens were delivered (a replay drops those delivered already).

        Raises:
            RunnerError: the chunk would exceed the request's ``max_tokens``.
        """
        self.produced_this_attempt = True
        if self.first_chunk_at is None:
            self.first_chunk_at = trio.current_time()
        delivered = self.delivered
        if delivered is not None:  # it may be continued: record what its consumer gets
            if self.continuing:  # a replay's prefix to drop, or a resumed run's usage to fix
                continued = self._continue(chunk)
                if continued is None:
                    return 0
                chunk = continued
            tokens = chunk.token_ids
            if tokens:
                delivered.extend(tokens)
            self.delivered_text.append(chunk.text)
        tokens = chunk.token_ids
        if tokens:
            self.produced += len(tokens)
            if self.produced > self.max_tokens:
                raise RunnerError(
                    f"the runner produced {self.produced} tokens for request {self.id!r}, "
                    f"more than its max_tokens={self.request.params.max_tokens}"
                )
        if chunk.error is not None:
            if tokens or chunk.text:  # its output still reaches the consumer, then the error
                self.pending.append(Chunk(self.id, tokens, chunk.text, logprobs=chunk.logprobs))
            self.fail(error_for_request(chunk.error))
            return len(tokens)
        self.pending.append(chunk)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
            self.usage = chunk.usage
            self._end("finished")
        elif self.waiter is not None and self.wake_each_chunk:  # a consumer waits for chunks
            self._wake()
        return len(tokens)

    def _continue(self, chunk: Chunk) -> Chunk | None:
        """A continued run's chunk as its consumer gets it (None: nothing new in it)."""
        continuation = self.continuation
        assert continuation is not None
        if continuation.skipping:  # a replay: drop (and check) what was delivered already
            try:
                skipped = continuation.skip(chunk)
            except ContinuationMismatch as exc:
                self.fail(exc)
                if self.cancelled_ids is not None:
                    self.cancelled_ids.add(self.id)  # the runner may stop working on it
                return None
            if skipped is None:
                return None
            chunk = skipped
        if chunk.usage is not None and continuation.carried:
            chunk = attrs.evolve(chunk, usage=continuation.usage(chunk.usage))
        self.continuing = continuation.skipping or bool(continuation.carried)
        return chunk

    def run_again(self, deterministic: bool | None, max_attempts: int) -> str | None:
        """After its tier failed: see :meth:`_run_again`; each run is recorded in ``reruns``."""
        run = self._run_again(deterministic, max_attempts)
        if run is not None:
            if self.reruns is None:
                self.reruns = []
            self.reruns.append((trio.current_time(), run))
        return run

    def _run_again(self, deterministic: bool | None, max_attempts: int) -> str | None:
        """After its tier failed: ``"continued"`` or ``"again"`` if it runs again (prepared to),
        else None.

        Not after ``max_attempts`` runs. One that delivered nothing runs again when idempotent
        (or continuable); one that delivered output only as a continuation (``replay`` on a
        deterministic runner, or ``resume``), which its next run continues.
        """
        if self.attempts >= max_attempts:
            return None
        continuation = self.continuation
        if continuation is not None:
            mode = continuation_mode(self.request, deterministic)
            if mode is not None and continuation.delivered:
                run = continuation.rerun(self.request, mode)
                if run is None:
                    return None
                self.run_request = run
                self.continuing = continuation.skipping or bool(continuation.carried)
                return "continued"
            if mode is not None:
                return "again"
        return "again" if self.request.idempotent and not self.produced_this_attempt else None

    def carry(self) -> Continuation | None:
        """What another worker needs to continue this request's stream (a pool moving it):
        None unless it may be continued."""
        continuation = self.continuation
        if continuation is not None:
            continuation.attempts = self.attempts
        return continuation

    def fail(self, error: InferenceError) -> None:
        """End the request with ``error`` (its own object), unless it has ended already."""
        if self.outcome is None:
            self.error = error
            self._end("failed")

    def cancel(self) -> None:
        """The consumer left: the runner sees it through the batch; late chunks are dropped."""
        if self.outcome is None:
            self.finish_reason = FinishReason.CANCELLED
            if self.cancelled_ids is not None:
                self.cancelled_ids.add(self.id)
            self._end("cancelled")

    def take(self) -> Chunk | None:
        """Everything buffered, as one chunk (the final one when the request has finished)."""
        pending = self.pending
        if len(pending) == 1:  # the common case: hand the runner's chunk over as it is
            return pending.pop()
        if not pending:
            return None
        tokens: list[int] = []
        text: list[str] = []
        logprobs: list[TokenLogprob] | None = None
        for chunk in pending:
            tokens.extend(chunk.token_ids)
            text.append(chunk.text)
            if chunk.logprobs is not None:
                if logprobs is None:
                    logprobs = []
                logprobs.extend(chunk.logprobs)
        last = pending[-1]
        pending.clear()
        return Chunk(self.id, tuple(tokens), "".join(text), last.finish_reason, last.usage,
                     logprobs=None if logprobs is None else tuple(logprobs))  # fmt: skip


@final
class RequestStream:
    """The consumer's side of one request: ``async for chunk in stream`` / ``async with``.

    Each iteration returns everything produced since the last one as one chunk; the last chunk
    has ``finish_reason`` (and usually ``usage``). A failed request raises its typed
    :class:`InferenceError` after the chunks it already got. Leaving early (``aclose()``, or the
    end of the ``async with`` block) cancels the request; the rest of its batch goes on.
    """

    def __init__(self, state: RequestState) -> None:
        self._state = state
        self._done = False

    def __repr__(self) -> str:
        return f"<RequestStream {self._state.id!r}>"

    @property
    def request(self) -> Request:
        """The request."""
        return self._state.request

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Chunk:
        state = self._state
        if self._done:
            raise StopAsyncIteration
        waited = False
        while True:
            if state.pending:
                if not waited:  # parking was this call's checkpoint; otherwise take one now
                    await trio.lowlevel.checkpoint_if_cancelled()
                chunk = state.take()
                assert chunk is not None
                if chunk.finish_reason is not None:
                    self._done = True
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return chunk
            if state.outcome is not None:
                await trio.lowlevel.checkpoint()  # a cancellation here leaves the error to read
                self._done = True
                if state.error is not None:
                    raise state.error
                raise StopAsyncIteration  # cancelled by this consumer
            deadline = state.request.deadline
            waited = True
            if deadline is None:
                await state.wait()
                continue
            with trio.move_on_at(deadline):
                await state.wait()
                continue
            state.fail(
                RequestTimeout(f"request {state.id!r} passed its deadline before it finished")
            )
            if state.cancelled_ids is not None:
                state.cancelled_ids.add(state.id)  # let the runner stop working on it

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Leave: an unfinished request is cancelled."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        self._done = True
        self._state.cancel()

    @property
    def attempts(self) -> int:
        """Runs of the request so far (on this worker, and before it came here)."""
        return self._state.attempts

    @property
    def first_chunk_at(self) -> float | None:
        """``trio.current_time()`` when its first output arrived here (None: none yet)."""
        return self._state.first_chunk_at

    @property
    def generation(self) -> int:
        """The tier incarnation (the worker's generation) that took it last; 0: none yet."""
        return self._state.generation

    @property
    def reruns(self) -> tuple[tuple[float, str], ...]:
        """Its runs here after a restart: ``(when, "continued" or "again")`` each."""
        return tuple(self._state.reruns or ())

    def carry(self) -> Continuation | None:
        """What another worker needs to continue this stream after it failed here
        (``worker.submit(batch, continuing={id: stream.carry()})``): None unless the request
        may be continued."""
        return self._state.carry()

    async def collect(self) -> Collected:
        """Read to the end: ``(token_ids, text, finish_reason, usage)``."""
        self.wake_at_the_end_only()
        return await collect(self)

    def wake_at_the_end_only(self) -> None:
        """From now on, a waiting reader is woken when the request ends, not at each chunk (its
        output coalesces meanwhile): what :meth:`collect` does, saving a task switch a chunk."""
        self._state.wake_each_chunk = False


Collected = tuple[tuple[int, ...], str, FinishReason | None, Usage | None]


async def collect(stream: Any) -> Collected:
    """Read a stream of chunks to the end (leaving it after): ``(token_ids, text,
    finish_reason, usage)``; a failed request raises its error."""
    tokens: list[int] = []
    text: list[str] = []
    reason: FinishReason | None = None
    usage: Usage | None = None
    async with stream:
        async for chunk in stream:
            tokens.extend(chunk.token_ids)
            text.append(chunk.text)
            reason, usage = chunk.finish_reason or reason, chunk.usage or usage
    return tuple(tokens), "".join(text), reason, usage
