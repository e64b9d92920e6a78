"""Tests of ``trio_supervise.worker``: the stable handle, its outcomes and properties."""
