"""Shared fixtures: Hypothesis profiles, the session's local Ray, and the ``gpu`` skip.

Trio runs the tasks that are ready together in a random order, drawn afresh in every run, and
the tests must pass whatever the order: none seeds it. Inside a Hypothesis example the order is
Hypothesis's to seed (Trio registers its generator with ``hypothesis.register_random``), so an
example that fails replays with its order.
"""

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a test's Ray: on loopback
# Ray starts its workers at nice 15: beside busy processes at nice 0 (scripts/stress_suite.sh),
# an actor gets a few percent of a core, and one that imports PyTorch took 170 s to load instead
# of 5. The tests' Ray runs its workers at the tests' own priority.
os.environ.setdefault("RAY_worker_niceness", "0")
RAY_DAEMONS = ("raylet", "gcs_server")

# No deadline in either: a test asserts what happens, never how long it takes (a loaded machine
# may take seconds for an example).
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


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


RAY_HEALTH_CHECKS = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 4,
    "health_check_timeout_ms": 500,
    "health_check_initial_delay_ms": 0,
}
"""The session cluster's GCS declares a node that stopped answering dead after about 2 s (Ray's
default: about 15 s), so a test that kills a node sees its actors die soon; not sooner, so that
a node of a machine busy with other tests is not taken for dead."""


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One local Ray cluster for the session, on loopback with no dashboard: a head node of
    ``num_cpus=2`` that this process joins (``ray.cluster_utils.Cluster``, Ray's own test
    utility), to which a multi-node test adds nodes of its own and removes them.

    In-process tests use it as it is; a subprocess (an example, ``serve``) joins it with
    ``RAY_ADDRESS`` instead of starting a Ray of its own. None of its daemons is left after.
    """
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 2, "include_dashboard": False, "node_ip_address": "127.0.0.1",
            "_system_config": RAY_HEALTH_CHECKS}  # fmt: skip
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        ray.init(address=cluster.address)
        assert ray_processes(), "a local Ray starts its daemons as our children"
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # ends and reaps every node's daemons
    assert ray_processes() == []


@pytest.fixture(scope="session")
def ray_address(ray_cluster: Any) -> str:
    """The session cluster's address (what ``RAY_ADDRESS`` is set to for a subprocess)."""
    return str(ray_cluster.address)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip cleanly where CuPy sees no CUDA device."""
    from trio_supervise.devices import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (cupy.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
