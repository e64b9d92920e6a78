"""The official openai client, pointed at the server, completes and streams."""

from __future__ import annotations

import pytest
import trio

from trio_supervise.serve import ServeConfig
from trio_supervise.serve.server import ServerHandle, serve

openai = pytest.importorskip("openai")


async def test_the_openai_client_completes_and_streams() -> None:
    config = ServeConfig.from_dict(
        {
            "server": {"port": 0},
            "workers": [
                {
                    "name": "mock",
                    "runner": "trio_supervise.runners.mock:MockRunner",
                    "runner_args": {"delay": 0.001},
                    "device": "cpu",
                }
            ],
        }
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle: ServerHandle = await nursery.start(serve, config)
            client = openai.OpenAI(base_url=f"{handle.url}/v1", api_key="unused", max_retries=0)

            def whole() -> object:
                return client.completions.create(
                    model="mock", prompt="hello world", max_tokens=5, seed=3
                )

            def streamed() -> str:
                chunks = client.completions.create(
                    model="mock", prompt="hello world", max_tokens=5, seed=3, stream=True
                )
                return "".join(chunk.choices[0].text for chunk in chunks)

            completion = await trio.to_thread.run_sync(whole)
            choice = completion.choices[0]  # type: ignore[attr-defined]
            assert choice.finish_reason == "length"
            assert completion.usage.completion_tokens == 5  # type: ignore[attr-defined]
            assert await trio.to_thread.run_sync(streamed) == choice.text
            models = await trio.to_thread.run_sync(lambda: client.models.list())
            assert [m.id for m in models.data] == ["mock"]
            client.close()
            handle.drain()
