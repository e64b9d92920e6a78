"""The pytest plugin of trio-supervise (entry point ``pytest11``).

It imports nothing heavy when pytest collects: the fixtures import the library when used.

Fixtures:
    ts_mock_runner: the ``MockRunner`` class (deterministic tokens, a factory for workers).
    ts_fault_plan: an empty ``FaultPlan``; combine constructors with ``+`` to build yours.
    ts_chaos: ``await ts_chaos(worker_factory, plan, requests=..., ...)`` runs ``run_chaos``
        with test-friendly defaults and fails the test, listing every violation, unless the
        worker survived; it returns the ``ChaosReport``.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def ts_mock_runner() -> Any:
    """The MockRunner class: deterministic tokens, configurable delay."""
    from trio_supervise.runners.mock import MockRunner

    return MockRunner


@pytest.fixture
def ts_fault_plan() -> Any:
    """An empty FaultPlan."""
    from trio_supervise.testing import FaultPlan

    return FaultPlan.none()


@pytest.fixture
def ts_chaos() -> Any:
    """``await ts_chaos(worker_factory, plan, **run_chaos_options) -> ChaosReport``, asserting
    that the worker survived."""
    from trio_supervise.testing import assert_survives, run_chaos

    async def chaos(worker_factory: Any, plan: Any, **options: Any) -> Any:
        options.setdefault("requests", 200)
        options.setdefault("concurrency", 16)
        options.setdefault("timeout", 60.0)
        report = await run_chaos(worker_factory, plan=plan, **options)
        assert_survives(report)
        return report

    return chaos
