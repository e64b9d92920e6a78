"""CharLM's extra sampling fields (top_k, min_p, penalties, logit_bias, min_tokens, ignore_eos,
logprobs), its tokenizer, and determinism with all of them set."""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

import numpy
import pytest

import trio_supervise as ts
from trio_supervise import Batch, FinishReason, Request, SamplingParams
from trio_supervise._types import SAMPLING_EXTRAS
from trio_supervise.devices import CpuDevice
from trio_supervise.runners import _sampling, charlm
from trio_supervise.runners._stepping import ending
from trio_supervise.runners.charlm import CharLM, CharModel, CharTokenizer
from trio_supervise.tier._runner import runner_sampling_fields, runner_tokenizer


async def loaded() -> tuple[CharLM, CharModel]:
    runner = CharLM()
    await runner.load(CpuDevice())
    assert runner.model is not None
    return runner, runner.model


async def run_batch(runner: CharLM, *requests: Request) -> dict[str, list[ts.Chunk]]:
    out: dict[str, list[ts.Chunk]] = {r.id: [] for r in requests}
    async for chunk in runner.execute(Batch(requests)):
        out[chunk.request_id].append(chunk)
    return out


async def generate(runner: CharLM, request: Request) -> list[ts.Chunk]:
    return (await run_batch(runner, request))[request.id]


def req(rid: str, max_tokens: int = 100, prompt: str = "The ", **kw: Any) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens, **kw))


def text(chunks: list[ts.Chunk]) -> str:
    return "".join(c.text for c in chunks)


def tokens(chunks: list[ts.Chunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def repeats(generated: str) -> tuple[int, int]:
    """Characters that had appeared before in the text, and the count of the most common one."""
    counts = collections.Counter(generated)
    return len(generated) - len(counts), max(counts.values())


def raw_logprobs(model: CharModel, ids: list[int]) -> numpy.ndarray[Any, Any]:
    """The log-softmax of the model's logits after ``ids``, computed here independently."""
    logits = numpy.asarray(charlm.forward(numpy, model, numpy.array([model.window(ids)])))[0]
    return logits - numpy.logaddexp.reduce(logits)  # type: ignore[no-any-return]


def test_charlm_honours_every_extra_sampling_field() -> None:
    assert CharLM.sampling_fields == frozenset(SAMPLING_EXTRAS)
    assert runner_sampling_fields(CharLM) == frozenset(SAMPLING_EXTRAS)


async def test_neutral_values_change_nothing() -> None:
    runner, model = await loaded()
    default = await generate(runner, req("d", temperature=1.0, seed=5))
    neutral: list[dict[str, Any]] = [
        dict(SAMPLING_EXTRAS),
        {"top_k": model.vocab_size},  # keeps every token
        {"logit_bias": ((5, 0.0), (7, 0.0))},  # a processor that adds nothing
        {"ignore_eos": True},  # no end-of-text token: honoured trivially
        {"min_tokens": 10},  # no stop sequence to hold back
    ]
    for extra in neutral:
        chunks = await generate(runner, req("d", temperature=1.0, seed=5, **extra))
        assert tokens(chunks) == tokens(default), extra
        assert all(c.logprobs is None for c in chunks)
    assert text(default) == charlm.complete(model, "The ", 100, temperature=1.0, seed=5)


@pytest.mark.parametrize(
    "extra",
    [
        {"top_k": 3},
        {"min_p": 0.2},
        {"presence_penalty": 1.5},
        {"frequency_penalty": 1.0},
        {"repetition_penalty": 1.5},
        {"logit_bias": ((70, -5.0),)},  # "e"
    ],
    ids=lambda extra: next(iter(extra)),
)
async def test_each_field_changes_the_output(extra: dict[str, Any]) -> None:
    runner, model = await loaded()
    default = await generate(runner, req("d", temperature=1.0, seed=5))
    changed = await generate(runner, req("d", temperature=1.0, seed=5, **extra))
    assert text(changed) != text(default)
    assert len(changed) == 100 and changed[-1].finish_reason is FinishReason.LENGTH
    assert text(changed) == charlm.complete(model, "The ", 100, temperature=1.0, seed=5, **extra)


async def test_logit_bias_forces_a_character_or_forbids_one() -> None:
    runner, model = await loaded()
    z = model.index["z"]
    for temperature in (0.0, 1.0):
        forced = await generate(
            runner, req("f", 30, temperature=temperature, seed=1, logit_bias=((z, 100.0),))
        )
        assert text(forced) == "z" * 30
    greedy = text(await generate(runner, req("g", 100, temperature=0.0)))
    common = collections.Counter(greedy).most_common(1)[0][0]
    banned = ((model.index[common], -100.0),)
    avoided = text(await generate(runner, req("a", 100, temperature=0.0, logit_bias=banned)))
    assert common not in avoided and len(avoided) == 100
    first = model.index[greedy[0]]
    other = await generate(runner, req("o", 1, temperature=0.0, logit_bias=((first, -100.0),)))
    assert tokens(other) != [first]


async def test_an_out_of_range_logit_bias_fails_that_request_alone() -> None:
    runner, _ = await loaded()
    out = await run_batch(
        runner,
        req("ok1", 20, temperature=0.7, seed=1),
        req("bad", 20, logit_bias=((3, 1.0), (96, 2.0), (1000, -1.0))),
        req("ok2", 20, temperature=0.0, logit_bias=((3, 1.0),)),
    )
    [failed] = out["bad"]
    assert isinstance(failed.error, ts.BadRequest) and not failed.error.retryable
    assert str(failed.error) == (
        "logit_bias token ids must be in [0, 96) for CharLM's vocabulary, got [96, 1000]"
    )
    for rid in ("ok1", "ok2"):
        assert len(out[rid]) == 20 and out[rid][-1].finish_reason is FinishReason.LENGTH
    with pytest.raises(ts.BadRequest, match=r"in \[0, 96\).*got \[96\]"):
        charlm.complete(runner.model, "x", 5, logit_bias=((96, 1.0),))  # type: ignore[arg-type]


async def test_top_k_one_and_min_p_near_one_are_greedy() -> None:
    runner, _ = await loaded()
    greedy = tokens(await generate(runner, req("g", 80, temperature=0.0)))
    for seed in range(3):
        for extra in ({"top_k": 1}, {"min_p": 0.999}, {"min_p": 1.0}):
            chunks = await generate(runner, req("s", 80, temperature=1.0, seed=seed, **extra))
            assert tokens(chunks) == greedy, (seed, extra)
    hot = {text(await generate(runner, req("h", 80, temperature=1.0, seed=s))) for s in range(3)}
    assert len(hot) == 3


def test_top_k_top_p_and_min_p_cut_the_distribution() -> None:
    logits = numpy.log(numpy.array([0.05, 0.5, 0.3, 0.15]))
    rng = numpy.random.default_rng(0)

    def drawn(n: int, top_p: float = 1.0, **cut: Any) -> set[int]:
        return {_sampling.sample_next(logits, 1.0, top_p, rng, **cut) for _ in range(n)}

    assert drawn(300, top_k=2) == {1, 2}
    assert drawn(300, top_k=3) == {1, 2, 3}
    assert drawn(300, top_k=100) == {0, 1, 2, 3}
    # top_p is a share of the mass that top_k kept: 0.5 of the first two (0.8) is token 1 alone.
    assert drawn(100, top_k=2, top_p=0.6) == {1}
    assert drawn(300, top_k=2, top_p=0.7) == {1, 2}
    assert drawn(300, min_p=0.35) == {1, 2}  # 0.15 < 0.35 * 0.5
    assert drawn(300, min_p=0.25) == {1, 2, 3}  # 0.05 < 0.25 * 0.5 <= 0.15
    assert drawn(100, min_p=0.7) == {1}
    assert drawn(300, top_k=3, min_p=0.5) == {1, 2}
    # A draw takes exactly one number from the generator; greedy takes none.
    a, b = numpy.random.default_rng(9), numpy.random.default_rng(9)
    _sampling.sample_next(logits, 0.7, 0.9, a, 2, 0.1)
    b.random()
    assert a.random() == b.random()
    assert _sampling.sample_next(logits, 0.0, 0.1, a, 3, 0.5) == 1
    assert a.random() == b.random()  # the greedy choice took nothing: still in step


def test_the_processor_applies_bias_then_penalties() -> None:
    params = SamplingParams(
        10, repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25,
        logit_bias=((0, 1.0), (3, -2.0)),
    )  # fmt: skip
    processor = _sampling.LogitsProcessor.for_request(params, 5, [1, 2])
    assert processor is not None
    logits = numpy.array([1.0, 2.0, -2.0, 3.0, 0.5])
    # bias: [2, 2, -2, 1, 0.5]; prompt tokens 1 and 2 seen: 2 / 2 = 1, -2 * 2 = -4.
    assert processor(logits).tolist() == [2.0, 1.0, -4.0, 1.0, 0.5]
    processor.record(0)
    processor.record(0)
    processor.record(4)
    # 0 seen now (4 / 2 = ... 2 / 2 = 1) and generated twice: 1 - 0.5 - 2 * 0.25 = 0;
    # 4: 0.5 / 2 - 0.5 - 0.25 = -0.5.
    assert processor(logits).tolist() == [0.0, 1.0, -4.0, 1.0, -0.5]
    assert logits.tolist() == [1.0, 2.0, -2.0, 3.0, 0.5]  # left as it was
    assert _sampling.LogitsProcessor.for_request(SamplingParams(10, top_k=3), 5, [1]) is None
    tiny = _sampling.LogitsProcessor.for_request(SamplingParams(5, repetition_penalty=1e-300),
                                                 3, [0, 1])  # fmt: skip
    assert tiny is not None
    assert numpy.isfinite(tiny(numpy.array([5.0, -5.0, 1.0]))).all()


@pytest.mark.parametrize(
    "extra",
    [{"repetition_penalty": 1.5}, {"presence_penalty": 1.5}, {"frequency_penalty": 0.5}],
    ids=lambda extra: next(iter(extra)),
)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
async def test_penalties_reduce_repeated_characters(
    extra: dict[str, Any], temperature: float
) -> None:
    runner, _ = await loaded()
    plain = text(await generate(runner, req("p", 200, temperature=temperature, seed=3)))
    penalised = text(
        await generate(runner, req("p", 200, temperature=temperature, seed=3, **extra))
    )
    assert len(penalised) == 200
    (plain_repeats, plain_top), (fewer, top) = repeats(plain), repeats(penalised)
    assert fewer < plain_repeats and top < plain_top, (plain, penalised)


def test_min_tokens_holds_back_a_stop_sequence() -> None:
    params = SamplingParams(10, stop=("b",), min_tokens=3)
    assert ending("ab", 2, params) is None
    assert ending("abb", 3, params) is FinishReason.STOP
    assert ending("abc", 3, params) is None
    assert ending("abcdefghij", 10, params) is FinishReason.LENGTH
    assert ending("ab", 2, SamplingParams(10, stop=("b",))) is FinishReason.STOP


async def test_min_tokens_keeps_an_early_stop_from_ending_the_output() -> None:
    runner, _ = await loaded()
    free = text(await generate(runner, req("f", 100, temperature=0.0)))
    early = free.index(" ") + 1
    assert early < 10
    stopped = await generate(runner, req("s", 100, temperature=0.0, stop=(" ",)))
    assert text(stopped) == free[:early] and stopped[-1].finish_reason is FinishReason.STOP
    held = await generate(runner, req("m", 100, temperature=0.0, stop=(" ",), min_tokens=20))
    end = free.index(" ", 19) + 1  # the first stop that ends at 20 tokens or more
    assert text(held) == free[:end] and len(held) >= 20
    assert held[-1].finish_reason is FinishReason.STOP
    assert held[-1].usage == ts.Usage(4, end)
    whole = await generate(runner, req("w", 15, temperature=0.0, stop=(" ",), min_tokens=15))
    assert text(whole) == free[:15] and whole[-1].finish_reason in {
        FinishReason.LENGTH, FinishReason.STOP,
    }  # fmt: skip


@pytest.mark.parametrize("top", [0, 5, 20])
async def test_logprobs_are_the_raw_log_softmax(top: int) -> None:
    runner, model = await loaded()
    # Temperature and a bias change what is drawn, never the raw logprobs reported.
    bias = ((model.index["x"], 3.0),)
    chunks = await generate(
        runner, req("l", 40, temperature=0.6, seed=2, logprobs=top, logit_bias=bias, top_k=10)
    )
    ids = model.encode("The ")
    for chunk in chunks:
        assert chunk.logprobs is not None and len(chunk.logprobs) == len(chunk.token_ids) == 1
        [entry] = chunk.logprobs
        [token] = chunk.token_ids
        expected = raw_logprobs(model, ids)
        assert entry.token == chunk.text == model.vocab[token]
        assert entry.logprob == pytest.approx(expected[token], abs=1e-9)
        assert entry.logprob <= 0
        assert len(entry.top) == top
        values = [lp for _, lp in entry.top]
        assert values == sorted(values, reverse=True) and all(lp <= 0 for lp in values)
        assert sum(math.exp(lp) for lp in values) <= 1 + 1e-12
        best = numpy.argsort(-expected, kind="stable")[:top]
        assert [c for c, _ in entry.top] == [model.vocab[i] for i in best]
        assert values == pytest.approx(expected[best].tolist(), abs=1e-9)
        ids.append(token)
    if top:
        greedy = await generate(runner, req("g", 20, temperature=0.0, logprobs=top))
        for chunk in greedy:  # the greedy choice is the most likely one
            assert chunk.logprobs is not None
            assert chunk.logprobs[0].top[0] == (chunk.text, chunk.logprobs[0].logprob)


async def test_without_logprobs_chunks_carry_none() -> None:
    runner, _ = await loaded()
    chunks = await generate(runner, req("n", 20, temperature=0.8, seed=1, top_k=5))
    assert len(chunks) == 20 and all(c.logprobs is None for c in chunks)


EVERYTHING: dict[str, Any] = {
    "temperature": 0.9,
    "top_p": 0.95,
    "seed": 17,
    "top_k": 20,
    "min_p": 0.02,
    "presence_penalty": 0.4,
    "frequency_penalty": 0.2,
    "repetition_penalty": 1.1,
    "logit_bias": ((1, 2.0), (70, -1.0)),
    "logprobs": 3,
    "min_tokens": 30,
    "stop": ("\n\n", "."),
    "ignore_eos": True,
}


async def test_the_same_request_is_the_same_alone_or_in_a_batch_of_nine() -> None:
    runner, model = await loaded()
    target = req("t", 120, "Return the ", **EVERYTHING)
    alone = await generate(runner, target)
    others = [
        req(f"o{i}", 30 + 15 * i, prompt, temperature=0.3 * i, seed=i, top_k=i,
            presence_penalty=0.1 * i, logprobs=i if i % 2 else None, min_tokens=i)
        for i, prompt in enumerate(["x", "The ", "If the ", "A", "\n", "Return", "os.", "ab"])
    ]  # fmt: skip
    together = await run_batch(runner, *others[:3], target, *others[3:])
    mixed = together["t"]
    assert tokens(mixed) == tokens(alone) and text(mixed) == text(alone)
    assert [c.finish_reason for c in mixed] == [c.finish_reason for c in alone]
    assert len(alone) >= 30
    for a, b in zip(alone, mixed, strict=True):
        assert a.logprobs is not None and b.logprobs is not None
        [x], [y] = a.logprobs, b.logprobs
        assert (x.token, [t for t, _ in x.top]) == (y.token, [t for t, _ in y.top])
        # The batch changes a row's logits only through summation order (about 1e-14).
        assert x.logprob == pytest.approx(y.logprob, abs=1e-9)
        assert [lp for _, lp in x.top] == pytest.approx([lp for _, lp in y.top], abs=1e-9)
    assert all(len(together[o.id]) >= 1 for o in others)
    options = {k: v for k, v in EVERYTHING.items() if k not in ("temperature", "top_p", "seed")}
    assert text(alone) == charlm.complete(
        model, "Return the ", 120, temperature=0.9, top_p=0.95, seed=17, **options
    )


def test_load_tokenizer_agrees_with_the_model(tmp_path: Path) -> None:
    tokenizer = CharLM.load_tokenizer(max_concurrency=4)  # runner args it does not need
    assert isinstance(tokenizer, CharTokenizer) and tokenizer.vocab_size == 96
    model = charlm.load_weights(numpy)
    assert (tokenizer.vocab, tokenizer.context, tokenizer.pad, tokenizer.fallback) == (
        model.vocab, model.context, model.pad, model.fallback,
    )  # fmt: skip
    samples = ["The socket ", "Tab\t\u00e9!", "\u201cok\u201d \u2014 done\n", "", "~{}|"]
    for sample in samples:
        assert tokenizer.encode(sample) == model.encode(sample)
        assert tokenizer.decode(tokenizer.encode(sample)) == model.decode(model.encode(sample))
    plain = "def f(x):\n    return x + 1  # ok?\n"
    assert tokenizer.decode(tokenizer.encode(plain)) == plain
    assert tokenizer.decode(list(range(96))) == model.vocab
    for bad in ([1, 96], [-1], [500, 2, 96]):
        with pytest.raises(ts.BadRequest, match=r"token ids must be in \[0, 96\)") as caught:
            tokenizer.decode(bad)
        assert str([t for t in bad if not 0 <= t < 96]) in str(caught.value)
    via_server = runner_tokenizer(CharLM, {"max_concurrency": 2})
    assert isinstance(via_server, CharTokenizer) and via_server.vocab == model.vocab
    with pytest.raises(ts.ConfigError, match="cannot read CharLM weights"):
        CharLM.load_tokenizer(weights=str(tmp_path / "missing.npz"))
    broken = tmp_path / "broken.npz"
    numpy.savez(broken, vocab=numpy.array([10, 65]), context=numpy.array(4),
                pad=numpy.array(5), fallback=numpy.array(0))  # fmt: skip
    with pytest.raises(ts.ConfigError, match="inconsistent"):
        CharLM.load_tokenizer(weights=str(broken))
