"""Tests of ``trio_supervise.isolation``: frames, the process tier, the Ray tier."""
