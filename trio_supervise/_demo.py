"""``trio-supervise demo``: a served model that keeps answering while its workers are poisoned.

It starts the server in this process (port 0), sends a steady load of completions over HTTP,
and injects faults into the model's runner (a poisoned context, an out-of-memory batch, and with
``--isolation process`` a hang), showing live that requests keep finishing while the workers
restart. It ends with a summary table.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import httpx
import trio

from .serve import ServeConfig
from .serve.server import ServerHandle, serve
from .testing import Fault, FaultPlan

__all__ = ["run_demo"]

MODEL = "trio_supervise.runners.charlm:CharLM"
TRANSFORMERS = "trio_supervise.runners.transformers:TransformersRunner"
PROMPTS = ("The ", "In the ", "A worker ", "Return the ", "This module ", "If the ")


def demo_config(isolation: str, plan: FaultPlan, model: str | None = None) -> ServeConfig:
    """Two replicas of the character model (or of ``model`` by ``TransformersRunner``), with
    faults injected by plan."""
    inner: dict[str, Any] = {"inner": MODEL}
    if model is not None:
        inner = {"inner": TRANSFORMERS, "inner_args": {"model": model}}
    return ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 5, "max_worker_restarts": 20, "within": 60},
            "batching": {"max_batch_size": 8, "max_wait": 0.01},
            "workers": [
                {
                    "name": "charlm" if model is None else "model",
                    "runner": "trio_supervise.testing:FaultyRunner",
                    "runner_args": {**inner, "plan": plan.to_dict()},
                    "device": "auto",
                    "replicas": 2,
                    "isolation": isolation,
                    "hang_timeout": 1.0,
                    "policy": {"max_restarts": 10, "within": 60},
                }
            ],
        }
    )


def demo_plan(isolation: str) -> FaultPlan:
    """A poisoning, an out-of-memory batch, and (in a child process) a hang, per replica."""
    plan = FaultPlan.at(fault=Fault.POISON, batch=2, token=3) + FaultPlan.at(
        fault=Fault.OOM, batch=4, token=2
    )
    if isolation == "process":
        plan = plan + FaultPlan.at(fault=Fault.HANG, batch=6, token=1)
    return plan


async def run_demo(
    *, isolation: str = "inline", seconds: float = 8.0, live: bool = True, model: str | None = None
) -> dict[str, Any]:
    """Run the demo (on ``model`` by ``TransformersRunner``, where given); return its counts
    (``finished``, ``failed`` by class, ``restarts``)."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console()
    counts: collections.Counter[str] = collections.Counter()
    samples: list[str] = []
    latencies: list[float] = []
    plan = demo_plan(isolation)

    def table(handle: ServerHandle, elapsed: float) -> Table:
        view = Table(title=f"trio-supervise demo ({isolation}), {elapsed:4.1f}s")
        for column in ("replica", "state", "generation", "in flight"):
            view.add_column(column)
        for status in handle.pool.statuses():
            view.add_row(status["name"], status["state"], str(status["generation"]),
                         str(status["in_flight"]))  # fmt: skip
        view.caption = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "starting"
        return view

    async def client(http: httpx.AsyncClient, index: int, stop: trio.Event) -> None:
        n = 0
        while not stop.is_set():
            prompt = PROMPTS[(index + n) % len(PROMPTS)]
            body = {
                "prompt": prompt,
                "max_tokens": 24,
                "temperature": 0.7,
                "seed": index * 1000 + n,
            }
            n += 1
            started = time.perf_counter()
            response = await http.post("/v1/completions", json=body)
            if response.status_code == 200:
                counts["finished"] += 1
                latencies.append(time.perf_counter() - started)
                if len(samples) < 3:
                    samples.append(prompt + response.json()["choices"][0]["text"])
            else:
                counts[f"HTTP {response.status_code} {response.json()['error']['type']}"] += 1

    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, demo_config(isolation, plan, model))
        stop = trio.Event()
        start = time.perf_counter()
        async with httpx.AsyncClient(base_url=handle.url, timeout=30) as http:
            with Live(table(handle, 0.0), console=console, refresh_per_second=8,
                      transient=not live) as view:  # fmt: skip
                async with trio.open_nursery() as clients:
                    for index in range(8):
                        clients.start_soon(client, http, index, stop)
                    while time.perf_counter() - start < seconds:
                        await trio.sleep(0.125)
                        view.update(table(handle, time.perf_counter() - start))
                    stop.set()
                view.update(table(handle, time.perf_counter() - start))
        restarts = sum(s["restarts"] for s in handle.pool.statuses())
        handle.drain()
    summary = Table(title="summary", show_header=False)
    summary.add_row("faults injected", repr(plan))
    summary.add_row("restarts", str(restarts))
    for outcome, count in sorted(counts.items()):
        summary.add_row(outcome, str(count))
    if latencies:
        latencies.sort()
        summary.add_row("latency p50", f"{latencies[len(latencies) // 2] * 1e3:.0f} ms")
    for text in samples:
        summary.add_row("sample", text.replace("\n", " "))
    console.print(summary)
    return {"finished": counts["finished"], "counts": dict(counts), "restarts": restarts}
