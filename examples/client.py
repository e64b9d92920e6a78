"""Serve examples/serve.toml in-process on a free port, then be its client with the official
``openai`` package (``pip install openai``).

Run it: ``python examples/client.py``. It starts ``serve`` inside ``trio.run`` (the config from
``serve.toml``, with ``[server] port`` set to 0 so the OS picks a free one), then, in a thread
(the ``openai`` client is synchronous here), asks for:

* a chat answer, whole;
* the same chat streamed, with ``stream_options.include_usage``: the role first, then the text,
  then one last event of the usage alone;
* a completion with a stop string, which ends the text and is cut from it;

prints them, then drains the server and exits 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import openai
import trio

from trio_supervise.serve import ServeConfig
from trio_supervise.serve.server import ServerHandle, serve

CONFIG = Path(__file__).with_name("serve.toml")
MESSAGES = [
    {"role": "system", "content": "You are a supervisor of model workers."},
    {"role": "user", "content": "What happens when a worker fails?"},
]


def load_config() -> ServeConfig:
    """``serve.toml``, listening on a free port."""
    config = ServeConfig.from_toml(CONFIG)
    return attrs.evolve(config, server=attrs.evolve(config.server, port=0))


def ask(url: str) -> dict[str, Any]:
    """The three requests, with the official client (blocking: run it in a thread)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with client:
        chat = client.chat.completions.create(model="mock", messages=MESSAGES, max_tokens=8, seed=1)
        answer = chat.choices[0].message.content or ""
        print(f"chat:     {answer!r} ({chat.usage.total_tokens if chat.usage else '?'} tokens)")

        chunks = list(
            client.chat.completions.create(
                model="mock", messages=MESSAGES, max_tokens=8, seed=1,
                stream=True, stream_options={"include_usage": True},
            )
        )  # fmt: skip
        role = chunks[0].choices[0].delta.role
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
        print(f"streamed: {role}: {streamed!r} in {len(chunks)} events; usage {usage}")
        assert streamed == answer  # same messages and seed: the same text

        prompt = MESSAGES[1]["content"]
        plain = client.completions.create(model="mock", prompt=prompt, max_tokens=8, seed=1)
        full = plain.choices[0].text
        stop = full.split()[3]  # a word the model writes: the text ends before it
        cut = client.completions.create(
            model="mock", prompt=prompt, max_tokens=8, seed=1, stop=stop
        )
        text = cut.choices[0].text
        print(
            f"stop={stop!r}: {text!r} of {full!r} (finish_reason={cut.choices[0].finish_reason!r})"
        )
        assert text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    return {"chat": chat, "chunks": chunks, "stop": stop, "cut": cut}


async def main() -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, load_config())
        print(f"serving {handle.pool.models} on {handle.url}")
        try:
            got = await trio.to_thread.run_sync(ask, handle.url)
        finally:
            handle.drain()  # serve() returns once the workers have stopped
    print("drained")
    return got


if __name__ == "__main__":
    trio.run(main)
