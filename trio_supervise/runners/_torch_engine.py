"""The decoding engine of :class:`~trio_supervise.runners.transformers.TransformersRunner`: one
batched forward pass per step over every active request, with a KV cache, requests joining and
leaving between steps (synchronous PyTorch: the runner calls it in its own thread).

Theory of operation
-------------------
The engine keeps the rows it decodes (in cache order), one ``DynamicCache`` for all of them and
the attention mask over the cache. A row's prompt is left-padded to the longest of those that
join together, so the rows of the cache end at the same column, and every row's next token is
one more column. Each :meth:`Engine.step` is given the requests to decode (the stepper's active
set, in any order):

1. rows that are no longer asked for (finished, cancelled) are dropped from the cache, and the
   columns that only padded them are trimmed from its left;
2. the rows already in the cache decode one token: input their last token, the mask one column
   longer, each row's own position (``mask.cumsum - 1``);
3. the requests not yet in the cache are prefilled together, left-padded, and their cache is
   left-padded (or the old one is) to the same length and appended to the batch's;
4. the last position's logits of each row go back, on the device, in the order asked (the
   runner takes a plain greedy row's argmax there, and copies the others to the host).

Padding is masked out of attention, and positions ignore it, so a row's logits are those of the
request alone but for floating-point summation order (which a batch of another size changes in
the last bits: the runner does not call itself deterministic). A step that raises leaves the
engine empty (:meth:`Engine.reset`): its requests fail, and the next ones start afresh.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, final

__all__ = ["Engine"]


@final
class Engine:
    """Rows of one model's batched decoding (see the module docstring).

    Args:
        model: a ``transformers`` causal language model, on ``device``, in eval mode.
        device: the ``torch.device`` its inputs go to.
        pad_id: the token id that pads a prompt on the left (masked out: any id will do).
        max_rows: the most requests decoded at once; a request asked for beyond them waits
            (its logits are None) until rows are free, the first asked first.
    """

    def __init__(self, model: Any, device: Any, pad_id: int, max_rows: int = 8) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.max_rows = max_rows
        self.rows: list[Any] = []
        """What each row of the cache decodes (the runner's request states), in cache order."""
        self.cache: Any = None
        self.mask: Any = None
        """``(rows, columns)``, 1 where the cache holds a token, 0 where it is padding."""
        # transformers renamed past_key_values to cache (5.2x); take what this model's takes
        takes = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in takes else "past_key_values"

    def reset(self) -> None:
        """Drop every row and the cache."""
        self.rows, self.cache, self.mask = [], None, None

    def step(self, states: Sequence[Any], prompts: Mapping[int, Sequence[int]]) -> list[Any]:
        """One token's logits for each state, in order: a row already in the cache decodes its
        last token (``state.token_ids[-1]``), one not yet in it (``id(state)`` in ``prompts``)
        is prefilled with its prompt ids, while rows are free (else its logits are None).
        Returns the rows of the model's logits, on its device."""
        try:
            with self.torch.inference_mode():
                return self._step(states, prompts)
        except BaseException:
            self.reset()
            raise

    def _step(self, states: Sequence[Any], prompts: Mapping[int, Sequence[int]]) -> list[Any]:
        torch = self.torch
        wanted = {id(state) for state in states}
        self._keep([i for i, row in enumerate(self.rows) if id(row) in wanted])
        logits: dict[int, Any] = {}
        if self.rows:
            tokens = torch.tensor([[row.token_ids[-1]] for row in self.rows], device=self.device)
            ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.device)
            mask = torch.cat([self.mask, ones], dim=1)
            positions = (mask.cumsum(-1) - 1)[:, -1:]
            out = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions,
                             use_cache=True, **{self._cache_arg: self.cache})  # fmt: skip
            self.cache, self.mask = out[self._cache_arg], mask
            for row, values in zip(self.rows, out.logits[:, -1], strict=True):
                logits[id(row)] = values
        free = self.max_rows - len(self.rows)
        joining = [state for state in states if id(state) in prompts][:free]
        if joining:
            self._prefill(joining, [prompts[id(state)] for state in joining], logits)
        return [logits.get(id(state)) for state in states]

    def _prefill(
        self, joining: list[Any], prompts: list[Sequence[int]], logits: dict[int, Any]
    ) -> None:
        torch = self.torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, device=self.device)
        mask = torch.zeros((len(prompts), width), dtype=torch.long, device=self.device)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(list(prompt), device=self.device)
            mask[i, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=True)  # fmt: skip
        for state, values in zip(joining, out.logits[:, -1], strict=True):
            logits[id(state)] = values
        if self.cache is None:
            self.cache, self.mask, self.rows = out[self._cache_arg], mask, list(joining)
            return
        self._append(out[self._cache_arg], mask)
        self.rows.extend(joining)

    def _append(self, cache: Any, mask: Any) -> None:
        """The rows of ``cache`` (with their ``mask``) after the engine's, both left-padded to
        the longer of the two."""
        torch = self.torch
        old, new = self.mask.shape[1], mask.shape[1]
        width = max(old, new)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad(mine.keys, width), _pad(theirs.keys, width)], dim=0)
            mine.values = torch.cat([_pad(mine.values, width), _pad(theirs.values, width)], dim=0)
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(mask, width)], dim=0)

    def _keep(self, indices: list[int]) -> None:
        """Keep only these rows, and trim the columns on the left that pad every one of them."""
        if len(indices) == len(self.rows):
            return
        if not indices:
            self.reset()
            return
        torch = self.torch
        index = torch.tensor(indices, device=self.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.mask = mask[:, start:]
        self.rows = [self.rows[i] for i in indices]


def _pad(tensor: Any, width: int) -> Any:
    """``(batch, heads, columns, dim)`` left-padded with zeros to ``width`` columns."""
    missing = width - tensor.shape[2]
    if missing == 0:
        return tensor
    import torch

    zeros = tensor.new_zeros((tensor.shape[0], tensor.shape[1], missing, tensor.shape[3]))
    return torch.cat([zeros, tensor], dim=2)


def _pad_mask(mask: Any, width: int) -> Any:
    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    import torch

    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)
