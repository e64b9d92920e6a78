import os
from collections.abc import Iterator

import pytest
import trio
from hypothesis import HealthCheck, settings

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a test's Ray: on loopback
RAY_DAEMONS = ("raylet", "gcs_server")

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


def ray_processes() -> list[int]:
    """Pids of Ray's own daemons that are children of this process (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and name in RAY_DAEMONS:
            found.append(int(entry))
    return found


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One local Ray for the session (``num_cpus=2``, loopback, no dashboard): its address.

    In-process tests use it as it is; a subprocess (an example, ``serve``) joins it with
    ``RAY_ADDRESS`` instead of starting a Ray of its own. None of its daemons is left after.
    """
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False)
    assert ray_processes(), "a local Ray starts its daemons as our children"
    yield str(ray.get_runtime_context().gcs_address)
    ray.shutdown()  # ends and reaps its daemons
    assert ray_processes() == []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip cleanly where CuPy sees no CUDA device."""
    from trio_supervise.devices import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (cupy.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
