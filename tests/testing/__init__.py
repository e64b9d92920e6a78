"""Tests of ``trio_supervise.testing``: the fault-injection harness."""
