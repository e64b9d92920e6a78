"""The pure restart policy: deciders, intensity window, backoff, and the Policy that joins them."""

import math

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trio_supervise as ts
from trio_supervise import Backoff, Directive, Policy, RestartIntensity, on, rules


class A(Exception):
    pass


class B(Exception):
    pass


class SubA(A):
    pass


EXCEPTION_TYPES = [A, B, SubA, ValueError, KeyError]
directives = st.sampled_from(list(Directive))
exception_types = st.sampled_from(EXCEPTION_TYPES)


# --- Directive -------------------------------------------------------------------------------


def test_directives_are_ordered_by_severity() -> None:
    assert Directive.RESUME < Directive.RESTART < Directive.STOP < Directive.ESCALATE
    assert max(Directive.RESTART, Directive.ESCALATE, Directive.RESUME) is Directive.ESCALATE
    assert repr(Directive.STOP) == "Directive.STOP"


# --- deciders --------------------------------------------------------------------------------


@given(
    st.lists(st.tuples(st.lists(exception_types, min_size=1, max_size=3), directives), max_size=6),
    directives,
    exception_types,
)
def test_first_matching_rule_wins(
    specs: list[tuple[list[type[Exception]], Directive]],
    default: Directive,
    exc_type: type[Exception],
) -> None:
    decider = rules(*(on(*types, d) for types, d in specs), default=default)
    exc = exc_type("boom")
    expected = next((d for types, d in specs if isinstance(exc, tuple(types))), default)
    assert decider(exc) is expected
    assert ts.decide(decider, exc) is expected


@st.composite
def exception_trees(draw: st.DrawFn, depth: int = 0) -> Exception:
    if depth >= 3 or draw(st.booleans()):
        return draw(exception_types)("leaf")
    children = draw(st.lists(exception_trees(depth + 1), min_size=1, max_size=4))
    return ExceptionGroup("group", children)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for child in exc.exceptions for leaf in _leaves(child)]
    return [exc]


@given(st.dictionaries(exception_types, directives, min_size=1), directives, exception_trees())
def test_a_group_gets_the_most_severe_directive_of_its_leaves(
    table: dict[type[Exception], Directive], default: Directive, tree: Exception
) -> None:
    decider = rules(*(on(t, d) for t, d in table.items()), default=default)
    expected = max(decider(leaf) for leaf in _leaves(tree))  # type: ignore[arg-type]
    assert decider(tree) is expected
    assert Policy(decider).decide(tree) is expected


NON_EXCEPTIONS = [
    KeyboardInterrupt(),
    SystemExit(1),
    GeneratorExit(),
    BaseExceptionGroup("g", [ValueError("x"), KeyboardInterrupt()]),
]


@given(st.sampled_from(NON_EXCEPTIONS), directives)
def test_non_exceptions_are_refused_because_they_must_propagate(
    exc: BaseException, default: Directive
) -> None:
    name = type(exc).__name__
    message = rf"^only Exception instances are decided; {name} must propagate, not be decided$"
    for decider in (rules(default=default), lambda e: default):
        with pytest.raises(TypeError, match=message):
            ts.decide(decider, exc)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=message):
            Policy(decider).on_failure(Policy(decider).initial_state(), exc, 0.0)  # type: ignore[arg-type]


async def test_trio_cancelled_is_refused() -> None:
    caught: list[BaseException] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            caught.append(exc)
            raise
    with pytest.raises(TypeError, match=r"^only Exception instances are decided; Cancelled must"):
        ts.DEVICE_POLICY.decide(caught[0])  # type: ignore[arg-type]


def test_a_plain_callable_is_a_decider() -> None:
    def decider(exc: Exception) -> Directive:
        return Directive.STOP if isinstance(exc, KeyError) else Directive.RESUME

    policy = Policy(decider)
    assert policy.decide(KeyError("k")) is Directive.STOP
    assert policy.decide(ExceptionGroup("g", [ValueError(), KeyError()])) is Directive.STOP
    decision, _ = policy.on_failure(policy.initial_state(), ValueError("v"), 0.0)
    assert decision.directive is Directive.RESUME


def test_a_decider_must_return_a_directive() -> None:
    policy = Policy(lambda exc: "restart")  # type: ignore[arg-type,return-value]
    with pytest.raises(ts.InvalidPolicy, match=r"must return a Directive, got 'restart' for "):
        policy.decide(ValueError("v"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), r"^on\(\) takes one or more exception types and then a Directive, got 0 argument"),
        ((A,), r"^on\(\) takes one or more exception types and then a Directive, got 1 argument"),
        ((A, B), r"^on\(\)'s last argument must be a Directive, got <class '.*B'>$"),
        ((int, Directive.STOP), r"^on\(\) takes Exception subclasses before the directive, got "),
        ((A(), Directive.STOP), r"^on\(\) takes Exception subclasses before the directive, got A"),
        (
            (KeyboardInterrupt, Directive.STOP),
            r"got <class 'KeyboardInterrupt'> \(a BaseException that is not an Exception must ",
        ),
    ],
)
def test_on_refuses_bad_arguments(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ts.InvalidPolicy, match=message):
        on(*args)  # type: ignore[arg-type]


def test_rules_refuses_bad_arguments() -> None:
    with pytest.raises(ts.InvalidPolicy, match=r"^rules\(\) takes rules built by on\(\), got 3$"):
        rules(3)  # type: ignore[arg-type]
    with pytest.raises(ts.InvalidPolicy, match=r"^rules\(\)'s default must be a Directive, got 1$"):
        rules(default=1)  # type: ignore[arg-type]


def test_reprs_read_like_the_calls_that_built_them() -> None:
    decider = rules(on(A, SubA, Directive.RESUME), on(ValueError, Directive.STOP))
    assert repr(decider) == (
        "rules(on(A, SubA, Directive.RESUME), on(ValueError, Directive.STOP), "
        "default=Directive.ESCALATE)"
    )
    assert repr(ts.DEVICE_POLICY) == (
        "Policy(decider=rules(on(ContextPoisoned, Directive.RESTART), "
        "on(OutOfMemory, Directive.RESUME), on(Unrecoverable, Directive.STOP), "
        "default=Directive.ESCALATE), intensity=RestartIntensity(max_restarts=3, within=60.0), "
        "backoff=Backoff.none())"
    )


backoffs = st.builds(
    lambda initial, extra, multiplier, jitter, reset_after: Backoff(
        initial, initial + extra, multiplier, jitter, reset_after
    ),
    st.floats(0, 10),
    st.floats(0, 100),
    st.floats(1, 4),
    st.floats(0, 1),
    st.none() | st.floats(0, 100),
)
policies = st.builds(
    Policy,
    st.builds(
        lambda specs, default: rules(*(on(t, d) for t, d in specs), default=default),
        st.lists(st.tuples(exception_types, directives), max_size=4),
        directives,
    ),
    st.builds(RestartIntensity, st.integers(0, 10), st.floats(0.001, 1000)),
    backoffs,
)


@given(policies)
def test_a_policy_repr_rebuilds_an_equal_policy(policy: Policy) -> None:
    namespace = {**vars(ts), "A": A, "B": B, "SubA": SubA}
    assert eval(repr(policy), namespace) == policy


def test_policies_are_values() -> None:
    slower = attrs.evolve(ts.DEVICE_POLICY, backoff=Backoff(1, 10))
    assert slower.decider is ts.DEVICE_POLICY.decider
    assert ts.DEVICE_POLICY.backoff == Backoff.none()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ts.DEVICE_POLICY.backoff = Backoff(1, 2)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decider": 3}, r"^decider must be callable \(exception -> Directive\), got 3$"),
        ({"intensity": (3, 60)}, r"^intensity must be a RestartIntensity, got \(3, 60\)$"),
        ({"backoff": 1.0}, r"^backoff must be a Backoff, got 1.0$"),
    ],
)
def test_policy_refuses_bad_parts(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"decider": rules(), **kwargs}
    with pytest.raises(ts.InvalidPolicy, match=message):
        Policy(**args)  # type: ignore[arg-type]


# --- restart intensity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 60), r"^max_restarts must be an int >= 0, got -1$"),
        ((1.5, 60), r"^max_restarts must be an int >= 0, got 1.5$"),
        ((True, 60), r"^max_restarts must be an int >= 0, got True$"),
        ((3, 0), r"^within must be a finite number > 0, got 0$"),
        ((3, -1), r"^within must be a finite number > 0, got -1$"),
        ((3, math.inf), r"^within must be a finite number > 0, got inf$"),
        ((3, "60"), r"^within must be a finite number > 0, got '60'$"),
    ],
)
def test_intensity_refuses_bad_arguments(args: tuple[object, object], message: str) -> None:
    with pytest.raises(ts.InvalidPolicy, match=message):
        RestartIntensity(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("max_restarts", "within", "times", "gives_up_at"),
    [
        # Restarts exactly `within` apart share a window: the edge is inclusive (OTP).
        (1, 10.0, [0.0, 10.0], 1),
        # Just past the edge, the old restart has left the window.
        (1, 10.0, [0.0, 10.5, 21.0, 31.5], None),
        # A failure exactly at the window's edge of the oldest of several.
        (2, 10.0, [0.0, 5.0, 10.0], 2),
        (2, 10.0, [0.0, 5.0, 10.25], None),
        # max_restarts=0: the first restart gives up.
        (0, 60.0, [0.0], 0),
        (0, 0.001, [100.0], 0),
        # Three within a minute are allowed, a fourth is not; a fifth never comes.
        (3, 60.0, [0.0, 1.0, 2.0, 3.0], 3),
        (3, 60.0, [0.0, 1.0, 2.0, 60.5, 61.0], 4),
        # Simultaneous restarts count one by one.
        (2, 1.0, [5.0, 5.0, 5.0], 2),
    ],
)
def test_intensity_window_edge_cases(
    max_restarts: int, within: float, times: list[float], gives_up_at: int | None
) -> None:
    intensity = RestartIntensity(max_restarts, within)
    window: tuple[float, ...] = ()
    gave_up = None
    for i, now in enumerate(times):
        window, exceeded = intensity.record(window, now)
        if exceeded:
            gave_up = i
            break
    assert gave_up == gives_up_at


def test_intensity_window_keeps_only_recent_times() -> None:
    intensity = RestartIntensity(5, 10.0)
    assert intensity.record((0.0, 4.0, 9.0), 14.0) == ((4.0, 9.0, 14.0), False)
    with pytest.raises(ValueError, match=r"^time must not go backwards: got now=1.0 after 4.0$"):
        intensity.record((0.0, 4.0), 1.0)


# --- backoff ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 5), r"^initial must be a finite number >= 0, got -1$"),
        ((1, math.nan), r"^maximum must be a finite number >= 0, got nan$"),
        ((6, 5), r"^initial must be <= maximum, got initial=6 > maximum=5$"),
        ((1, 5, 0.5), r"^multiplier must be a finite number >= 1, got 0.5$"),
        ((1, 5, 2, -0.1), r"^jitter must be a finite number >= 0, got -0.1$"),
        ((1, 5, 2, 1.5), r"^jitter must be a finite number in \[0, 1\], got 1.5$"),
        ((1, 5, 2, 0, -2), r"^reset_after must be a finite number >= 0, got -2$"),
    ],
)
def test_backoff_refuses_bad_arguments(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ts.InvalidPolicy, match=message):
        Backoff(*args)  # type: ignore[arg-type]


@given(backoffs, st.integers(0, 5000), st.integers(0, 2**64 - 1))
def test_backoff_delay_bounds(backoff: Backoff, streak: int, rng: int) -> None:
    delay, _ = backoff.delay(streak, rng)
    capped = backoff.capped(streak)
    assert 0 <= delay <= backoff.maximum
    assert delay <= capped
    assert delay >= (1 - backoff.jitter) * capped


@given(backoffs, st.integers(0, 200))
def test_backoff_grows_geometrically_up_to_the_cap(backoff: Backoff, streak: int) -> None:
    capped = backoff.capped(streak)
    assert capped == min(backoff.maximum, backoff.initial * backoff.multiplier**streak)
    following = backoff.capped(streak + 1)
    assert following >= capped
    if following < backoff.maximum:
        assert math.isclose(following, capped * backoff.multiplier, rel_tol=1e-9, abs_tol=1e-300)


def test_backoff_survives_huge_streaks() -> None:
    assert Backoff(1, 30).capped(10**6) == 30.0
    assert Backoff(0, 30).capped(10**6) == 0.0


@given(backoffs, st.integers(0, 2**64 - 1), st.lists(st.integers(0, 50), max_size=20))
def test_same_seed_same_delays(backoff: Backoff, seed: int, streaks: list[int]) -> None:
    def run(rng: int) -> list[float]:
        out = []
        for n in streaks:
            delay, rng = backoff.delay(n, rng)
            out.append(delay)
        return out

    assert run(seed) == run(seed)


def test_jitter_varies_with_the_generator() -> None:
    backoff = Backoff(1.0, 1.0, jitter=1.0)
    rng, delays = 0, set()
    for _ in range(100):
        delay, rng = backoff.delay(0, rng)
        delays.add(delay)
    assert len(delays) == 100
    assert 0.3 < sum(delays) / 100 < 0.7


def test_backoff_none_and_reset_after_default() -> None:
    assert Backoff.none() == Backoff(0, 0)
    assert repr(Backoff.none()) == "Backoff.none()"
    assert Backoff(1, 8).effective_reset_after == 8.0
    assert Backoff(1, 8, reset_after=2).effective_reset_after == 2.0
    assert repr(Backoff(0.5, 8, 3, 0.1, 2)) == (
        "Backoff(initial=0.5, maximum=8.0, multiplier=3.0, jitter=0.1, reset_after=2.0)"
    )


def _restart_delays(policy: Policy, schedule: list[tuple[float, float]]) -> list[float]:
    """Run a child that starts at `start` and fails at `fail` for each pair; return the delays."""
    state = policy.initial_state(seed=7)
    delays = []
    for started, failed in schedule:
        state = policy.on_started(state, started)
        decision, state = policy.on_failure(state, ts.ContextPoisoned("x"), failed)
        delays.append(decision.delay)
    return delays


def test_the_streak_grows_then_resets_after_a_healthy_run() -> None:
    policy = Policy(
        rules(on(ts.ContextPoisoned, Directive.RESTART)),
        RestartIntensity(100, 1.0),
        Backoff(1.0, 8.0, reset_after=5.0),
    )
    # Fail 1 s after each start: 1, 2, 4, 8, 8. Then a run of exactly 5 s resets the streak.
    schedule = [(0, 1), (2, 3), (5, 6), (10, 11), (19, 20), (28, 33), (34, 34.5), (35.5, 40.4)]
    assert _restart_delays(policy, schedule) == [1, 2, 4, 8, 8, 1, 2, 4]


@given(
    st.floats(0.01, 10),
    st.floats(1, 3),
    st.floats(0, 50),
    st.lists(st.floats(0, 100), min_size=1, max_size=15),
)
def test_streak_resets_exactly_after_reset_after_of_healthy_running(
    initial: float, multiplier: float, reset_after: float, runs: list[float]
) -> None:
    backoff = Backoff(initial, initial * 1000, multiplier, reset_after=reset_after)
    policy = Policy(rules(default=Directive.RESTART), RestartIntensity(1000, 0.001), backoff)
    state = policy.initial_state()
    now, streak = 0.0, 0
    for run in runs:
        state = policy.on_started(state, now)
        failed_at = now + run
        if failed_at - now >= reset_after:
            streak = 0
        decision, state = policy.on_failure(state, ValueError(), failed_at)
        assert decision.delay == backoff.capped(streak)
        streak += 1
        now = failed_at + decision.delay


# --- Policy ----------------------------------------------------------------------------------

WORKER = Policy(
    rules(
        on(ts.ContextPoisoned, Directive.RESTART),
        on(ts.OutOfMemory, Directive.RESUME),
        on(ts.Unrecoverable, Directive.STOP),
    ),
    RestartIntensity(2, 10.0),
    Backoff(0.5, 4.0),
)


def test_resume_is_not_counted_and_honours_retry_after() -> None:
    state = WORKER.on_started(WORKER.initial_state(), 0.0)
    for now in range(10):
        decision, state = WORKER.on_failure(state, ts.OutOfMemory("x", retry_after=0.75), now)
        assert decision.directive is Directive.RESUME
        assert (decision.delay, decision.counted, decision.gave_up) == (0.75, False, False)
    assert state.restarts == ()
    decision, state = WORKER.on_failure(state, ts.OutOfMemory("x"), 10.0)
    assert decision.delay == WORKER.backoff.capped(10)


def test_a_failure_before_ready_is_never_resumed() -> None:
    state = WORKER.on_started(WORKER.initial_state(), 0.0)
    decision, state = WORKER.on_failure(state, ts.OutOfMemory("x"), 1.0, ready=False)
    assert decision.directive is Directive.RESTART
    assert decision.counted
    assert state.restarts == (1.0,)
    assert "failed before it was ready" in decision.reason


def test_a_normal_return_is_a_counted_restart() -> None:
    state = WORKER.initial_state()
    decision, state = WORKER.on_failure(state, None, 1.0)
    assert (decision.directive, decision.counted) == (Directive.RESTART, True)
    assert decision.reason.startswith("a normal return: a permanent child returned")


def test_stop_and_escalate_are_immediate_and_uncounted() -> None:
    state = WORKER.initial_state()
    for exc, directive in (
        (ts.Unrecoverable("x"), Directive.STOP),
        (KeyError(), Directive.ESCALATE),
    ):
        decision, after = WORKER.on_failure(state, exc, 1.0)
        assert decision == ts.Decision(directive, 0.0, False, decision.reason)
        assert after.restarts == ()


def test_giving_up_escalates_with_a_reason() -> None:
    state = WORKER.initial_state()
    reasons = []
    for now in (0.0, 1.0, 2.0):
        decision, state = WORKER.on_failure(state, ts.ContextPoisoned("sticky"), now)
        reasons.append(decision.reason)
    assert decision.directive is Directive.ESCALATE
    assert decision.gave_up and decision.counted
    assert reasons[-1] == (
        "ContextPoisoned('sticky'): 3 restarts within 10s exceed max_restarts=2, "
        "so the supervisor gives up"
    )
    assert reasons[0] == (
        "ContextPoisoned('sticky'): the decider says RESTART; restart 1 of 2 within 10s, after 0.5s"
    )


def test_initial_state_takes_an_int_seed() -> None:
    assert WORKER.initial_state(5) == ts.PolicyState(rng=5)
    assert WORKER.initial_state(-1).rng == 2**64 - 1
    with pytest.raises(TypeError, match=r"^seed must be an int, got 1.5$"):
        WORKER.initial_state(1.5)  # type: ignore[arg-type]


def test_device_policy() -> None:
    policy = ts.DEVICE_POLICY
    assert policy.decide(ts.ContextPoisoned("x")) is Directive.RESTART
    assert policy.decide(ts.OutOfMemory("x")) is Directive.RESUME
    assert policy.decide(ts.Unrecoverable("x")) is Directive.STOP
    assert policy.decide(RuntimeError("x")) is Directive.ESCALATE
    assert policy.intensity == RestartIntensity(3, 60)
    assert policy.backoff == Backoff.none()


# --- restart types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "error", "directive", "counted"),
    [
        (ts.RestartType.PERMANENT, None, Directive.RESTART, True),
        (ts.RestartType.PERMANENT, ts.ContextPoisoned("x"), Directive.RESTART, True),
        (ts.RestartType.PERMANENT, ts.Unrecoverable("x"), Directive.STOP, False),
        (ts.RestartType.TRANSIENT, None, Directive.STOP, False),
        (ts.RestartType.TRANSIENT, ts.ContextPoisoned("x"), Directive.RESTART, True),
        (ts.RestartType.TRANSIENT, ts.OutOfMemory("x"), Directive.RESUME, False),
        (ts.RestartType.TEMPORARY, None, Directive.STOP, False),
        (ts.RestartType.TEMPORARY, ts.ContextPoisoned("x"), Directive.STOP, False),
        (ts.RestartType.TEMPORARY, ts.OutOfMemory("x"), Directive.STOP, False),
        (ts.RestartType.TEMPORARY, KeyError("x"), Directive.ESCALATE, False),
    ],
)
def test_on_exit_applies_the_restart_type(
    restart: ts.RestartType, error: Exception | None, directive: Directive, counted: bool
) -> None:
    state = WORKER.on_started(WORKER.initial_state(), 0.0)
    decision, after = WORKER.on_exit(state, error, 1.0, restart=restart)
    assert (decision.directive, decision.counted, decision.gave_up) == (directive, counted, False)
    assert after.restarts == ((1.0,) if counted else ())
    assert after.started_at is None


def test_on_exit_reasons_name_the_restart_type() -> None:
    state = WORKER.initial_state()
    decision, _ = WORKER.on_exit(state, None, 1.0, restart=ts.RestartType.TRANSIENT)
    assert decision.reason == "a transient child returned normally"
    decision, _ = WORKER.on_exit(state, ts.OutOfMemory("m"), 1.0, restart=ts.RestartType.TEMPORARY)
    assert decision.reason == (
        "OutOfMemory('m'): a temporary child is never restarted (the decider said RESUME)"
    )
