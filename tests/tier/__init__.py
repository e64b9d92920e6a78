"""Tests of ``trio_supervise.tier``: one incarnation, continuation, the circuit breaker."""
