import os

import pytest
import trio
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=100)
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _deterministic_trio_scheduling() -> None:
    """Trio shuffles each batch of runnable tasks with an unseeded generator (to shake out
    order assumptions); it hands that generator to Hypothesis for the same reason we seed it
    here: so that every run of a test schedules its tasks in the same order. A test must still
    pass whatever the order; the seed only makes a failure repeatable."""
    trio._core._run._r.seed(int(os.environ.get("TRIO_SCHEDULING_SEED", "0")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip cleanly where CuPy sees no CUDA device."""
    from trio_supervise.devices import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (cupy.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
