"""A front end whose model runs on other servers: two backends, one front, one Trio process.

Run it: ``python examples/remote_front.py``. It starts two backend servers (trio-supervise
itself, serving the mock model, standing in for vLLM or TGI hosts), then a front whose worker
``model`` has one replica per backend (``replica_args``), each a ``RemoteRunner``. It asks the
front for a completion, takes backend B down, asks again (the request that hits B's dead replica
moves to A's, untouched), and prints ``/v1/workers`` with each replica's circuit breaker. Then it
drains everything and exits 0. In production the backends are other hosts: see docs/scaling.md.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

from trio_supervise.serve import ServeConfig
from trio_supervise.serve.server import ServerHandle, serve

MOCK = "trio_supervise.runners.mock:MockRunner"
REMOTE = "trio_supervise.runners.remote:RemoteRunner"


def backend_config() -> ServeConfig:
    """A backend: the mock model on a free port."""
    return ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 2},
            "batching": {"max_wait": 0.001},
            "workers": [{"name": "mock", "runner": MOCK, "runner_args": {"delay": 0.001}}],
        }
    )


def front_config(urls: list[str]) -> ServeConfig:
    """The front: one model, a RemoteRunner replica per backend URL."""
    return ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 2},
            "batching": {"max_wait": 0.001, "max_batch_size": 1},
            "workers": [
                {
                    "name": "model",
                    "runner": REMOTE,
                    "runner_args": {
                        "model": "mock",
                        "connect_timeout": 1.0,
                        "breaker": {"failures": 2, "reset_timeout": 30.0},
                    },
                    "replica_args": [{"base_url": url} for url in urls],
                }
            ],
        }
    )


async def main() -> dict[str, Any]:
    """Run the scenario; return what it saw."""
    seen: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        scopes = []
        urls = []
        for _ in range(2):
            scope = trio.CancelScope()
            scopes.append(scope)

            async def run_backend(scope: trio.CancelScope = scope, *, task_status: Any) -> None:
                with scope:
                    await serve(backend_config(), task_status=task_status)

            backend: ServerHandle = await nursery.start(run_backend)
            urls.append(backend.url)
        front: ServerHandle = await nursery.start(serve, front_config(urls))
        async with httpx.AsyncClient(base_url=front.url, timeout=10) as client:
            body = {"model": "model", "prompt": "Once upon a time", "max_tokens": 8, "seed": 7}
            first = (await client.post("/v1/completions", json=body)).json()
            print("through the front:", first["choices"][0]["text"])
            scopes[1].cancel()  # backend B goes away
            statuses = []
            for _ in range(4):  # some land on B's replica first, and move to A's
                response = await client.post("/v1/completions", json=body)
                statuses.append(response.status_code)
            print("with backend B down:", statuses)
            workers = (await client.get("/v1/workers")).json()["workers"]
            for worker in workers:
                print(f"  {worker['name']}: {worker['state']}, breaker {worker['breaker']}")
            seen = {"text": first["choices"][0]["text"], "statuses": statuses,
                    "breakers": [w["breaker"] for w in workers]}  # fmt: skip
        front.drain()
        scopes[0].cancel()
    return seen


if __name__ == "__main__":
    trio.run(main)
