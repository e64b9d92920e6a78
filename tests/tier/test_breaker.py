"""The circuit breaker, driven with explicit times (no clock, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trio_supervise as ts
from trio_supervise import BreakerState, CircuitBreaker


def test_opens_after_consecutive_failures_then_probes_and_closes() -> None:
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(failures=3, reset_timeout=5.0, on_change=lambda *c: changes.append(c))
    for now in (0.0, 1.0):
        breaker.before_call(now)
        breaker.record_failure(now)
    breaker.before_call(1.5)
    breaker.record_success()  # a success in between resets the count
    for now in (2.0, 3.0, 4.0):
        breaker.before_call(now)
        breaker.record_failure(now)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(
        ts.CircuitOpen, match=r"open after 3 failures; it tries again in 3s"
    ) as info:
        breaker.before_call(6.0)
    assert info.value.retryable and info.value.retry_after == pytest.approx(3.0)
    breaker.before_call(9.0)  # reset_timeout passed: one probe goes through
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(ts.CircuitOpen, match=r"probing"):
        breaker.before_call(9.1)  # only one at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_a_failed_probe_opens_it_again_for_a_full_timeout() -> None:
    breaker = CircuitBreaker(failures=1, reset_timeout=2.0)
    breaker.before_call(0.0)
    breaker.record_failure(0.0)
    breaker.before_call(2.0)
    breaker.record_failure(2.5)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(ts.CircuitOpen):
        breaker.before_call(4.0)
    breaker.before_call(4.5)
    assert breaker.state is BreakerState.HALF_OPEN


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=60), st.integers(1, 5))
def test_it_never_lets_a_call_through_while_open(
    calls: list[tuple[bool, float]], failures: int
) -> None:
    breaker = CircuitBreaker(failures=failures, reset_timeout=1.0)
    now = 0.0
    for ok, dt in calls:
        now += dt
        was_open = breaker.state is BreakerState.OPEN
        opened_at = breaker._opened_at
        try:
            breaker.before_call(now)
        except ts.CircuitOpen:
            assert breaker.state is not BreakerState.CLOSED
            continue
        assert not (was_open and now < opened_at + 1.0)
        if ok:
            breaker.record_success()
            assert breaker.state is BreakerState.CLOSED
        else:
            breaker.record_failure(now)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ts.ConfigError, match=r"^breaker failures must be >= 1, got 0$"):
        CircuitBreaker(failures=0)
    with pytest.raises(ts.ConfigError, match=r"^breaker reset_timeout must be a finite number"):
        CircuitBreaker(reset_timeout=float("inf"))


def test_only_the_probe_is_told_so_and_a_released_probe_frees_its_slot() -> None:
    breaker = CircuitBreaker(failures=1, reset_timeout=5.0)
    assert breaker.before_call(0.0) is False  # closed: no probe
    breaker.record_failure(0.0)
    assert breaker.before_call(5.0) is True  # the half-open probe
    with pytest.raises(ts.CircuitOpen, match="probing"):
        breaker.before_call(5.1)  # one probe at a time
    breaker.release()  # the probe was cancelled: nothing to count, the slot is free
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.before_call(5.2) is True
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
