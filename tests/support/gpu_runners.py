"""Runners for the process-isolation GPU tests: imported by the child process, by import path.

:class:`StickyRunner` does real device work through ``device.run_sync`` on every decoding step,
and, on the first batch of the first incarnation only (gated by a marker file: an event cannot
cross a process boundary), writes through a bad pointer from a ``cupy.RawKernel`` and
synchronizes, so that a real sticky CUDA error (an illegal address) poisons the child's
context. CuPy is reached through ``device.xp`` only, so this module imports anywhere.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import trio_supervise as ts
from trio_supervise.runners.mock import MockRunner, text_of, token_at

GPU_MULTIPLIER = 7
GPU_OFFSET = 3
"""The runner's tokens are ``(token_at(...) * GPU_MULTIPLIER + GPU_OFFSET) % vocab_size``,
computed on the device from MockRunner's tokens (see :func:`gpu_token`)."""

BAD_ADDRESS = 0x10
"""Where the poisoning kernel writes: in page 0, which neither the host nor the GPU ever maps
(as in ``test_gpu.py``)."""

POKE_SOURCE = r"""
extern "C" __global__ void poke(int* p) { *p = 42; }
"""


def gpu_token(request: ts.Request, position: int, vocab_size: int = 50_000) -> int:
    """What :class:`StickyRunner` computes on the device for ``request`` at ``position``."""
    return (token_at(request, position, vocab_size) * GPU_MULTIPLIER + GPU_OFFSET) % vocab_size


def gpu_text(request: ts.Request) -> str:
    """The text :class:`StickyRunner` streams for ``request`` (to ``max_tokens``, no stops)."""
    return "".join(text_of(gpu_token(request, i)) for i in range(request.params.max_tokens))


def _first_time(marker: str) -> bool:
    """True once per marker file: creates it, with the wall-clock time, for the test to read."""
    try:
        with open(marker, "x") as f:
            f.write(repr(time.time()))
    except FileExistsError:
        return False
    return True


class StickyRunner(MockRunner):
    """Tokens computed on the device; the first batch ever poisons the CUDA context.

    Args:
        marker: a file path; the first batch that creates it faults (its content: the wall-clock
            time just before the faulting kernel was launched).
        report: a file path; a JSON line is appended for every batch this runner served.
        fault_address: where the faulting kernel writes.
        **kwargs: for :class:`MockRunner` (delay, vocab_size, ...).
    """

    needs_device = True

    def __init__(
        self,
        *,
        marker: str,
        report: str | None = None,
        fault_address: int = BAD_ADDRESS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.marker = marker
        self.report = report
        self.fault_address = fault_address
        self.gpu_name: str | None = None
        self.batches = 0
        self._poke: Any = None

    async def load(self, device: Any) -> None:
        await super().load(device)
        await device.probe()  # creates the context now, not on the first request
        if device.name.startswith("cuda"):
            self.gpu_name = await device.run_sync(self._load_on_device)

    def _load_on_device(self) -> str:
        """Compile the faulting kernel ahead (so the fault itself is quick); the GPU's name."""
        xp = self.device.xp
        self._poke = xp.RawKernel(POKE_SOURCE, "poke")
        self._poke.compile()
        name = xp.cuda.runtime.getDeviceProperties(self.device.device_id)["name"]
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)

    async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
        first = self.batches == 0
        self.batches += 1
        if first and _first_time(self.marker):
            # Raises ContextPoisoned (run_sync classifies the illegal-address error).
            await self.device.run_sync(self._write_through_a_bad_pointer)
            raise AssertionError(f"writing to {self.fault_address:#x} raised nothing")
        device = self.device
        active = list(batch.requests)
        produced = {r.id: "" for r in active}
        tokens = 0
        seen: dict[str, Any] = {}
        position = 0
        while active:
            active = [r for r in active if not batch.is_cancelled(r.id)]
            if not active:
                break
            bases = [token_at(r, position, self.vocab_size) for r in active]
            computed, seen = await device.run_sync(self._tokens_on_device, bases)
            still = []
            chunks = []
            for request, token in zip(active, computed, strict=True):
                text = text_of(token)
                produced[request.id] += text
                params = request.params
                reason = None
                if any(produced[request.id].endswith(stop) for stop in params.stop):
                    reason = ts.FinishReason.STOP
                elif position + 1 >= params.max_tokens:
                    reason = ts.FinishReason.LENGTH
                else:
                    still.append(request)
                tokens += 1
                usage = None if reason is None else ts.Usage(0, position + 1)
                chunks.append(ts.Chunk(request.id, (token,), text, reason, usage))
            if not still:  # before the last chunks: the test reads it once they arrive
                self._write_report(batch, tokens, seen)
            for chunk in chunks:
                yield chunk
            active = still
            position += 1

    def _tokens_on_device(self, bases: list[int]) -> tuple[list[int], dict[str, Any]]:
        """One decoding step's tokens, computed with the device's array module (CuPy on a GPU);
        and what was current in the device thread."""
        xp = self.device.xp
        x = xp.asarray(bases, dtype=xp.int64)
        y = (x * GPU_MULTIPLIER + GPU_OFFSET) % self.vocab_size
        host = y.get() if hasattr(y, "get") else y  # .get() waits for the stream
        seen: dict[str, Any] = {"array_module": xp.__name__}
        if self.device.name.startswith("cuda"):
            seen["cuda_device"] = int(xp.cuda.runtime.getDevice())
            seen["own_stream"] = xp.cuda.get_current_stream().ptr == self.device.stream.ptr
            seen["array_device"] = int(y.device.id)
        return [int(v) for v in host], seen

    def _write_through_a_bad_pointer(self) -> None:
        xp = self.device.xp
        self._poke((1,), (1,), (xp.uint64(self.fault_address),))
        self.device.stream.synchronize()  # the illegal address surfaces here

    def _write_report(self, batch: ts.Batch, tokens: int, seen: dict[str, Any]) -> None:
        if self.report is None:
            return
        line = {
            "pid": os.getpid(),
            "device": self.device.name,
            "gpu": self.gpu_name,
            "seq": batch.seq,
            "requests": [r.id for r in batch.requests],
            "tokens": tokens,
            **seen,
        }
        with open(self.report, "a") as f:
            f.write(json.dumps(line) + "\n")

    async def aclose(self) -> None:
        await super().aclose()
        if self.device is not None:
            self.device.close()  # swallows the errors of a poisoned context


def asserting_transformers_runner(*, marker: str, **kwargs: Any) -> Any:
    """A ``TransformersRunner`` (``kwargs``) whose first batch ever (gated by ``marker``)
    indexes a CUDA tensor out of range: a real device-side assert, which PyTorch raises as
    ``CUDA error: device-side assert triggered`` (sticky: only a fresh process can use the GPU
    again). Built by import path in the worker's child process, where the extra is installed."""
    from trio_supervise.runners.transformers import TransformersRunner

    class Asserting(TransformersRunner):  # type: ignore[misc]
        async def execute(self, batch: ts.Batch) -> AsyncIterator[ts.Chunk]:
            if _first_time(marker):
                await self._thread.run(self._assert_on_device)
                raise AssertionError("an out-of-range index on the GPU raised nothing")
            async for chunk in super().execute(batch):
                yield chunk

        def _assert_on_device(self) -> None:
            torch = self.torch
            try:
                where = next(self.model.parameters()).device
                values = torch.zeros(4, device=where)
                values[torch.tensor([1 << 20], device=where)].sum().item()
                torch.cuda.synchronize(where)
            except RuntimeError as exc:  # torch.AcceleratorError too
                raise ts.classify_cuda_error(exc) from exc

    return Asserting(**kwargs)
