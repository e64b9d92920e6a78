"""CharLM: a real character-level model whose output depends on the request, not the batch."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import numpy
import pytest
import trio
import trio.testing

import trio_supervise as ts
from trio_supervise import Batch, FinishReason, Request, SamplingParams
from trio_supervise.devices import CpuDevice
from trio_supervise.runners import charlm
from trio_supervise.runners.charlm import CharLM

FACTORY = "trio_supervise.runners.charlm:CharLM"

# Frequent words of the training text (Python's docstrings and reference): generated prose
# should use several of them.
_COMMON = """
a an and are as at be by can for from if in into is it not of on or that the this to with
which when used use return returns returned value values object objects string strings
file files list name names function functions module modules method methods class classes
type types argument arguments data default number new set called call given specified
true false none error exception line lines code current path time each all any one only
same other new first last must should will may also more than then there be been has have
"""
COMMON_WORDS = frozenset(_COMMON.split())


async def loaded(**kwargs: object) -> CharLM:
    runner = CharLM(**kwargs)  # type: ignore[arg-type]
    await runner.load(CpuDevice())
    return runner


async def run_batch(runner: CharLM, batch: Batch) -> dict[str, list[ts.Chunk]]:
    out: dict[str, list[ts.Chunk]] = {r.id: [] for r in batch.requests}
    async for chunk in runner.execute(batch):
        out[chunk.request_id].append(chunk)
    return out


def tokens(chunks: list[ts.Chunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def text(chunks: list[ts.Chunk]) -> str:
    return "".join(c.text for c in chunks)


def req(
    rid: str, prompt: str | tuple[int, ...] = "The ", max_tokens: int = 40, **kw: object
) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens, **kw))  # type: ignore[arg-type]


async def test_loads_the_packaged_weights_on_the_cpu() -> None:
    weights = importlib.resources.files("trio_supervise.runners") / charlm.WEIGHTS_FILE
    assert weights.is_file()
    assert len(weights.read_bytes()) < 2_000_000
    runner = await loaded()
    model = runner.model
    assert model is not None and model.xp is numpy
    assert model.vocab_size == 96 and model.vocab[model.pad] == "\n"
    assert model.vocab[model.fallback] == "?" and model.context >= 8
    assert model.encode("Tab\t\u00e9!") == [model.index[c] for c in "Tab ?!"]
    assert model.encode("\u201cok\u201d \u2014") == model.encode('"ok" -')
    assert (CharLM.needs_device, CharLM.default_policy, runner.max_concurrency) == (True, None, 8)
    await runner.rebuild_session(ts.RebuildCause.MANUAL)
    await runner.aclose()
    assert runner.model is None
    with pytest.raises(ts.RunnerError, match="before load"):
        await run_batch(runner, Batch([req("a")]))


async def test_a_bad_weights_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ts.ConfigError, match="cannot read CharLM weights"):
        await loaded(weights=str(tmp_path / "missing.npz"))
    bad = tmp_path / "bad.npz"
    numpy.savez(bad, emb=numpy.zeros((3, 2)))
    with pytest.raises(ts.ConfigError, match="cannot read CharLM weights"):
        await loaded(weights=str(bad))


async def test_the_same_request_gives_the_same_text_alone_or_in_any_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = await loaded()
    a = req("a", "Return the ", 60, temperature=0.9, top_p=0.95, seed=7)
    alone = await run_batch(runner, Batch([a]))
    others = [
        req("b", "x", 10, temperature=1.5, seed=1),
        req("c", "The socket ", 80, temperature=0.0),
        req("d", (5, 6, 7), 3, temperature=0.7),
    ]
    together = await run_batch(runner, Batch([others[0], a, *others[1:]], 1))
    assert tokens(together["a"]) == tokens(alone["a"])
    assert (
        text(together["a"])
        == text(alone["a"])
        == charlm.complete(
            runner.model,  # type: ignore[arg-type]
            "Return the ",
            60,
            temperature=0.9,
            top_p=0.95,
            seed=7,
        )
    )
    assert [len(together[r.id]) for r in others] == [10, 80, 3]
    # Token ids are vocabulary indices, one character each.
    model = runner.model
    assert model is not None
    assert all(len(c.token_ids) == 1 and model.vocab[c.token_ids[0]] == c.text for c in alone["a"])
    # Another seed gives another text; no seed is deterministic too (derived from the id).
    reseeded = await run_batch(
        runner, Batch([req("a", "Return the ", 60, temperature=0.9, seed=8)])
    )
    assert text(reseeded["a"]) != text(alone["a"])
    unseeded = [
        text((await run_batch(runner, Batch([req("u", "Return the ", 30)])))["u"]) for _ in "12"
    ]
    assert unseeded[0] == unseeded[1]


async def test_temperature_zero_is_greedy_and_a_tiny_top_p_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = await loaded()
    model = runner.model
    assert model is not None
    greedy = await run_batch(runner, Batch([req("g", "The ", 50, temperature=0.0, seed=1)]))
    again = await run_batch(runner, Batch([req("g", "The ", 50, temperature=0.0, seed=2)]))
    assert tokens(greedy["g"]) == tokens(again["g"])
    # Each token is the argmax of the model's logits given the text before it.
    ids = model.encode("The ")
    for token in tokens(greedy["g"]):
        logits = charlm.forward(numpy, model, numpy.array([model.window(ids)]))
        assert token == int(numpy.argmax(logits[0]))
        ids.append(token)
    nucleus = await run_batch(
        runner,
        Batch([req(f"p{s}", "The ", 50, temperature=1.0, top_p=1e-6, seed=s) for s in range(3)]),
    )
    assert all(tokens(chunks) == tokens(greedy["g"]) for chunks in nucleus.values())
    hot = await run_batch(
        runner, Batch([req(f"h{s}", "The ", 50, temperature=1.0, seed=s) for s in range(3)])
    )
    assert len({text(chunks) for chunks in hot.values()}) == 3


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = numpy.log(numpy.array([0.05, 0.5, 0.3, 0.15]))
    rng = numpy.random.default_rng(0)
    assert {charlm.sample_next(logits, 1.0, 0.5, rng) for _ in range(50)} == {1}
    assert {charlm.sample_next(logits, 1.0, 0.75, rng) for _ in range(200)} == {1, 2}
    assert {charlm.sample_next(logits, 1.0, 1.0, rng) for _ in range(500)} == {0, 1, 2, 3}
    assert charlm.sample_next(logits, 0.0, 0.1, rng) == 1


async def test_stop_sequences_and_max_tokens(autojump_clock: trio.testing.MockClock) -> None:
    runner = await loaded()
    free = text((await run_batch(runner, Batch([req("a", "The ", 30, temperature=0.0)])))["a"])
    stop = free[8:11]
    out = await run_batch(
        runner,
        Batch([req("a", "The ", 30, temperature=0.0, stop=("@@@", stop)), req("b", "Hello", 7)]),
    )
    assert out["a"][-1].finish_reason is FinishReason.STOP
    assert text(out["a"]).endswith(stop) and free.startswith(text(out["a"]))
    assert len(out["a"]) <= 11
    assert out["a"][-1].usage == ts.Usage(4, len(out["a"]))
    assert [c.finish_reason for c in out["b"]] == [None] * 6 + [FinishReason.LENGTH]
    assert out["b"][-1].usage == ts.Usage(5, 7)
    assert all(c.usage is None for c in out["b"][:-1])


async def test_token_id_prompts_and_a_bad_one_fails_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = await loaded()
    model = runner.model
    assert model is not None
    as_ids = tuple(model.encode("The "))
    out = await run_batch(
        runner,
        Batch(
            [
                req("ids", as_ids, 20, temperature=0.0),
                req("bad", (1, 2, 96, 500), 20),
                req("text", "The ", 20, temperature=0.0),
            ]
        ),
    )
    assert tokens(out["ids"]) == tokens(out["text"]) and len(out["ids"]) == 20
    assert out["ids"][-1].usage == ts.Usage(4, 20)
    [failed] = out["bad"]
    assert isinstance(failed.error, ts.BadRequest) and "96" in str(failed.error)


async def test_a_request_over_max_model_len_fails_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert CharLM.max_model_len == 4096
    runner = await loaded()
    out = await run_batch(
        runner,
        Batch([req("over", "The ", 4093), req("fits", "The ", 10), req("ids", (1, 2), 4095)]),
    )
    [failed] = out["over"]
    assert isinstance(failed.error, ts.BadRequest) and not failed.error.retryable
    assert re.fullmatch(
        r"a request may have at most max_model_len=4096 tokens \(prompt plus completion\), "
        r"got 4 prompt tokens \+ max_tokens=4093 = 4097",
        str(failed.error),
    )
    assert [len(out["fits"]), out["fits"][-1].finish_reason] == [10, FinishReason.LENGTH]
    assert isinstance(out["ids"][0].error, ts.BadRequest) and "= 4097" in str(out["ids"][0].error)
    runner.max_model_len = 14  # the limit is inclusive: prompt plus completion may equal it
    exact = await run_batch(runner, Batch([req("exact", "The ", 10), req("one", "The ", 11)]))
    assert exact["exact"][-1].usage == ts.Usage(4, 10)
    assert isinstance(exact["one"][0].error, ts.BadRequest)


async def test_cancellation_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    runner = await loaded()
    cancelled: set[str] = set()
    batch = Batch([req("a", "The ", 100), req("b", "A ", 5)], 0, cancelled=cancelled)
    seen: list[str] = []
    with trio.fail_after(10):
        async for chunk in runner.execute(batch):
            seen.append(chunk.request_id)
            cancelled.add("a")
    assert seen.count("a") == 1 and seen.count("b") == 5


@pytest.mark.parametrize("prompt", ["The ", "Return the ", "If the "])
async def test_the_output_looks_like_text(
    autojump_clock: trio.testing.MockClock, prompt: str
) -> None:
    runner = await loaded()
    out = await run_batch(runner, Batch([req("t", prompt, 200, temperature=0.5, seed=3)]))
    generated = text(out["t"])
    assert len(generated) == 200
    prose = sum(c.isalpha() or c in " \n.,'\"()-:" for c in generated)
    assert prose >= 0.9 * len(generated), generated
    words = re.findall(r"[a-z]+", generated.lower())
    assert 20 <= len(words) <= 100, generated
    assert len(set(words) & COMMON_WORDS) >= 6, generated
    assert sum(w in COMMON_WORDS for w in words) >= 0.4 * len(words), generated


async def test_serves_through_an_inline_worker(autojump_clock: trio.testing.MockClock) -> None:
    async with ts.open_worker(FACTORY, device="cpu") as worker:
        request = req("w", "The ", 32, temperature=0.7, seed=11)
        token_ids, got, reason, usage = await worker.generate(request).collect()
    runner = await loaded()
    direct = await run_batch(runner, Batch([request]))
    assert (got, reason, usage) == (text(direct["w"]), FinishReason.LENGTH, ts.Usage(4, 32))
    assert list(token_ids) == tokens(direct["w"])


async def test_serves_through_a_child_process() -> None:
    with trio.fail_after(60):
        async with ts.open_worker(FACTORY, device="cpu", isolation="process") as worker:
            _, got, reason, usage = await worker.generate(req("p", "The ", 24)).collect()
    assert len(got) == 24 and reason is FinishReason.LENGTH and usage == ts.Usage(4, 24)


@pytest.mark.gpu
async def test_the_forward_pass_on_cupy_matches_numpy() -> None:
    from trio_supervise.devices import CupyDevice

    device = CupyDevice(0)
    try:
        gpu = CharLM()
        await gpu.load(device)
        cpu = await loaded()
        assert gpu.model is not None and cpu.model is not None
        windows = numpy.array([cpu.model.window(cpu.model.encode(p)) for p in ["The ", "", "x"]])
        on_gpu = await device.run_sync(charlm._host_logits, gpu.model, windows)
        on_cpu = charlm._host_logits(cpu.model, windows)
        numpy.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)
        out = await run_batch(gpu, Batch([req("g", "The ", 16, temperature=0.8, seed=1)]))
        assert len(out["g"]) == 16 and out["g"][-1].finish_reason is FinishReason.LENGTH
    finally:
        device.close()


def test_a_tiny_temperature_samples_the_most_likely_token_without_a_warning() -> None:
    from trio_supervise.runners.charlm import sample_next

    logits = numpy.array([1.0, 3.0, 2.0])
    assert sample_next(logits, 5e-324, 1.0, numpy.random.default_rng(0)) == 1  # warnings: errors
