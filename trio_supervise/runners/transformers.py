"""``TransformersRunner``: a Hugging Face ``transformers`` causal language model as a runner.

Install the extra first: ``pip install 'trio-supervise[transformers]'`` (PyTorch and
``transformers``; without them, loading the runner, or its tokenizer, is a ``ConfigError``
that names the extra: they are imported then, off the event loop).

Point it at a model: a local directory (``save_pretrained``'s), or a name the Hugging Face cache
or hub resolves. ``load(device)`` loads the model and its tokenizer in the runner's own thread,
onto the device the worker gave it: the same CUDA device where the ``DeviceContext`` is a GPU
(``cuda:N``), else the CPU. Every forward pass runs in that thread too, so the event loop stays
responsive while the model computes.

Decoding is batched continuously (``runners/_stepping.py`` and ``runners/_torch_engine.py``):
each step is one forward pass over every active request of every batch executing, with a KV
cache; a batch that arrives mid-decode is prefilled and joins at the next step, a request that
ends or is cancelled leaves its row, and the rest of its batch goes on. Each request samples on
the host from the float64 logits of its own row, with its own seeded generator and the same code
as ``CharLM`` (temperature, ``top_p``, ``top_k``, ``min_p``, ``logit_bias``, the penalties;
``runners/_sampling.py``), streamed token by token with incremental detokenization (a character
split over tokens is sent once whole). It ends at ``max_tokens``, at the model's end-of-text token
(unless ``ignore_eos``; never before ``min_tokens``) or at a stop sequence. Log probabilities are
the raw distribution's (the log-softmax of the model's logits).

Honest determinism: a request's logits depend on its batch through floating-point summation
order (padding, batched matrix products), so a different token can win a near tie; the runner
does not say ``deterministic``, and a stream cut by a failure is continued with
``continuation="resume"`` (the prompt plus what was delivered), not replayed.

Errors: ``torch.cuda.OutOfMemoryError`` is :class:`OutOfMemory` (the cache is freed, the step's
requests fail, the model stays); PyTorch's sticky CUDA errors are :class:`ContextPoisoned`
(``classify_cuda_error``): the worker restarts the tier, in a fresh process under
``isolation="process"``.

Example ``[[workers]]`` table::

    [[workers]]
    name = "tiny"
    runner = "trio_supervise.runners.transformers:TransformersRunner"
    runner_args = { model = "/models/tiny-llama", dtype = "float32" }
    isolation = "process"
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, final

import attrs
import numpy
import trio

from .._errors import BadRequest, ConfigError, OutOfMemory, RunnerError
from .._types import (
    SAMPLING_EXTRAS,
    Batch,
    Chunk,
    FinishReason,
    RebuildCause,
    Request,
    Usage,
)
from ..devices._cuda_errors import classify_cuda_error
from ._model_thread import ModelThread
from ._sampling import (
    LogitsProcessor,
    check_logit_bias,
    pick_token,
    request_generator,
    token_logprob,
)
from ._stepping import Stepper, ending
from ._torch_engine import Engine

__all__ = ["DTYPES", "Detokenizer", "ModelTokenizer", "TransformersRunner"]

EXTRA = "pip install 'trio-supervise[transformers]'"

DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")
"""The ``dtype`` values a runner takes (``"auto"``: the model's own)."""


def _imports() -> tuple[Any, Any]:
    """``(torch, transformers)``, or a ConfigError that names the extra."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ConfigError(
            f"TransformersRunner needs PyTorch and transformers ({exc}): {EXTRA}"
        ) from None
    return torch, transformers


def _check_count(name: str, value: object, *, optional: bool = False) -> None:
    """An argument that is an int >= 1 (or None where ``optional``), else a ConfigError."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        accepted = "an int >= 1 or None" if optional else "an int >= 1"
        raise ConfigError(f"TransformersRunner {name} must be {accepted}, got {value!r}")


@final
class Detokenizer:
    """One request's output text, token by token, as a client may see it: a token whose bytes
    end inside a character gives no text until the character is whole (vLLM's and TGI's way:
    decode a short window again, and send what it adds)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # the window's start: its text was sent
        self._read = 0  # where the text sent so far ends, in ids

    def add(self, token: int, *, last: bool = False) -> str:
        """The text ``token`` completes (``""`` while a character is split); ``last``: the
        output ends here, send what is left even if incomplete."""
        self.ids.append(token)
        decode = self.tokenizer.decode
        sent = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        window = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(window) > len(sent) and (last or not window.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self.ids)
            return str(window[len(sent) :])
        return ""


def _hf_tokenizer(transformers: Any, model: str, trust_remote_code: bool) -> Any:
    try:
        return transformers.AutoTokenizer.from_pretrained(
            model, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {model!r}: {exc}") from exc


@final
class ModelTokenizer:
    """A model's ``transformers`` tokenizer as the server uses it: ``encode`` as the runner
    encodes a completion's prompt (special tokens added), ``decode``, the size of the whole
    vocabulary (added tokens too), the chat template, and the model's length."""

    def __init__(self, tokenizer: Any, max_model_len: int | None) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        """The model config's ``max_position_embeddings`` (or the runner's argument)."""
        self.chat_template = tokenizer.chat_template

    @property
    def vocab_size(self) -> int:
        """Every token id is below it (added tokens counted)."""
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, special tokens added (as the runner encodes a completion)."""
        return list(self.tokenizer.encode(text))

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of token ids."""
        return str(self.tokenizer.decode(list(token_ids)))

    def apply_chat_template(self, messages: list[dict[str, str]], **options: Any) -> Any:
        """The tokenizer's own (``tokenize=False`` gives the text)."""
        return self.tokenizer.apply_chat_template(messages, **options)


@attrs.define(eq=False)
class _Decoding:
    """One request being decoded."""

    request: Request
    prompt_ids: list[int]
    token_ids: list[int]
    """Its prompt's and its output's so far (the engine reads the last)."""
    rng: numpy.random.Generator
    processor: LogitsProcessor | None
    detokenizer: Detokenizer
    text: str = ""
    completion_tokens: int = 0
    started: bool = False
    """Prefilled: the engine holds its row."""


class TransformersRunner:
    """A ``transformers`` causal language model as a runner (see the module docstring).

    Args:
        model: a local directory, or a name the Hugging Face cache or hub resolves.
        dtype: the weights' type: ``"auto"`` (the model's), ``"float32"``, ``"float16"``,
            ``"bfloat16"`` or ``"float64"``.
        max_batch_size: the most requests decoded at once (rows of the KV cache); the others
            of the batches executing wait for a free row, first come first served.
        max_model_len: the most tokens (prompt plus completion) a request may have; default:
            the model config's ``max_position_embeddings``.
        trust_remote_code: run code that ships with the model (off unless you trust it).
        threads: PyTorch's threads for the model's work on the CPU (``torch.set_num_threads``
            in the model's thread); None: PyTorch's default, one per core. On a machine busy
            with other work, PyTorch's threads spin waiting for each other, many times slower:
            1 (or fewer than the cores) leaves the CPU to the rest.
        max_concurrency: batches the worker may run at once; they decode together, one forward
            pass per step, and a batch that arrives joins at the next step.
    """

    default_policy = None
    needs_device = True
    deterministic = False  # a batch changes the last bits of a row's logits: see the docstring
    sampling_fields = frozenset(SAMPLING_EXTRAS)

    def __init__(
        self,
        *,
        model: str,
        dtype: str = "auto",
        max_batch_size: int = 8,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        max_concurrency: int = 8,
        threads: int | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError(f"TransformersRunner model must be a path or a name, got {model!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"TransformersRunner dtype must be one of {DTYPES}, got {dtype!r}")
        _check_count("max_model_len", max_model_len, optional=True)
        _check_count("max_batch_size", max_batch_size)
        _check_count("threads", threads, optional=True)
        if not isinstance(trust_remote_code, bool):
            raise ConfigError(f"trust_remote_code must be a bool, got {trust_remote_code!r}")
        self.torch: Any = None  # imported by load, in the model's thread: importing
        self.transformers: Any = None  # PyTorch takes seconds, which the event loop must not wait
        self.model_name = model
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.threads = threads
        self.max_model_len = max_model_len
        self.trust_remote_code = trust_remote_code
        self.max_concurrency = max_concurrency
        self.model: Any = None
        self.tokenizer: Any = None
        self.engine: Engine | None = None
        self.eos_ids: frozenset[int] = frozenset()
        self.vocab_size = 0
        self._thread = ModelThread(f"model {model}")  # every call on one thread, in order
        self._stepper = Stepper(self._step)

    def __repr__(self) -> str:
        state = "loaded" if self.model is not None else "not loaded"
        return f"<TransformersRunner {self.model_name!r} {state}>"

    @classmethod
    def load_tokenizer(
        cls,
        *,
        model: str,
        trust_remote_code: bool = False,
        max_model_len: int | None = None,
        **_ignored: Any,
    ) -> ModelTokenizer:
        """The model's tokenizer, for the server (``/tokenize``, chat templates, prompt
        lengths), with the model's length. Blocking.

        Raises:
            ConfigError: the tokenizer or the model's config cannot be loaded.
        """
        _, transformers = _imports()
        tokenizer = _hf_tokenizer(transformers, model, trust_remote_code)
        if max_model_len is None:
            try:
                config = transformers.AutoConfig.from_pretrained(
                    model, trust_remote_code=trust_remote_code
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load the config of {model!r}: {exc}") from exc
            length = getattr(config, "max_position_embeddings", None)
            max_model_len = length if isinstance(length, int) else None
        return ModelTokenizer(tokenizer, max_model_len)

    async def load(self, device: Any) -> None:
        """Load the tokenizer and the model in the runner's thread, onto ``device``'s GPU or the
        CPU.

        Raises:
            ConfigError: the model or its tokenizer cannot be loaded.
        """
        name = getattr(device, "name", "cpu")
        where = name if isinstance(name, str) and name.startswith("cuda") else "cpu"
        await self._thread.run(self._load, where)

    def _load(self, where: str) -> None:
        self.torch, self.transformers = _imports()
        torch, transformers = self.torch, self.transformers
        if self.threads is not None:  # this thread's: every call of the model runs on it
            torch.set_num_threads(self.threads)
        self.tokenizer = _hf_tokenizer(self.transformers, self.model_name, self.trust_remote_code)
        dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                self.model_name, dtype=dtype, trust_remote_code=self.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the model {self.model_name!r}: {exc}") from exc
        device = torch.device(where)
        self.model = model.to(device).eval()
        config = model.config
        if self.max_model_len is None:
            self.max_model_len = int(getattr(config, "max_position_embeddings", 2048))
        head = model.get_output_embeddings()  # its rows: the logits' width
        self.vocab_size = int(head.weight.shape[0] if head is not None else config.vocab_size)
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or ()))
        pad = self.tokenizer.pad_token_id
        pad_id = pad if isinstance(pad, int) else 0
        self.engine = Engine(self.model, device, pad_id, self.max_batch_size)

    async def execute(self, batch: Batch) -> AsyncIterator[Chunk]:
        """Decode the batch's requests together with those of the other batches executing
        (see the module docstring); a request whose prompt is bad, or too long with its
        ``max_tokens``, fails alone with ``BadRequest``."""
        if self.engine is None:
            raise RunnerError("TransformersRunner.execute was called before load")
        active: list[_Decoding] = []
        # tokenizing a long prompt takes a while: in the model's thread, not the event loop's
        for request, started in await self._thread.run(self._start_all, batch.requests):
            if isinstance(started, BadRequest):
                yield Chunk(request.id, error=started)
            else:
                active.append(started)
        async with contextlib.aclosing(self._stepper.stream(batch, active)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _start_all(
        self, requests: Sequence[Request]
    ) -> list[tuple[Request, _Decoding | BadRequest]]:
        started: list[tuple[Request, _Decoding | BadRequest]] = []
        for request in requests:
            try:
                started.append((request, self._start(request)))
            except BadRequest as exc:
                started.append((request, exc))
        return started

    def _start(self, request: Request) -> _Decoding:
        prompt = request.prompt
        if isinstance(prompt, str):
            # a chat's prompt is its template's rendering, special tokens included
            ids = list(self.tokenizer.encode(prompt, add_special_tokens=not request.messages))
        else:
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise BadRequest(
                    f"prompt token ids must be in [0, {self.vocab_size}) for "
                    f"{self.model_name!r}, got {bad[:5]}"
                )
        if not ids:
            raise BadRequest(f"the prompt of request {request.id!r} has no tokens")
        params = request.params
        limit = self.max_model_len or 0
        if len(ids) + params.max_tokens > limit:
            raise BadRequest(
                f"a request may have at most max_model_len={limit} tokens (prompt plus "
                f"completion), got {len(ids)} prompt tokens + max_tokens={params.max_tokens}"
            )
        check_logit_bias(params, self.vocab_size, repr(self.model_name))
        processor = LogitsProcessor.for_request(params, self.vocab_size, ids)
        return _Decoding(request, ids, list(ids), request_generator(request), processor,
                         Detokenizer(self.tokenizer))  # fmt: skip

    async def _step(self, states: list[_Decoding]) -> list[Chunk | None]:
        """One forward pass and one sampled token for each state, in the model's thread (a
        thread that is never abandoned: the step finishes, then a cancellation is seen)."""
        return await self._thread.run(self._step_sync, states)

    def _step_sync(self, states: list[_Decoding]) -> list[Chunk | None]:
        engine = self.engine
        if engine is None:
            raise RunnerError("TransformersRunner was closed while decoding")
        prompts = {id(s): s.prompt_ids for s in states if not s.started}
        try:
            rows = engine.step(states, prompts)
        except self.torch.cuda.OutOfMemoryError as exc:
            self.torch.cuda.empty_cache()
            raise OutOfMemory(f"{self.model_name!r} ran out of GPU memory: {exc}") from exc
        except RuntimeError as exc:
            mapped = classify_cuda_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        # A plain greedy row needs only its argmax, taken on the device for all of them at
        # once; the others are copied to the host as float64 and sampled there.
        torch = self.torch
        done = [i for i, row in enumerate(rows) if row is not None]
        greedy = [i for i in done if self._plain_greedy(states[i])]
        sampled = [i for i in done if not self._plain_greedy(states[i])]
        picked: dict[int, int] = {}
        if greedy:
            best = torch.stack([rows[i] for i in greedy]).argmax(dim=-1).tolist()
            picked = dict(zip(greedy, best, strict=True))
        host: dict[int, Any] = {}
        if sampled:
            values = torch.stack([rows[i] for i in sampled]).to("cpu", torch.float64).numpy()
            host = dict(zip(sampled, values, strict=True))
        chunks: list[Chunk | None] = []
        for i, state in enumerate(states):
            if rows[i] is None:  # the batch is full: it waits for a free row
                chunks.append(None)
                continue
            state.started = True
            chunks.append(self._advance(state, host.get(i), picked.get(i)))
        return chunks

    def _plain_greedy(self, state: _Decoding) -> bool:
        """Temperature 0 on the raw logits: no processor, no log probabilities, no end of text
        held back."""
        params = state.request.params
        return (
            params.temperature == 0 and state.processor is None and params.logprobs is None
            and not (params.min_tokens > state.completion_tokens and self.eos_ids)
        )  # fmt: skip

    def _advance(self, state: _Decoding, logits: Any, token: int | None = None) -> Chunk:
        """Sample the state's next token from its row of raw logits (or take ``token``, a plain
        greedy row's argmax); its chunk."""
        request = state.request
        params = request.params
        if token is None:
            token = self._sample(state, logits)
        state.token_ids.append(token)
        state.completion_tokens += 1
        produced = state.completion_tokens
        at_eos = token in self.eos_ids and not params.ignore_eos
        near_end = at_eos or produced >= params.max_tokens
        text = state.detokenizer.add(token, last=near_end)
        state.text += text
        # the end of text (never before min_tokens: masked above), or stop, or max_tokens
        reason = FinishReason.STOP if at_eos else ending(state.text, produced, params, len(text))
        usage = None if reason is None else Usage(len(state.prompt_ids), produced)
        logprobs = None
        if params.logprobs is not None:
            logprobs = (token_logprob(self._token_text, logits, token, params.logprobs),)
        return Chunk(request.id, (token,), text, reason, usage, logprobs=logprobs)

    def _sample(self, state: _Decoding, logits: Any) -> int:
        params = state.request.params
        early = params.min_tokens > state.completion_tokens  # no end of text before min_tokens
        banned = tuple(self.eos_ids) if early else ()
        return pick_token(params, state.rng, state.processor, logits, banned)

    def _token_text(self, token: int) -> str:
        return str(self.tokenizer.decode([token]))

    async def rebuild_session(self, cause: RebuildCause) -> None:
        """Nothing to rebuild: the model keeps no session state."""
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Drop the model (and, on a GPU, PyTorch's cached blocks), in the model's thread."""
        try:
            await self._thread.run(self._close)
        finally:
            self._thread.close()

    def _close(self) -> None:
        self.engine = None
        self.model = None
        if self.torch is not None and self.torch.cuda.is_available():
            self.torch.cuda.empty_cache()
