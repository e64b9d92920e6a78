"""``examples/grafana-dashboard.json``: an importable dashboard whose panels are well formed, whose
every metric name is one a served instance exposes at ``/metrics``, and on which every metric it
exposes appears (so a metric added to ``serve/metrics.py`` needs a panel, or a reason here)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import logged, restarting_once
from tests.support.helpers import start_server as start

DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana-dashboard.json"

PREFIX = "trio_supervise_"
NAME = re.compile(r"trio_supervise_[a-z0-9_]+")  # digits too: e2e_request_latency_seconds
SELECTOR = re.compile(r"(trio_supervise_[a-z0-9_]+)(\{[^}]*\})?")
MODEL_FILTER = 'model=~"$model"'

LEFT_OUT: dict[str, str] = {}
"""Metric families the server exposes that no panel shows, each with the reason (none yet)."""

SUFFIXES = (("_bucket", "histogram"), ("_count", "histogram"), ("_sum", "histogram"),
            ("_total", "counter"))  # fmt: skip
"""The sample suffixes a family's samples add to its name, for the family's type."""

CHARTED_WITH_CREATED = {"counter", "histogram"}
"""The types prometheus_client gives a ``<family>_created`` gauge (its creation time)."""


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, and those folded inside a collapsed row."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", ()))
    return found


def graphs(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data (not the rows)."""
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in graphs(dashboard) for t in p["targets"] if "expr" in t]


def test_the_dashboard_imports_with_a_prometheus_input_and_a_model_variable() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] == 39
    (source,) = dashboard["__inputs"]
    assert source["name"] == "DS_PROMETHEUS"
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    ours = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in graphs(dashboard):
        assert panel["datasource"] == ours, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", ours) == ours, panel["title"]
    (model,) = [v for v in dashboard["templating"]["list"] if v["name"] == "model"]
    assert model["type"] == "query" and model["datasource"] == ours
    query = "label_values(trio_supervise_requests_total, model)"
    assert model["definition"] == query and model["query"]["query"] == query


def test_every_panel_has_a_unique_id_a_title_a_place_and_a_query() -> None:
    dashboard = load()
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        assert panel["title"], panel["id"]
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= pos.keys(), panel["title"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):  # no two panels overlap
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            assert any(t.get("expr") for t in panel["targets"]), panel["title"]
    assert "Supervision" in [p["title"] for p in panels if p["type"] == "row"]


def test_the_breaker_panel_maps_its_levels_to_their_names() -> None:
    (panel,) = [p for p in graphs(load()) if "circuit_breaker_state" in p["targets"][0]["expr"]]
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    names = {value: shown["text"] for value, shown in mapping["options"].items()}
    assert names == {"0": "closed", "1": "half-open", "2": "open"}


def family_of(name: str, families: dict[str, str]) -> str | None:
    """The family (of ``families``: name -> type) that ``name`` (a family's or a sample's name)
    belongs to; None: the server exposes no such metric."""
    if name in families:
        return name
    for suffix, kind in SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and families.get(base) == kind:
            return base
    return None


async def test_the_dashboard_queries_what_a_server_exposes_and_shows_all_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The first tier fails its first batch: a restart, a re-queued run, a time to READY, so the
    # supervisor's labelled series are there besides the per-request ones.
    caplog.set_level(logging.INFO, "trio_supervise.access")  # what `logged` below waits for
    cfg = restarting_once()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start(nursery, cfg)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
                # Metrics observe a request before its access line: wait for that line.
                with logged("id=dashboard-whole model=", "trio_supervise.access") as observed:
                    whole = await client.post(
                        "/v1/completions", json={"prompt": "x", "max_tokens": 2},
                        headers={"X-Request-Id": "dashboard-whole"},
                    )  # fmt: skip
                    await observed.wait()
                assert whole.status_code == 200
                with logged("id=dashboard-stream model=", "trio_supervise.access") as observed:
                    body = {"prompt": "y", "max_tokens": 4, "stream": True}
                    async with client.stream(
                        "POST", "/v1/completions", json=body,
                        headers={"X-Request-Id": "dashboard-stream"},
                    ) as reply:  # fmt: skip
                        lines = [line async for line in reply.aiter_lines() if line]
                    await observed.wait()
                assert lines[-1] == "data: [DONE]"
                text = (await client.get("/metrics")).text
            handle.drain()

    exposed = [f for f in text_string_to_metric_families(text) if f.name.startswith(PREFIX)]
    families = {f.name: f.type for f in exposed}
    samples = {s.name: f.name for f in exposed for s in f.samples}
    # The scrape has what the requests and the restart made, not only empty families.
    restarts = [s for f in exposed for s in f.samples if s.name == PREFIX + "worker_restarts_total"]
    assert [(s.labels, s.value) for s in restarts] == [
        ({"worker": "mock#0", "cause": "ContextPoisoned"}, 1.0)
    ]
    assert PREFIX + "inter_token_latency_seconds_count" in samples
    assert PREFIX + "restart_seconds_count" in samples

    dashboard = load()
    queries = exprs(dashboard) + [
        v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    used: set[str] = set()
    for expr in queries:
        for name in NAME.findall(expr):
            family = samples.get(name) or family_of(name, families)
            assert family is not None, f"{name} (in {expr!r}) is not served"
            used.add(family)

    # prometheus_client writes each counter's and histogram's creation time as a gauge family of
    # its own in the text format (``<family>_created``): a timestamp, not a metric to chart.
    created = {
        name for name, kind in families.items()
        if kind == "gauge" and families.get(name.removesuffix("_created")) in CHARTED_WITH_CREATED
    }  # fmt: skip
    missing = set(families) - used - created - set(LEFT_OUT)
    assert not missing, f"served but on no panel (add one, or a reason to LEFT_OUT): {missing}"
    assert not set(LEFT_OUT) & used, "a metric in LEFT_OUT is on a panel"
    assert set(LEFT_OUT) <= set(families), "a metric in LEFT_OUT is no longer served"

    # A panel on a metric labelled by model shows the models picked in $model.
    by_model = {f.name for f in exposed if any("model" in s.labels for s in f.samples)}
    assert by_model >= {PREFIX + "requests", PREFIX + "num_requests_running"}
    for expr in exprs(dashboard):
        for name, labels in SELECTOR.findall(expr):
            if (samples.get(name) or family_of(name, families)) in by_model:
                assert MODEL_FILTER in labels, f"{name} not filtered by model in {expr!r}"
