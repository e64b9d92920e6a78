"""Model-based test of the pure policy against a shadow model that is a plain list of times."""

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import trio_supervise as ts
from trio_supervise import Backoff, Directive, Policy, RestartIntensity, on, rules


class Resumable(Exception):
    pass


class Restartable(Exception):
    pass


class Fatal(Exception):
    pass


DIRECTIVE_OF = {
    Resumable: Directive.RESUME,
    Restartable: Directive.RESTART,
    Fatal: Directive.STOP,
}


class PolicyMachine(RuleBasedStateMachine):
    """Drives Policy through fail/advance/start; the shadow model only keeps restart times."""

    policy: Policy
    state: ts.PolicyState

    @initialize(
        max_restarts=st.integers(0, 6),
        within=st.sampled_from([0.5, 1.0, 2.5, 10.0, 60.0]),
        initial=st.sampled_from([0.0, 0.1, 1.0]),
        jitter=st.sampled_from([0.0, 0.5, 1.0]),
        seed=st.integers(0, 2**64 - 1),
    )
    def setup(
        self, max_restarts: int, within: float, initial: float, jitter: float, seed: int
    ) -> None:
        self.policy = Policy(
            rules(*(on(t, d) for t, d in DIRECTIVE_OF.items()), default=Directive.ESCALATE),
            RestartIntensity(max_restarts, within),
            Backoff(initial, initial * 8, jitter=jitter),
        )
        self.state = self.policy.initial_state(seed)
        self.now = 0.0
        # The shadow model: every counted restart time, and which ones were granted.
        self.counted: list[float] = []
        self.granted: list[float] = []
        self.gave_up = False
        self.stopped = False

    # Steps in fractions of the window, so that its exact edge comes up often.
    @rule(fraction=st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0, 1.5, 4.0]))
    def advance(self, fraction: float) -> None:
        self.now += fraction * self.policy.intensity.within

    @rule()
    def start(self) -> None:
        before = self.state.restarts
        self.state = self.policy.on_started(self.state, self.now)
        assert self.state.restarts == before, "a healthy start must never clear the window"

    @precondition(lambda self: not (self.gave_up or self.stopped))
    @rule(
        exc_type=st.sampled_from([None, Resumable, Restartable, Fatal, KeyError]),
        ready=st.booleans(),
    )
    def fail(self, exc_type: type[Exception] | None, ready: bool) -> None:
        error = None if exc_type is None else exc_type("boom")
        decision, self.state = self.policy.on_failure(self.state, error, self.now, ready=ready)

        expected = (
            Directive.RESTART
            if exc_type is None
            else DIRECTIVE_OF.get(exc_type, Directive.ESCALATE)
        )
        if expected is Directive.RESUME and not ready:
            expected = Directive.RESTART

        if expected is Directive.RESTART:
            within = self.policy.intensity.within
            window = [t for t in self.counted if t >= self.now - within] + [self.now]
            self.counted.append(self.now)
            gives_up = len(window) > self.policy.intensity.max_restarts
            assert decision.counted
            assert decision.gave_up is gives_up
            if gives_up:
                assert decision.directive is Directive.ESCALATE
                assert decision.delay == 0.0
                self.gave_up = True
            else:
                assert decision.directive is Directive.RESTART
                assert 0.0 <= decision.delay <= self.policy.backoff.maximum
                self.granted.append(self.now)
            assert list(self.state.restarts) == window
        else:
            assert decision.directive is expected
            assert not decision.counted, "only restarts are counted; RESUME never is"
            assert not decision.gave_up
            if expected is Directive.RESUME:
                assert 0.0 <= decision.delay <= self.policy.backoff.maximum
            else:
                assert decision.delay == 0.0
                self.stopped = True

    @invariant()
    def no_window_holds_more_than_max_restarts_granted(self) -> None:
        within = self.policy.intensity.within
        limit = self.policy.intensity.max_restarts
        for end in self.granted:
            in_window = [t for t in self.granted if end - within <= t <= end]
            assert len(in_window) <= limit

    @invariant()
    def state_window_matches_the_shadow_model(self) -> None:
        within = self.policy.intensity.within
        if self.counted:
            last = self.counted[-1]
            assert list(self.state.restarts) == [t for t in self.counted if t >= last - within]
        else:
            assert self.state.restarts == ()


TestPolicyMachine = PolicyMachine.TestCase
