"""The fault-injection harness: prove that a runner or an app survives faults.

``FaultPlan`` says which fault fires where, ``FaultyRunner`` wraps any runner to inject them,
``run_chaos`` drives load through a worker while they fire and checks the invariants, and
``assert_survives`` fails a test with every violation listed. The pytest plugin (installed with
the package) adds the ``ts_mock_runner``, ``ts_fault_plan`` and ``ts_chaos`` fixtures.
"""

from ._chaos import run_chaos
from ._faulty import FaultyRunner, InjectedError
from ._invariants import REMOTE_FAULT_ERRORS, Violation
from ._plan import Fault, FaultPlan, Trigger
from ._report import ChaosReport, assert_survives

__all__ = [
    "REMOTE_FAULT_ERRORS",
    "ChaosReport",
    "Fault",
    "FaultPlan",
    "FaultyRunner",
    "InjectedError",
    "Trigger",
    "Violation",
    "assert_survives",
    "run_chaos",
]
