"""Tests of ``trio_supervise.serve``: config, pool, the HTTP API, hostile clients."""
