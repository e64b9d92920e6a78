"""TransformersRunner on tiny models (GPT-2 and Llama, built here, fitted a few steps to a few
sentences): greedy output equals ``model.generate``'s alone, in a batch and with batches joining
mid-decode; seeds; stop strings, the end of text and ``max_tokens``; a request cancelled out of
its batch; incremental detokenization; log probabilities against an independent forward pass;
the sampling fields; bad prompts; faults through FaultyRunner and in a child process; the
classification of PyTorch's CUDA errors.

On the real clock (the model computes in a thread): every wait is for an output or an event.
Weights are float64, so a request's logits in a batch equal its logits alone to the last bits
that matter, and greedy outputs compare exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import trio_supervise as ts  # noqa: E402
from trio_supervise import Batch, Chunk, FinishReason, Request, SamplingParams, Usage  # noqa: E402
from trio_supervise._types import SAMPLING_EXTRAS  # noqa: E402
from trio_supervise.devices import CpuDevice  # noqa: E402
from trio_supervise.runners.transformers import Detokenizer, TransformersRunner  # noqa: E402
from trio_supervise.testing import Fault, FaultPlan  # noqa: E402
from trio_supervise.tier._runner import runner_sampling_fields  # noqa: E402

RUNNER = "trio_supervise.runners.transformers:TransformersRunner"
FAULTY = "trio_supervise.testing:FaultyRunner"
FAMILIES = ("gpt2", "llama")
TRAIN_STEPS = 30
PROMPT = "The worker restarts"
VOCAB = 320  # the tiny tokenizer's (tests/support/tiny_models.py)
EOS = 0


# --- the tiny models and their references ---------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """PyTorch on one thread here (for the runner's thread too): a tiny model gains nothing from
    more, and PyTorch's threads spin against each other on a busy machine, many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tiny:
    """The module's tiny models, each built once when first asked for, with a reference copy
    (the model as ``transformers`` loads it, float64) and its tokenizer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._paths: dict[str, Path] = {}
        self._models: dict[str, Any] = {}
        self.tokenizer: Any = None

    def path(self, family: str) -> Path:
        if family not in self._paths:
            from tests.support.tiny_models import tiny_model

            self._paths[family] = tiny_model(self.root / family, family, train_steps=TRAIN_STEPS)
            if self.tokenizer is None:  # the same tokenizer for every family
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(self._paths[family])
        return self._paths[family]

    def model(self, family: str) -> Any:
        if family not in self._models:
            path = self.path(family)
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
            self._models[family] = model.eval()
        return self._models[family]

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:  # no model built yet
            self.path("gpt2")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer().encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer().decode(list(ids), skip_special_tokens=True))

    def greedy(
        self, family: str, prompt: str | Sequence[int], n: int, eos: bool = False
    ) -> list[int]:
        """``model.generate``'s greedy continuation: ``n`` tokens, or up to the end of text
        (included) with ``eos``."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        inputs = torch.tensor([ids])
        with torch.inference_mode():
            out = self.model(family).generate(
                inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                max_new_tokens=n, pad_token_id=EOS, eos_token_id=EOS if eos else None,
            )  # fmt: skip
        return [int(t) for t in out[0, len(ids) :]]

    def log_softmax(self, family: str, ids: Sequence[int]) -> Any:
        """The log-softmax of the model's logits for the token after ``ids``: one forward pass
        over all of them, no cache, no batch."""
        with torch.inference_mode():
            logits = self.model(family)(input_ids=torch.tensor([list(ids)])).logits[0, -1]
        return torch.log_softmax(logits.to(torch.float64), dim=-1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(tmp_path_factory.mktemp("tiny"))


# --- helpers --------------------------------------------------------------------------------------


def req(
    rid: str, prompt: str | tuple[int, ...] = PROMPT, max_tokens: int = 16, **kw: Any
) -> Request:
    """A request, greedy unless told otherwise."""
    kw.setdefault("temperature", 0.0)
    continuation = kw.pop("continuation", "auto")
    return Request(rid, prompt, SamplingParams(max_tokens, **kw), continuation=continuation)


async def loaded(path: Path, **kwargs: Any) -> TransformersRunner:
    runner = TransformersRunner(model=str(path), dtype="float64", **kwargs)
    await runner.load(CpuDevice())
    return runner


async def run_batch(runner: TransformersRunner, *requests: Request) -> dict[str, list[Chunk]]:
    out: dict[str, list[Chunk]] = {r.id: [] for r in requests}
    with trio.fail_after(60):
        async for chunk in runner.execute(Batch(requests)):
            out[chunk.request_id].append(chunk)
    return out


def tokens(chunks: list[Chunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def on_worker(path: Path, **runner_args: Any) -> dict[str, Any]:
    return {"runner_args": {"model": str(path), "dtype": "float64", **runner_args}, "device": "cpu"}


class Read:
    """What one consumer read of a stream."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.text = ""
        self.reasons: list[FinishReason] = []
        self.usage: Usage | None = None
        self.error: BaseException | None = None


async def read(stream: ts.RequestStream) -> Read:
    got = Read()
    try:
        async with stream:
            async for chunk in stream:
                got.tokens.extend(chunk.token_ids)
                got.text += chunk.text
                if chunk.finish_reason is not None:
                    got.reasons.append(chunk.finish_reason)
                got.usage = chunk.usage or got.usage
    except ts.InferenceError as exc:
        got.error = exc
    return got


async def read_all(streams: Sequence[ts.RequestStream]) -> dict[str, Read]:
    results: dict[str, Read] = {}

    async def one(stream: ts.RequestStream) -> None:
        results[stream.request.id] = await read(stream)

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(one, stream)
    return results


# --- 1. greedy output equals model.generate's -----------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
async def test_greedy_output_through_a_worker_equals_generate(tiny: Tiny, family: str) -> None:
    path = tiny.path(family)
    prompt_tokens = len(tiny.encode(PROMPT))
    with trio.fail_after(60):
        async with ts.open_worker(RUNNER, **on_worker(path)) as worker:
            free = await read(worker.generate(req("free", PROMPT, 24, ignore_eos=True)))
            ended = await read(worker.generate(req("eos", PROMPT, 40)))
            assert worker.generation == 1
    expected = tiny.greedy(family, PROMPT, 24)
    assert free.error is None and free.tokens == expected
    assert (free.text, free.reasons) == (tiny.decode(expected), [FinishReason.LENGTH])
    assert free.usage == Usage(prompt_tokens, 24)
    # Without ignore_eos, the end of text ends it (the token is in the ids, not in the text).
    until_eos = tiny.greedy(family, PROMPT, 40, eos=True)
    assert ended.tokens == until_eos and ended.text == tiny.decode(until_eos)
    reason = FinishReason.STOP if until_eos[-1] == EOS else FinishReason.LENGTH
    assert ended.reasons == [reason] and ended.usage == Usage(prompt_tokens, len(until_eos))
    if family == "gpt2":  # the fitted GPT-2 ends its sentence: the end of text is exercised
        assert until_eos[-1] == EOS and len(until_eos) < 40


MIXED = [  # (prompt, max_tokens, ignore_eos): prompts of 1 to 20-odd tokens
    ("x", 9, True),
    (PROMPT, 40, False),
    ("A supervisor decides: resume, restart, stop or escalate. Tokens", 17, True),
    ("Unicode too: caf", 30, True),
    ("The", 1, True),
    ("Tokens flow through", 25, False),
    ("the stream goes on.", 12, True),
    ("A", 33, True),
]


@pytest.mark.parametrize("family", FAMILIES)
async def test_eight_mixed_requests_in_one_batch_each_equal_generate(
    tiny: Tiny, family: str
) -> None:
    path = tiny.path(family)
    requests = [
        req(f"r{i}", prompt, n, ignore_eos=ignore) for i, (prompt, n, ignore) in enumerate(MIXED)
    ]
    requests[6] = req("r6", tuple(tiny.encode(MIXED[6][0])), 12, ignore_eos=True)  # token ids
    with trio.fail_after(60):
        async with ts.open_worker(RUNNER, **on_worker(path)) as worker:
            results = await read_all(worker.submit(Batch(requests)))
            assert worker.statistics().batches == 1
    for (prompt, n, ignore), request in zip(MIXED, requests, strict=True):
        got = results[request.id]
        expected = tiny.greedy(family, prompt, n, eos=not ignore)
        assert got.error is None, (request.id, got.error)
        assert got.tokens == expected, request.id
        assert got.text == tiny.decode(expected), request.id
        assert got.usage == Usage(len(tiny.encode(prompt)), len(expected)), request.id


async def test_batches_that_arrive_mid_decode_join_it_and_finish_first(tiny: Tiny) -> None:
    family = "llama"
    path = tiny.path(family)
    long = req("long", PROMPT, 80, ignore_eos=True)
    # One prompt longer than the long request's cache when it joins, one shorter: both
    # paddings of the cache are exercised; then a third batch joins the two.
    wide = req(
        "wide", "A supervisor decides: resume, restart, stop or escalate.", 6, ignore_eos=True
    )
    narrow = req("narrow", "x", 4, ignore_eos=True)
    third = req("third", "Unicode too: caf", 5, ignore_eos=True)
    finished: list[str] = []
    long_read = Read()
    with trio.fail_after(60):
        async with ts.open_worker(RUNNER, **on_worker(path)) as worker:
            decoding = trio.Event()

            async def read_long(stream: ts.RequestStream) -> None:
                async with stream:
                    async for chunk in stream:
                        long_read.tokens.extend(chunk.token_ids)
                        if len(long_read.tokens) >= 4:
                            decoding.set()
                finished.append("long")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_long, worker.generate(long))
                await decoding.wait()
                first = worker.submit(Batch([wide, narrow]))
                second = worker.submit(Batch([third]))
                shorts = await read_all([*first, *second])
                finished.append("shorts")
            assert worker.statistics().batches == 3
    # The short ones finished while the long one decoded; every output is generate's.
    assert finished == ["shorts", "long"]
    assert len(long_read.tokens) == 80
    assert long_read.tokens == tiny.greedy(family, PROMPT, 80)
    for request in (wide, narrow, third):
        assert isinstance(request.prompt, str)
        expected = tiny.greedy(family, request.prompt, request.params.max_tokens)
        assert shorts[request.id].tokens == expected, request.id


# --- 2. seeds -------------------------------------------------------------------------------------


async def test_a_seed_gives_the_same_tokens_and_another_seed_others(tiny: Tiny) -> None:
    runner = await loaded(tiny.path("gpt2"))
    sampled = {"temperature": 1.0, "ignore_eos": True}
    first = await run_batch(runner, req("a", PROMPT, 24, seed=7, **sampled))
    again = await run_batch(
        runner, req("other", "x", 5, seed=1, **sampled), req("a", PROMPT, 24, seed=7, **sampled)
    )
    reseeded = await run_batch(runner, req("a", PROMPT, 24, seed=8, **sampled))
    assert len(tokens(first["a"])) == 24
    assert tokens(again["a"]) == tokens(first["a"]) and text(again["a"]) == text(first["a"])
    assert tokens(reseeded["a"]) != tokens(first["a"])
    # No seed: the request's id seeds it, the same every time.
    unseeded = [
        tokens((await run_batch(runner, req("u", PROMPT, 24, **sampled)))["u"]) for _ in "12"
    ]
    assert unseeded[0] == unseeded[1]
    await runner.aclose()


# --- 3. stop strings, the end of text, max_tokens, usage ------------------------------------------


async def test_stop_strings_the_end_of_text_and_max_tokens(tiny: Tiny) -> None:
    runner = await loaded(tiny.path("gpt2"))
    prompt_tokens = len(tiny.encode(PROMPT))
    free = await run_batch(runner, req("free", PROMPT, 30, ignore_eos=True))
    free_text = text(free["free"])
    stop = free_text[12:16]  # a stop string that ends inside a token
    assert "\ufffd" not in free_text[:16] and free_text.index(stop) == 12
    out = await run_batch(
        runner,
        req("stop", PROMPT, 30, ignore_eos=True, stop=("@@@", stop)),
        req("length", "A supervisor", 7),
        req("eos", PROMPT, 40),
    )
    stopped = out["stop"]
    last = stopped[-1]
    assert last.finish_reason is FinishReason.STOP
    assert all(c.finish_reason is None for c in stopped[:-1])
    assert tokens(stopped) == tokens(free["free"])[: len(stopped)]
    got = text(stopped)
    # The runner keeps the stop string: it ends within the text of the last token.
    assert free_text.startswith(got) and got.index(stop) == 12
    assert stop in got[-(len(stop) + len(last.text) - 1) :] and stop not in text(stopped[:-1])
    assert last.usage == Usage(prompt_tokens, len(stopped)) and len(stopped) < 30
    # max_tokens: LENGTH, the usage on the last chunk only.
    length = out["length"]
    assert [c.finish_reason for c in length] == [None] * 6 + [FinishReason.LENGTH]
    assert [c.usage for c in length] == [None] * 6 + [Usage(len(tiny.encode("A supervisor")), 7)]
    # The end of text: STOP, its token in the ids but not in the text.
    eos = out["eos"]
    assert tokens(eos) == tiny.greedy("gpt2", PROMPT, 40, eos=True) and tokens(eos)[-1] == EOS
    assert eos[-1].finish_reason is FinishReason.STOP and eos[-1].text == ""
    assert eos[-1].usage == Usage(prompt_tokens, len(eos)) and "endoftext" not in text(eos)
    await runner.aclose()


# --- 4. a request cancelled out of its batch ------------------------------------------------------


async def test_a_request_cancelled_out_of_its_batch_leaves_the_others_as_without_it(
    tiny: Tiny,
) -> None:
    path = tiny.path("llama")
    a = req("a", PROMPT, 60, ignore_eos=True)
    b = req("b", "A supervisor", 20, ignore_eos=True)
    c = req("c", "Unicode too: caf", 14, temperature=0.9, seed=3, ignore_eos=True)
    with trio.fail_after(60):
        async with ts.open_worker(RUNNER, **on_worker(path)) as worker:
            without = await read_all(worker.submit(Batch([b, c])))
            left = Read()
            stream_a, stream_b, stream_c = worker.submit(Batch([a, b, c]))
            async with trio.open_nursery() as nursery:

                async def leave_early() -> None:
                    async with stream_a:  # its end closes the stream: a is cancelled
                        async for chunk in stream_a:
                            left.tokens.extend(chunk.token_ids)
                            if len(left.tokens) >= 3:
                                break

                nursery.start_soon(leave_early)
                rest = await read_all([stream_b, stream_c])
            stats = worker.statistics()
    assert (
        3 <= len(left.tokens) < 60
        and left.tokens == tiny.greedy("llama", PROMPT, 60)[: len(left.tokens)]
    )
    for request in (b, c):
        assert rest[request.id].error is None
        assert rest[request.id].tokens == without[request.id].tokens, request.id
        assert rest[request.id].text == without[request.id].text, request.id
        assert rest[request.id].reasons == [FinishReason.LENGTH]
    assert rest["b"].tokens == tiny.greedy("llama", "A supervisor", 20)
    assert (stats.cancelled, stats.failed, stats.generation) == (1, 0, 1)


# --- 5. incremental detokenization ----------------------------------------------------------------


def test_the_detokenizer_sends_a_character_split_over_tokens_once_whole(tiny: Tiny) -> None:
    tiny.path("gpt2")
    sample = "caf\u00e9, na\u00efve, \u4e2d\u6587, \U0001f600 and text"
    ids = tiny.encode(sample)
    assert len(ids) > len(sample) - 10  # byte tokens: several characters are split
    detokenizer = Detokenizer(tiny.tokenizer)
    pieces = [detokenizer.add(t, last=i == len(ids) - 1) for i, t in enumerate(ids)]
    assert "".join(pieces) == sample
    assert "" in pieces and not any("\ufffd" in piece for piece in pieces)
    # At the end, what is left is sent even if broken.
    first_byte = tiny.encode("\U0001f600")[0]
    assert Detokenizer(tiny.tokenizer).add(first_byte) == ""
    assert Detokenizer(tiny.tokenizer).add(first_byte, last=True) == "\ufffd"


async def test_streamed_text_is_the_decoded_output_and_no_chunk_ends_inside_a_character(
    tiny: Tiny,
) -> None:
    runner = await loaded(tiny.path("llama"))
    prompts = ["Unicode too: caf", "A supervisor decides:", "too: na", "x"]
    requests = [
        req(f"{i}-{seed}", prompt, 30, temperature=0.8, seed=seed, ignore_eos=True)
        for i, prompt in enumerate(prompts)
        for seed in range(4)
    ]
    out = await run_batch(runner, *requests)
    valid = held = 0
    for request in requests:
        chunks = out[request.id]
        assert len(chunks) == 30 and all(len(c.token_ids) == 1 for c in chunks)
        whole = tiny.decode(tokens(chunks))
        assert text(chunks) == whole, request.id
        assert not any(c.text.endswith("\ufffd") for c in chunks[:-1]), request.id
        if "\ufffd" not in whole:
            valid += 1
            if not whole.isascii() and any(c.text == "" for c in chunks):
                held += 1  # a character split over tokens came whole, once
    assert valid >= 4 and held >= 2, (valid, held)
    await runner.aclose()


# --- 6. log probabilities -------------------------------------------------------------------------


async def test_logprobs_are_the_log_softmax_of_the_models_logits(tiny: Tiny) -> None:
    family = "gpt2"
    runner = await loaded(tiny.path(family))
    asked = req("lp", PROMPT, 8, temperature=0.9, seed=3, ignore_eos=True, logprobs=3)
    out = await run_batch(
        runner,  # in a batch, its row padded beside longer and shorter prompts
        req("long", "A supervisor decides: resume, restart", 5, ignore_eos=True),
        asked,
        req("short", "x", 9, ignore_eos=True, logprobs=0),
    )
    ids = tiny.encode(PROMPT)
    chunks = out["lp"]
    assert len(chunks) == 8
    for chunk in chunks:
        assert chunk.logprobs is not None and len(chunk.logprobs) == len(chunk.token_ids) == 1
        (token,) = chunk.token_ids
        (entry,) = chunk.logprobs
        expected = tiny.log_softmax(family, ids)
        assert math.isclose(entry.logprob, float(expected[token]), rel_tol=0, abs_tol=1e-6)
        assert entry.token == tiny.tokenizer.decode([token])
        best = torch.topk(expected, 3)
        assert len(entry.top) == 3
        assert [t for t, _ in entry.top] == [tiny.tokenizer.decode([int(i)]) for i in best.indices]
        for (_, value), want in zip(entry.top, best.values, strict=True):
            assert math.isclose(value, float(want), rel_tol=0, abs_tol=1e-6)
        assert entry.logprob <= entry.top[0][1] + 1e-12
        ids.append(token)
    assert all(c.logprobs is not None and c.logprobs[0].top == () for c in out["short"])
    assert all(c.logprobs is None for c in out["long"])
    await runner.aclose()


# --- 7. the sampling fields -----------------------------------------------------------------------


async def test_every_sampling_field_is_honoured_and_logit_bias_forces_a_token(tiny: Tiny) -> None:
    assert TransformersRunner.sampling_fields == frozenset(SAMPLING_EXTRAS)
    assert runner_sampling_fields(TransformersRunner) == frozenset(SAMPLING_EXTRAS)
    runner = await loaded(tiny.path("gpt2"))
    forced = tiny.encode("z")[0]
    greedy = tiny.greedy("gpt2", PROMPT, 20)
    out = await run_batch(
        runner,
        req("t0", PROMPT, 12, logit_bias=((forced, 100.0),)),
        req("t1", PROMPT, 12, temperature=1.0, seed=2, logit_bias=((forced, 100.0),)),
        req("ban", PROMPT, 20, ignore_eos=True, logit_bias=((greedy[0], -100.0),)),
        req("k1", PROMPT, 20, temperature=1.0, seed=4, top_k=1, ignore_eos=True),
        req("p1", PROMPT, 20, temperature=1.0, seed=5, min_p=1.0, ignore_eos=True),
    )
    assert tokens(out["t0"]) == tokens(out["t1"]) == [forced] * 12
    assert tokens(out["ban"])[0] != greedy[0]
    assert tokens(out["k1"]) == tokens(out["p1"]) == greedy
    # The penalties change a greedy output that repeats itself (the fitted Llama's does).
    llama = await loaded(tiny.path("llama"))
    repeats = tiny.greedy("llama", PROMPT, 20)
    assert len(set(repeats)) < 15
    penalised = await run_batch(
        llama,
        req("rep", PROMPT, 20, repetition_penalty=2.0, ignore_eos=True),
        req("presence", PROMPT, 20, presence_penalty=2.0, ignore_eos=True),
        req("frequency", PROMPT, 20, frequency_penalty=2.0, ignore_eos=True),
    )
    await llama.aclose()
    for name, chunks in penalised.items():
        assert len(chunks) == 20 and tokens(chunks) != repeats, name
        assert len(set(tokens(chunks))) > len(set(repeats)), name
    # min_tokens holds the end of text back; ignore_eos goes past it.
    until_eos = tiny.greedy("gpt2", PROMPT, 40, eos=True)
    assert until_eos[-1] == EOS
    held = await run_batch(
        runner,
        req("held", PROMPT, 40, min_tokens=len(until_eos) + 3),
        req("ignored", PROMPT, 40, ignore_eos=True),
    )
    assert tokens(held["held"])[: len(until_eos) - 1] == until_eos[:-1]
    assert EOS not in tokens(held["held"])[: len(until_eos) + 3]
    assert len(held["held"]) >= len(until_eos) + 3
    assert tokens(held["ignored"]) == tiny.greedy("gpt2", PROMPT, 40)
    assert tokens(held["ignored"])[len(until_eos) - 1] == EOS
    assert held["ignored"][-1].finish_reason is FinishReason.LENGTH
    await runner.aclose()


async def test_an_out_of_range_logit_bias_fails_that_request_alone(tiny: Tiny) -> None:
    runner = await loaded(tiny.path("gpt2"))
    out = await run_batch(
        runner,
        req("ok1", PROMPT, 10, temperature=0.7, seed=1),
        req("bad", PROMPT, 10, logit_bias=((3, 1.0), (VOCAB, 2.0), (1000, -1.0))),
        req("ok2", "x", 10, ignore_eos=True, logit_bias=((3, 1.0),)),
    )
    [failed] = out["bad"]
    assert isinstance(failed.error, ts.BadRequest) and not failed.error.retryable
    assert f"[0, {VOCAB})" in str(failed.error) and f"[{VOCAB}, 1000]" in str(failed.error)
    assert [c.finish_reason for c in out["ok2"]][-1] is FinishReason.LENGTH
    assert len(out["ok2"]) == 10 and out["ok1"][-1].finish_reason is not None
    await runner.aclose()


# --- 8. prompts: too long, token ids, bad ids -----------------------------------------------------


async def test_prompts_too_long_token_ids_and_bad_ids(tiny: Tiny) -> None:
    path = tiny.path("gpt2")
    ids = tuple(tiny.encode(PROMPT))
    default = await loaded(path)
    assert default.max_model_len == 256  # the model config's max positions
    await default.aclose()
    runner = await loaded(path, max_model_len=len(ids) + 14)
    out = await run_batch(
        runner,
        req("over", PROMPT, 15),
        req("text", PROMPT, 14, ignore_eos=True),
        req("ids", ids, 14, ignore_eos=True),
        req("bad", (1, 2, VOCAB, 5000), 3),
        req("empty", "", 3),
    )
    [over] = out["over"]
    assert isinstance(over.error, ts.BadRequest) and not over.error.retryable
    message = str(over.error)
    assert f"max_model_len={len(ids) + 14}" in message, message
    assert f"{len(ids)} prompt tokens" in message and "max_tokens=15" in message, message
    # The limit is inclusive; token ids answer as their text does.
    assert tokens(out["ids"]) == tokens(out["text"]) == tiny.greedy("gpt2", PROMPT, 14)
    assert out["ids"][-1].usage == out["text"][-1].usage == Usage(len(ids), 14)
    [bad] = out["bad"]
    assert isinstance(bad.error, ts.BadRequest) and f"[0, {VOCAB})" in str(bad.error)
    assert f"[{VOCAB}, 5000]" in str(bad.error)
    [empty] = out["empty"]
    assert isinstance(empty.error, ts.BadRequest) and "no tokens" in str(empty.error)
    await runner.aclose()


# --- 9. the tokenizer, and bad arguments ----------------------------------------------------------


async def test_load_tokenizer_and_bad_arguments(tiny: Tiny, tmp_path: Path) -> None:
    path = tiny.path("gpt2")
    tokenizer = TransformersRunner.load_tokenizer(model=str(path), dtype="float64")
    sample = "The worker restarts: caf\u00e9, \u4e2d\u6587, \U0001f600."
    assert tokenizer.decode(tokenizer.encode(sample)) == sample
    assert tokenizer.chat_template is not None and tokenizer.vocab_size == VOCAB
    assert tokenizer.max_model_len == 256  # the model config's, for the server
    given = TransformersRunner.load_tokenizer(model=str(path), max_model_len=100)
    assert given.max_model_len == 100
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|user|>Hi\n<|assistant|>"
    missing = str(tmp_path / "missing")
    with pytest.raises(ts.ConfigError, match="cannot load the tokenizer"):
        TransformersRunner.load_tokenizer(model=missing)
    with pytest.raises(ts.ConfigError):
        await loaded(tmp_path / "missing")
    with pytest.raises(ts.ConfigError, match="dtype must be one of"):
        TransformersRunner(model=str(path), dtype="float8")
    with pytest.raises(ts.ConfigError, match="max_model_len"):
        TransformersRunner(model=str(path), max_model_len=0)
    runner = TransformersRunner(model=str(path))
    with pytest.raises(ts.RunnerError, match="before load"):
        await run_batch(runner, req("a"))


# --- 10. faults -----------------------------------------------------------------------------------


def faulty(path: Path, plan: FaultPlan) -> dict[str, Any]:
    return {
        "runner_args": {
            "inner": RUNNER,
            "inner_args": {"model": str(path), "dtype": "float64"},
            "plan": plan.to_dict(),
        },
        "device": "cpu",
    }


async def test_a_poisoning_mid_stream_restarts_the_tier_and_the_stream_resumes(
    tiny: Tiny,
) -> None:
    family = "gpt2"
    plan = FaultPlan.at(fault=Fault.POISON, batch=0, token=5)
    # (no ignore_eos through FaultyRunner: see the test after the next one; the greedy text
    # of PROMPT ends its sentence after 27 tokens, so 20 do not reach the end of text)
    request = req("a", PROMPT, 20, continuation="resume")
    with trio.fail_after(60):
        async with ts.open_worker(FAULTY, **faulty(tiny.path(family), plan)) as worker:
            got = await read(worker.generate(request))
            assert worker.generation == 2
            stats = worker.statistics()
    greedy = tiny.greedy(family, PROMPT, 20, eos=True)
    delivered = tiny.decode(greedy[:5])  # before the fault
    assert got.error is None and got.reasons == [FinishReason.LENGTH]
    assert got.tokens[:5] == greedy[:5] and got.text.startswith(delivered)
    # The rest is the greedy continuation of the prompt plus what was delivered.
    assert got.tokens[5:] == tiny.greedy(family, PROMPT + delivered, 15, eos=True)
    assert len(got.tokens) == 20 and got.usage == Usage(len(tiny.encode(PROMPT)), 20)
    assert (stats.continued, stats.failed, stats.finished) == (1, 0, 1)


async def test_an_out_of_memory_fails_its_batch_alone_without_a_restart(tiny: Tiny) -> None:
    family = "gpt2"
    plan = FaultPlan.at(fault=Fault.OOM, batch=0, token=3)
    with trio.fail_after(60):
        async with ts.open_worker(FAULTY, **faulty(tiny.path(family), plan)) as worker:
            failed = await read(worker.generate(req("a", PROMPT, 10)))
            after = await read(worker.generate(req("b", PROMPT, 10)))
            assert worker.generation == 1
            stats = worker.statistics()
    greedy = tiny.greedy(family, PROMPT, 10, eos=True)
    assert isinstance(failed.error, ts.OutOfMemory) and failed.reasons == []
    assert 0 < len(failed.tokens) <= 3 and failed.tokens == greedy[: len(failed.tokens)]
    assert after.error is None and after.tokens == greedy and len(greedy) == 10
    assert (stats.failed, stats.finished, stats.generation) == (1, 1, 1)


async def test_faulty_runner_passes_on_the_sampling_fields_of_the_runner_it_wraps(
    tiny: Tiny,
) -> None:
    """FaultyRunner changes no output, so it says what the runner it wraps honours (its
    sampling_fields, as its max_concurrency, default_policy, needs_device and deterministic),
    and the server gets the wrapped runner's tokenizer through it."""
    from trio_supervise.testing import FaultyRunner

    with trio.fail_after(60):
        async with ts.open_worker(FAULTY, **faulty(tiny.path("gpt2"), FaultPlan.none())) as worker:
            got = await read(worker.generate(req("a", PROMPT, 4, ignore_eos=True, top_k=3)))
    assert got.error is None, got.error
    assert got.tokens == tiny.greedy("gpt2", PROMPT, 4)
    args = faulty(tiny.path("gpt2"), FaultPlan.none())["runner_args"]
    tokenizer = FaultyRunner.load_tokenizer(**args)
    assert tokenizer.decode(tokenizer.encode(PROMPT)) == PROMPT and tokenizer.max_model_len == 256
    assert FaultyRunner.load_tokenizer(inner="trio_supervise.runners.mock:MockRunner") is None


class FailingForward:
    """The model, failing with ``error`` on its ``at``-th call (1-based), then as it was."""

    def __init__(self, model: Any, at: int, error: BaseException) -> None:
        self.model, self.at, self.error, self.calls = model, at, error, 0

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return self.model(**kwargs)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            ts.OutOfMemory,
        ),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), ts.ContextPoisoned),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x3 and 4x5)"), RuntimeError),
    ],
    ids=["oom", "sticky", "other"],
)
async def test_a_forward_pass_that_fails_fails_every_batch_in_it_and_the_next_starts_afresh(
    tiny: Tiny, error: BaseException, expected: type[BaseException]
) -> None:
    family = "gpt2"
    runner = await loaded(tiny.path(family))
    assert runner.engine is not None
    runner.engine.model = FailingForward(runner.engine.model, 4, error)  # mid-decode
    failures: list[BaseException] = []

    async def one(request: Request) -> None:
        try:
            await run_batch(runner, request)
        except Exception as exc:
            failures.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, req("a", PROMPT, 10, ignore_eos=True))
            nursery.start_soon(one, req("b", "A supervisor", 10, ignore_eos=True))
    assert len(failures) == 2 and all(isinstance(f, expected) for f in failures), failures
    if expected is not RuntimeError:
        assert any(f.__cause__ is error for f in failures)
    assert runner.engine.rows == [] and runner.engine.cache is None  # reset
    after = await run_batch(runner, req("c", PROMPT, 10, ignore_eos=True))
    assert tokens(after["c"]) == tiny.greedy(family, PROMPT, 10)
    await runner.aclose()


# --- 11. the process tier -------------------------------------------------------------------------


async def test_a_child_process_gives_the_same_tokens_and_a_killed_one_is_resumed(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = "gpt2"
    path = tiny.path(family)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children's PyTorch: see _one_torch_thread
    plan = FaultPlan.at(fault=Fault.KILL, batch=1, token=4)
    args = faulty(path, plan)
    greedy = tiny.greedy(family, PROMPT, 16, eos=True)  # no end of text in 16 tokens
    with trio.fail_after(120):
        async with ts.open_worker(RUNNER, **on_worker(path)) as inline:
            alone = await read(inline.generate(req("a", PROMPT, 16)))
        async with ts.open_worker(FAULTY, isolation="process", **args) as worker:
            first = worker.placement()["pid"]
            child = await read(worker.generate(req("a", PROMPT, 16)))
            killed = await read(worker.generate(req("k", PROMPT, 16, continuation="resume")))
            assert worker.generation == 2 and worker.placement()["pid"] != first
    assert child.tokens == alone.tokens == greedy and child.text == alone.text
    # Killed after at most 4 tokens had reached us: ended once, with the delivered prefix,
    # then the greedy continuation of the prompt plus that prefix.
    assert killed.error is None and killed.reasons == [FinishReason.LENGTH]
    assert len(killed.tokens) == 16 and killed.usage == Usage(len(tiny.encode(PROMPT)), 16)
    resumed_at = [
        k
        for k in range(5)
        if killed.tokens[:k] == greedy[:k]
        and killed.text.startswith(tiny.decode(greedy[:k]))
        and killed.tokens[k:]
        == tiny.greedy(family, PROMPT + tiny.decode(greedy[:k]), 16 - k, eos=True)
    ]
    assert resumed_at, (killed.tokens, greedy)


# --- 12. PyTorch's CUDA errors --------------------------------------------------------------------

STICKY = [
    "an illegal memory access was encountered",
    "unspecified launch failure",
    "device-side assert triggered",
    "misaligned address",
    "an illegal instruction was encountered",
]


@pytest.mark.parametrize("message", STICKY)
def test_sticky_cuda_errors_of_pytorch_are_context_poisoned(message: str) -> None:
    from trio_supervise.devices._cuda_errors import is_sticky_cuda_error

    text = (
        f"CUDA error: {message}\nCUDA kernel errors might be asynchronously reported at some "
        "other API call, so the stacktrace below might be incorrect."
    )
    for error in (RuntimeError(text), torch.AcceleratorError(text)):
        mapped = ts.classify_cuda_error(error)
        assert isinstance(mapped, ts.ContextPoisoned), (message, type(error))
        assert mapped.__cause__ is error and message in str(mapped)
        assert is_sticky_cuda_error(mapped)


def test_pytorchs_out_of_memory_is_out_of_memory_and_other_errors_stay() -> None:
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
    mapped = ts.classify_cuda_error(oom)
    assert isinstance(mapped, ts.OutOfMemory) and mapped.__cause__ is oom
    for other in (
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x3 and 4x5)"),
        RuntimeError("CUDA error: invalid argument"),
        ValueError("an illegal memory access was encountered"),
    ):
        assert ts.classify_cuda_error(other) is other


# --- the declared property, and the third tier ----------------------------------------------------


async def test_it_does_not_say_deterministic_so_a_cut_stream_is_not_replayed(tiny: Tiny) -> None:
    """A row's logits depend on its batch in the last bits (float32 padding and batched
    products), so the runner does not promise determinism: a worker on it knows, and an
    explicit ``replay`` is refused up front while ``resume`` is accepted."""
    assert TransformersRunner.deterministic is False
    with trio.fail_after(60):
        async with ts.open_worker(RUNNER, **on_worker(tiny.path("gpt2"))) as worker:
            assert worker.deterministic is False
            with pytest.raises(ts.BadRequest, match="needs a deterministic runner"):
                worker.generate(req("a", max_tokens=2, continuation="replay"))  # at admission
            resumed = await read(worker.generate(req("b", max_tokens=2, continuation="resume")))
    assert resumed.error is None and resumed.tokens == tiny.greedy("gpt2", PROMPT, 2)


@pytest.mark.ray
async def test_a_ray_actor_runs_the_model_as_inline(tiny: Tiny, ray_address: str) -> None:
    """The same greedy tokens from the runner in a Ray actor (the session's local Ray), with a
    logprob per token crossing back."""
    pytest.importorskip("ray")
    with trio.fail_after(120):
        # one PyTorch thread in the actor: on a busy machine its default two spin, and stall
        placed = on_worker(tiny.path("llama"), threads=1)
        async with ts.open_worker(RUNNER, **placed, isolation="ray") as w:
            got = await read(w.generate(req("r", max_tokens=6, logprobs=1)))
    assert got.error is None, got.error
    assert got.tokens == tiny.greedy("llama", PROMPT, 6)


async def test_without_the_extra_loading_says_which_to_install(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyTorch is imported by ``load``, in the model's thread (seconds the event loop does not
    wait): without it, building the runner succeeds, and loading it, or its tokenizer, is a
    ConfigError that names the extra."""
    import sys

    path = str(tiny.path("gpt2"))  # built with PyTorch, before it goes
    monkeypatch.setitem(sys.modules, "torch", None)  # as if it were not installed
    runner = TransformersRunner(model=path)
    with pytest.raises(ts.ConfigError, match=r"pip install 'trio-supervise\[transformers\]'"):
        await runner.load(CpuDevice())
    with pytest.raises(ts.ConfigError, match=r"trio-supervise\[transformers\]"):
        TransformersRunner.load_tokenizer(model=path)
    await runner.aclose()  # never loaded: nothing to release
