"""``CharLM``: a real, small character-level language model as a runner.

The model is a Bengio-style MLP over a window of characters: the previous ``context`` characters
(16 in the shipped weights, padded on the left with ``"\\n"``) are embedded and concatenated,
go through two tanh layers (the second with a residual connection), then a softmax over the
vocabulary (``"\\n"`` and printable ASCII; any other character of a prompt becomes ``"?"``)::

    x  = concat(emb[c_{t-K}], ..., emb[c_{t-1}])
    h1 = tanh(x @ w1 + b1)
    h2 = h1 + tanh(h1 @ w2 + b2)
    logits = h2 @ w3 + b3

Its weights (``charlm_weights.npz``, float16, about 1.3 MB) ship as package data; they were
trained by ``scripts/train_charlm.py`` on the docstrings of CPython's standard library (PSF
License), so it writes English-looking prose about Python. Token ids are vocabulary indices,
one per character.

The forward pass (:func:`forward`) is written once against the device's array module ``xp``
(NumPy on a :class:`~trio_supervise.devices.CpuDevice`, CuPy on a
:class:`~trio_supervise.devices.CupyDevice`) and runs through ``device.run_sync``, once per
decoding step for all active requests of all the batches executing at once: decoding is
continuously batched (``runners/_stepping.py``), so a batch that arrives mid-decode joins at
the next step and a long request never holds a short one behind it. Sampling happens on the
host with one ``numpy.random.Generator`` per request, seeded from ``SamplingParams.seed`` (or,
without one, from the request id), so a request gives the same text whatever batch it is in.
(A row's logits depend on the other rows only through floating-point summation order; on the
CPU the weights are float64, which keeps that effect near 1e-14, so a different choice would
need an exact tie between two candidates. On CuPy they are float32.)

It honours every extra sampling field, as vLLM defines them (``runners/_sampling.py``): on the
raw logits ``logit_bias`` (token ids in the vocabulary, else the request fails alone with
``BadRequest``), ``repetition_penalty`` (prompt and output), ``presence_penalty`` and
``frequency_penalty`` (output), then temperature, ``top_k``, ``top_p``, ``min_p``;
``min_tokens``; ``ignore_eos`` changes nothing (no end-of-text token). ``logprobs``: the chosen
character's log probability and the most likely alternatives under the RAW distribution, the
log-softmax of the model's logits before bias, penalties and temperature (vLLM's default).

Example::

    async with trio_supervise.open_worker(
        "trio_supervise.runners.charlm:CharLM", device="cpu"
    ) as worker:
        request = Request("r1", "The ", SamplingParams(max_tokens=80, temperature=0.5, seed=1))
        _, text, _, _ = await worker.generate(request).collect()
"""

from __future__ import annotations

import contextlib
import importlib.resources
import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, final

import attrs
import numpy
import numpy.typing as npt
import trio

from .._errors import BadRequest, ConfigError, RunnerError
from .._types import SAMPLING_EXTRAS, Batch, Chunk, RebuildCause, Request, SamplingParams
from ._sampling import RequestState, request_generator, sample_next
from ._stepping import Stepper

__all__ = [
    "WEIGHTS_FILE",
    "CharLM",
    "CharModel",
    "CharTokenizer",
    "complete",
    "forward",
    "load_weights",
    "request_generator",
    "sample_next",
]

WEIGHTS_FILE = "charlm_weights.npz"
"""The packaged weights, next to this module."""

_TO_ASCII = str.maketrans("\t\u00a0\u2018\u2019\u201c\u201d\u2013\u2014", "  ''\"\"--")
"""Single characters replaced by ASCII ones (as in the training text), one for one."""

_MATRICES = ("emb", "w1", "b1", "w2", "b2", "w3", "b3")


def _index(model: Any) -> dict[str, int]:
    return {c: i for i, c in enumerate(model.vocab)}


def _encode(index: dict[str, int], fallback: int, text: str) -> list[int]:
    return [index.get(c, fallback) for c in text.translate(_TO_ASCII)]


def _check_ids(token_ids: Sequence[int], vocab_size: int, what: str) -> None:
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise BadRequest(f"{what} must be in [0, {vocab_size}) for CharLM's vocabulary, "
                         f"got {bad[:5]}{' ...' if len(bad) > 5 else ''}")  # fmt: skip


@final
@attrs.frozen(eq=False)
class CharTokenizer:
    """CharLM's vocabulary and its window: what :class:`CharModel` reads text with, and what
    :meth:`CharLM.load_tokenizer` gives the server (without the weights)."""

    vocab: str
    """The characters; a token id is an index into it."""
    context: int
    """How many previous characters the model sees."""
    pad: int
    """The token that pads a window on the left (``"\\n"``)."""
    fallback: int
    """The token of characters outside the vocabulary (``"?"``)."""
    index: dict[str, int] = attrs.field(init=False, default=attrs.Factory(_index, takes_self=True))
    """Character to token id."""

    @property
    def vocab_size(self) -> int:
        """The number of tokens."""
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, one per character: a tab becomes a space, typographic quotes
        and dashes their ASCII forms, any other character outside the vocabulary ``"?"``."""
        return _encode(self.index, self.fallback, text)

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of token ids; ``BadRequest`` for one not in ``range(vocab_size)``."""
        _check_ids(token_ids, len(self.vocab), "token ids")
        return "".join(self.vocab[t] for t in token_ids)


@final
@attrs.frozen(eq=False)
class CharModel:
    """Loaded weights (arrays of ``xp``) and the vocabulary (on the host, its
    :class:`CharTokenizer`'s)."""

    xp: Any
    """The array module the weights live in (``numpy`` or ``cupy``)."""
    emb: Any
    """Character embeddings, ``(vocab, embed)``."""
    w1: Any
    """First layer, ``(context * embed, hidden)``."""
    b1: Any
    """Its bias, ``(hidden,)``."""
    w2: Any
    """Second (residual) layer, ``(hidden, hidden)``."""
    b2: Any
    """Its bias, ``(hidden,)``."""
    w3: Any
    """Output layer, ``(hidden, vocab)``."""
    b3: Any
    """Its bias, ``(vocab,)``."""
    tokenizer: CharTokenizer
    """The vocabulary, the window's length and its padding."""

    @property
    def vocab(self) -> str:
        """The characters; a token id is an index into it."""
        return self.tokenizer.vocab

    @property
    def context(self) -> int:
        """How many previous characters the model sees."""
        return self.tokenizer.context

    @property
    def pad(self) -> int:
        """The token that pads a window on the left."""
        return self.tokenizer.pad

    @property
    def fallback(self) -> int:
        """The token of characters outside the vocabulary."""
        return self.tokenizer.fallback

    @property
    def index(self) -> dict[str, int]:
        """Character to token id."""
        return self.tokenizer.index

    @property
    def vocab_size(self) -> int:
        """The number of tokens."""
        return len(self.tokenizer.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (see :meth:`CharTokenizer.encode`)."""
        return self.tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of token ids (see :meth:`CharTokenizer.decode`)."""
        return self.tokenizer.decode(token_ids)

    def prompt_ids(self, prompt: str | tuple[int, ...]) -> list[int]:
        """Token ids of a prompt given as text or as token ids.

        Raises:
            BadRequest: a token id is not in the vocabulary.
        """
        if isinstance(prompt, str):
            return self.encode(prompt)
        _check_ids(prompt, self.vocab_size, "prompt token ids")
        return list(prompt)

    def window(self, token_ids: Sequence[int]) -> list[int]:
        """The last ``context`` tokens, padded on the left."""
        context = self.tokenizer.context
        tail = list(token_ids[-context:]) if token_ids else []
        return [self.tokenizer.pad] * (context - len(tail)) + tail


def _weights_path(weights: str | None) -> Any:
    if weights is not None:
        return pathlib.Path(weights)
    return importlib.resources.files(__package__ or "trio_supervise.runners") / WEIGHTS_FILE


def _read(weights: str | None, matrices: Sequence[str]) -> tuple[str, Any, CharTokenizer]:
    """Where a weights file is, its arrays ``matrices`` (float32) and its tokenizer.

    Raises:
        ConfigError: the file is missing or is not a CharLM weights file.
    """
    source = _weights_path(weights)
    try:
        with importlib.resources.as_file(source) as path, numpy.load(path) as data:
            arrays = {name: numpy.asarray(data[name], numpy.float32) for name in matrices}
            vocab = "".join(chr(int(c)) for c in data["vocab"])
            context, pad, fallback = (int(data[k]) for k in ("context", "pad", "fallback"))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read CharLM weights from {str(source)!r}: {exc}") from exc
    if not (0 <= pad < len(vocab) and 0 <= fallback < len(vocab) and context >= 1):
        raise ConfigError(f"CharLM weights in {str(source)!r} are inconsistent: pad={pad}, "
                          f"fallback={fallback}, context={context}")  # fmt: skip
    return str(source), arrays, CharTokenizer(vocab, context, pad, fallback)


def load_weights(xp: Any, weights: str | None = None, dtype: Any = None) -> CharModel:
    """Read a weights file (default: the packaged one) into ``xp`` arrays of ``dtype``.

    The default ``dtype`` is float64 for NumPy (cheap at this size, and it makes the effect of
    the batch on a row's logits, through summation order, about 1e-13) and float32 otherwise.
    Device work: call it through ``device.run_sync`` so that CuPy's device is current.

    Raises:
        ConfigError: the file is missing or is not a CharLM weights file.
    """
    where, arrays, tokenizer = _read(weights, _MATRICES)
    vocab, context = tokenizer.vocab, tokenizer.context
    try:
        _, embed = arrays["emb"].shape
        (hidden,) = arrays["b1"].shape
    except ValueError as exc:
        raise ConfigError(f"cannot read CharLM weights from {where!r}: {exc}") from exc
    expected = {
        "emb": (len(vocab), embed),
        "w1": (context * embed, hidden),
        "b1": (hidden,),
        "w2": (hidden, hidden),
        "b2": (hidden,),
        "w3": (hidden, len(vocab)),
        "b3": (len(vocab),),
    }
    wrong = [f"{k}: {arrays[k].shape} != {s}" for k, s in expected.items() if arrays[k].shape != s]
    if wrong:
        raise ConfigError(f"CharLM weights in {where!r} are inconsistent: {wrong}")
    if dtype is None:
        dtype = numpy.float64 if xp is numpy else numpy.float32
    on_device = {name: xp.asarray(array, dtype=dtype) for name, array in arrays.items()}
    return CharModel(xp, **on_device, tokenizer=tokenizer)


def forward(xp: Any, model: CharModel, windows: Any) -> Any:
    """Logits ``(n, vocab)`` for ``n`` windows of token ids ``(n, context)``, as ``xp`` arrays.

    Written once for NumPy and CuPy: only ``xp`` functions and array methods.
    """
    ids = xp.asarray(windows)
    x = model.emb[ids].reshape(ids.shape[0], -1)
    h1 = xp.tanh(x @ model.w1 + model.b1)
    h2 = h1 + xp.tanh(h1 @ model.w2 + model.b2)
    return h2 @ model.w3 + model.b3


def _host_logits(model: CharModel, windows: npt.NDArray[numpy.int64]) -> npt.NDArray[numpy.float64]:
    """One decoding step on the device, logits copied back to the host as float64."""
    xp = model.xp
    logits = forward(xp, model, windows)
    to_host = getattr(xp, "asnumpy", numpy.asarray)
    return numpy.asarray(to_host(logits), dtype=numpy.float64)


def complete(
    model: CharModel,
    prompt: str,
    max_chars: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    **extras: Any,
) -> str:
    """Generate ``max_chars`` characters after ``prompt`` synchronously, one request alone (for
    scripts; a worker uses :class:`CharLM`). Same result as the runner for the same request;
    ``extras`` are more :class:`SamplingParams` fields (``top_k=5``, ``stop=(".",)``, ...)."""
    params = SamplingParams(max_chars, temperature, top_p, seed=seed, **extras)
    request = Request("complete", prompt, params)
    state = RequestState.start(request, model.encode(prompt), model.vocab_size, "CharLM")
    while True:
        windows = numpy.array([model.window(state.token_ids)], dtype=numpy.int64)
        if state.advance(model.vocab, _host_logits(model, windows)[0]).final:
            return state.text


class CharLM:
    """The character-level language model as a runner (see the module docstring).

    Args:
        weights: path of a weights file written by ``scripts/train_charlm.py``; default: the
            packaged ``charlm_weights.npz``.
        max_concurrency: batches the worker may run at once. They decode together, one forward
            pass per step for all their requests, and a batch that arrives joins the running
            decode at the next step. The default, 8, is what lets a short request overtake a
            long one: with 1, the worker starts no batch until the running one has finished
            all its requests, so one request with a huge ``max_tokens`` holds the replica (the
            server's built-in configuration runs this runner with its defaults).
    """

    default_policy = None
    needs_device = True
    deterministic = True  # one generator per request, from its seed: the batch does not matter
    max_model_len = 4096
    """The most tokens (prompt plus completion) a request may have; a request over it fails
    alone with ``BadRequest``."""
    sampling_fields = frozenset(SAMPLING_EXTRAS)
    """It honours every extra sampling field (``ignore_eos`` trivially: no end-of-text token)."""

    def __init__(self, *, weights: str | None = None, max_concurrency: int = 8) -> None:
        self.weights = weights
        self.max_concurrency = max_concurrency
        self.model: CharModel | None = None
        self.device: Any = None
        self._stepper = Stepper(self._step)

    @classmethod
    def load_tokenizer(cls, *, weights: str | None = None, **_ignored: Any) -> CharTokenizer:
        """The tokenizer of ``weights`` (default: the packaged file), from its vocabulary only;
        other runner arguments are ignored. Blocking. ``ConfigError`` if it cannot be read."""
        return _read(weights, ())[2]

    def __repr__(self) -> str:
        state = "loaded" if self.model is not None else "not loaded"
        return f"<CharLM {state} on {getattr(self.device, 'name', None)}>"

    async def load(self, device: Any) -> None:
        """Read the weights and move them to ``device.xp`` arrays (in ``device.run_sync``).

        Raises:
            ConfigError: the weights file is missing or malformed.
        """
        self.model = await device.run_sync(load_weights, device.xp, self.weights)
        self.device = device

    async def execute(self, batch: Batch) -> AsyncIterator[Chunk]:
        """Decode the batch's requests together with those of the other batches executing:
        per step one forward pass over all active ones, then one chunk per request (its token
        and character, with ``logprobs`` where asked). A request ends with ``STOP`` when its
        text ends with a stop sequence (after ``min_tokens``), with ``LENGTH`` at
        ``max_tokens``; one whose prompt or ``logit_bias`` has an invalid token id, or whose
        prompt and ``max_tokens`` exceed :attr:`max_model_len`, fails alone with
        ``BadRequest``."""
        model = self.model
        if model is None or self.device is None:
            raise RunnerError("CharLM.execute was called before load (or after aclose)")
        active: list[RequestState] = []
        for request in batch.requests:
            try:
                ids = self._prompt_ids(model, request)
                state = RequestState.start(request, ids, model.vocab_size, "CharLM")
            except BadRequest as exc:
                yield Chunk(request.id, error=exc)
                continue
            active.append(state)
        async with contextlib.aclosing(self._stepper.stream(batch, active)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _prompt_ids(self, model: CharModel, request: Request) -> list[int]:
        ids = model.prompt_ids(request.prompt)
        max_tokens = request.params.max_tokens
        if len(ids) + max_tokens > self.max_model_len:
            raise BadRequest(
                f"a request may have at most max_model_len={self.max_model_len} tokens (prompt "
                f"plus completion), got {len(ids)} prompt tokens + max_tokens={max_tokens} = "
                f"{len(ids) + max_tokens}"
            )
        return ids

    async def _step(self, states: list[RequestState]) -> list[Chunk]:
        """One forward pass over every state's window, then one sampled token each."""
        model, device = self.model, self.device
        if model is None or device is None:
            raise RunnerError("CharLM was closed while decoding")
        windows = numpy.array([model.window(state.token_ids) for state in states], numpy.int64)
        logits = await device.run_sync(_host_logits, model, windows)
        vocab = model.vocab
        return [state.advance(vocab, row) for state, row in zip(states, logits, strict=True)]

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Nothing to rebuild: the model keeps no session state (a checkpoint)."""
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Drop the weights (a CuPy pool frees them when the device closes)."""
        self.model = None
        await trio.lowlevel.checkpoint()
