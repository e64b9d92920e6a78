"""Serve examples/serve.toml in-process on a free port, then be its HTTP client.

Run it: ``python examples/client.py``. It starts ``serve`` inside ``trio.run`` (the config from
``serve.toml``, with ``[server] port`` set to 0 so the OS picks a free one), asks for one whole
completion and one streamed completion (server-sent events, ending with ``data: [DONE]``),
prints both, then drains the server and exits 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from trio_supervise.serve import ServeConfig
from trio_supervise.serve.server import ServerHandle, serve

CONFIG = Path(__file__).with_name("serve.toml")


def load_config() -> ServeConfig:
    """``serve.toml``, listening on a free port."""
    config = ServeConfig.from_toml(CONFIG)
    return attrs.evolve(config, server=attrs.evolve(config.server, port=0))


async def whole(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """One completion, answered as one JSON object."""
    response = await client.post("/v1/completions", json=body)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


async def streamed(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """One completion as server-sent events: one ``data: {json}`` line per chunk."""
    events: list[dict[str, Any]] = []
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue  # the blank line that ends each event
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:  # a failure after the stream began
                raise RuntimeError(event["error"]["message"])
            events.append(event)
    return events


async def main() -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, load_config())
        print(f"serving {handle.pool.models} on {handle.url}")
        try:
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                body = {"prompt": "once upon a time", "max_tokens": 8, "seed": 1}
                result = await whole(client, body)
                text = result["choices"][0]["text"]
                print(f"whole:    {text!r} ({result['usage']['total_tokens']} tokens)")
                events = await streamed(client, body)
                pieces = [e["choices"][0]["text"] for e in events]
                print(f"streamed: {''.join(pieces)!r} in {len(events)} events: {pieces}")
                assert "".join(pieces) == text  # same prompt and seed: the same text
        finally:
            handle.drain()  # serve() returns once the workers have stopped
    print("drained")
    return {"whole": result, "events": events}


if __name__ == "__main__":
    trio.run(main)
