"""Tests of ``trio_supervise.supervision``: the policy, events, supervised, Supervisor."""
