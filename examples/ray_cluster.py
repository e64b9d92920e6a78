"""One front whose model runs in Ray actors: two replicas, one actor killed, serving goes on.

Run it: ``python examples/ray_cluster.py`` (needs ``pip install 'trio-supervise[ray]'``). The
server starts a local Ray (on loopback; with ``RAY_ADDRESS`` set it joins that cluster instead)
and serves the model ``mock`` from two replicas, each a worker whose child tier is a Ray actor
(``isolation = "ray"``). Four completions stream at once; while they do, the example kills one
replica's actor with ``ray.kill``, as a lost node would. That worker's tier fails with
``ChildDied``, a fresh actor takes over, and the streams caught mid-way go on from where they
were (the mock runner is deterministic, so they are replayed and checked): every client gets
its whole completion. ``/v1/workers`` shows each replica's actor and node before and after.
On a real cluster, give ``ray_options = { num_gpus = 1 }`` and run it with ``RAY_ADDRESS``:
see docs/scaling.md.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

from trio_supervise import WorkerState
from trio_supervise.serve import ServeConfig
from trio_supervise.serve.server import ServerHandle, serve

MOCK = "trio_supervise.runners.mock:MockRunner"


def config() -> ServeConfig:
    """Two Ray-tier replicas of the mock model, with named actors (so we can find one)."""
    return ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 5},
            "batching": {"max_wait": 0.001, "max_batch_size": 1},
            "workers": [
                {
                    "name": "mock",
                    "runner": MOCK,
                    "runner_args": {"delay": 0.02},
                    "replicas": 2,
                    "isolation": "ray",
                    "ray_options": {
                        "name": "example",
                        "namespace": "trio-supervise",
                        "num_cpus": 0,
                    },
                }
            ],
        }
    )


async def stream(
    client: httpx.AsyncClient, index: int, chunks: list[str], started: trio.Event
) -> str:
    """One streamed completion; its text (``started`` is set at its second chunk)."""
    body = {"model": "mock", "prompt": f"story {index}", "max_tokens": 24, "seed": index,
            "stream": True}  # fmt: skip
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line.removeprefix("data: "))
                chunks.append(event["choices"][0]["text"])
                if len(chunks) == 2:
                    started.set()
    return "".join(chunks)


def show(workers: list[dict[str, Any]]) -> None:
    for w in workers:
        print(f"  {w['name']}: {w['state']}, generation {w['generation']}, "
              f"actor {w['actor_id'][:12]} on {w['node_ip']} (pid {w['pid']})")  # fmt: skip


async def main() -> dict[str, Any]:
    """Run the scenario; return what it saw."""
    seen: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        front: ServerHandle = await nursery.start(serve, config())
        async with httpx.AsyncClient(base_url=front.url, timeout=60) as client:
            before = (await client.get("/v1/workers")).json()["workers"]
            print("two replicas, each a Ray actor:")
            show(before)
            texts: dict[int, str] = {}
            started = [trio.Event() for _ in range(4)]
            async with trio.open_nursery() as requests:
                for i in range(4):

                    async def one(i: int = i) -> None:
                        texts[i] = await stream(client, i, [], started[i])

                    requests.start_soon(one)
                for event in started:  # every stream is under way
                    await event.wait()
                import ray  # here, after serve started Ray (imported first, it would not be on
                # loopback: see docs/scaling.md)

                victim = before[0]["actor_name"]
                handle = await trio.to_thread.run_sync(
                    lambda: ray.get_actor(victim, namespace="trio-supervise")
                )
                ray.kill(handle)
                print(f"killed {victim} mid-stream")
            worker = front.pool.replicas["mock"][0].worker
            assert worker is not None
            restarted = worker  # a fresh actor is READY under generation 2
            await worker.state.wait_value(
                lambda s: s is WorkerState.READY and restarted.generation > 1
            )
            after = (await client.get("/v1/workers")).json()["workers"]
            print("after the kill:")
            show(after)
            lengths = {i: len(text.split()) for i, text in texts.items()}
            print("completions (words):", lengths)
            seen = {"texts": texts, "before": before, "after": after}
        front.drain()
    return seen


if __name__ == "__main__":
    result = trio.run(main)
    assert result["after"][0]["actor_id"] != result["before"][0]["actor_id"]
    assert len(result["texts"]) == 4
