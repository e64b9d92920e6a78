"""``serve`` of a tiny ``transformers`` model (TransformersRunner) with the official ``openai``
client (sync, in a thread): a chat rendered by the model's own chat template, the same chat
streamed with its usage, a completion with log probabilities, ``/tokenize`` (of a prompt and of
messages) and ``/detokenize``. Each answer is compared with the runner run directly on the same
prompt with the same seed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

from trio_supervise import Batch, Request, SamplingParams  # noqa: E402
from trio_supervise.devices import CpuDevice  # noqa: E402
from trio_supervise.runners.transformers import TransformersRunner  # noqa: E402
from trio_supervise.serve import ServeConfig  # noqa: E402

from ..support.helpers import start_server  # noqa: E402

RUNNER = "trio_supervise.runners.transformers:TransformersRunner"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The worker"}]
PROMPT = "The worker restarts"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """PyTorch on one thread (see tests/runners/test_transformers.py), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_models import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny"), "gpt2", train_steps=30)


def config(model: Path) -> ServeConfig:
    return ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 5},
            "batching": {"max_wait": 0.001},
            "workers": [
                {
                    "name": "tiny",
                    "runner": RUNNER,
                    "runner_args": {"model": str(model), "dtype": "float64"},
                    "device": "cpu",
                }
            ],
        }
    )


async def direct(model: Path, prompt: str, **params: Any) -> tuple[str, str, int]:
    """The runner's own answer to ``prompt``: (its text, its finish reason, its tokens)."""
    runner = TransformersRunner(model=str(model), dtype="float64")
    await runner.load(CpuDevice())
    chunks = [
        c async for c in runner.execute(Batch([Request("d", prompt, SamplingParams(**params))]))
    ]
    await runner.aclose()
    reason = chunks[-1].finish_reason
    assert reason is not None and chunks[-1].error is None
    return "".join(c.text for c in chunks), reason.value, len(chunks)


def content(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_chat_streamed_chat_logprobs_and_tokenize_with_the_openai_client(model: Path) -> None:
    tokenizer = TransformersRunner.load_tokenizer(model=str(model))
    rendered = tokenizer.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|system|>Be brief.\n<|user|>The worker\n<|assistant|>"
    ask: dict[str, Any] = {
        "model": "tiny",
        "messages": HELLO,
        "max_tokens": 24,
        "seed": 7,
        "temperature": 0.8,
    }
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, config(model))
            client = openai.OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0)

            def run() -> dict[str, Any]:
                got: dict[str, Any] = {"whole": client.chat.completions.create(**ask)}
                got["chunks"] = list(
                    client.chat.completions.create(
                        **ask, stream=True, stream_options={"include_usage": True}
                    )
                )
                got["logprobs"] = client.completions.create(
                    model="tiny", prompt=PROMPT, max_tokens=6, seed=1, logprobs=2
                )
                free = {k: v for k, v in ask.items() if k not in ("max_tokens", "temperature")}
                got["no_max_tokens"] = client.chat.completions.create(**free, temperature=0)
                return got

            got = await trio.to_thread.run_sync(run)
            client.close()
            async with httpx.AsyncClient(base_url=handle.url) as http:
                tokens = (await http.post("/tokenize", json={"prompt": PROMPT})).json()
                back = (await http.post("/detokenize", json={"tokens": tokens["tokens"]})).json()
                chat_tokens = (await http.post("/tokenize", json={"messages": HELLO})).json()
            handle.drain()
    prompt_tokens = len(tokenizer.encode(rendered))
    # A chat: the template's rendering, answered as the runner answers it with the same seed.
    whole = got["whole"]
    (choice,) = whole.choices
    text, reason, completion_tokens = await direct(
        model, rendered, max_tokens=24, seed=7, temperature=0.8
    )
    assert choice.message.role == "assistant" and choice.message.content == text
    assert choice.finish_reason == reason and whole.object == "chat.completion"
    assert whole.usage.prompt_tokens == prompt_tokens == chat_tokens["count"]
    assert whole.usage.completion_tokens == completion_tokens
    assert chat_tokens["tokens"] == tokenizer.encode(rendered)
    # Streamed: the role first, the same text, the usage alone at the end.
    chunks = got["chunks"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].object == "chat.completion.chunk"
    assert content(chunks) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    # A completion with log probabilities: one per token, 2 alternatives, the runner's text.
    completion = got["logprobs"].choices[0]
    expected, _, _ = await direct(model, PROMPT, max_tokens=6, seed=1)
    assert completion.text == expected
    logprobs = completion.logprobs
    assert "".join(logprobs.tokens) == completion.text and len(logprobs.tokens) == 6
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    for lp, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert lp <= max(top.values()) + 1e-9 and sum(math.exp(v) for v in top.values()) <= 1
    # No max_tokens: what is left of the model's length (its config's, 256) after the prompt.
    free = got["no_max_tokens"].choices[0]
    text, reason, completion_tokens = await direct(
        model, rendered, max_tokens=256 - prompt_tokens, seed=7, temperature=0
    )
    assert (free.message.content, free.finish_reason) == (text, reason)
    assert got["no_max_tokens"].usage.completion_tokens == completion_tokens
    # /tokenize and /detokenize: a round trip, and the model's length.
    assert tokens["tokens"] == tokenizer.encode(PROMPT) and tokens["count"] == len(tokens["tokens"])
    assert back == {"prompt": PROMPT}
    assert tokens["max_model_len"] == 256
