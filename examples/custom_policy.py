"""Compose a restart policy for your own runner and watch it decide, with no Trio and no clock.

Run it: ``python examples/custom_policy.py``.
"""

import attrs

import trio_supervise as ts
from trio_supervise import Backoff, Directive, RestartIntensity, on, rules


class TokenizerGlitch(Exception):
    """A failure of one request that leaves the model intact."""


# Start from the device default and put our own rule first: first match wins.
base = ts.DEVICE_POLICY.decider
assert isinstance(base, ts.Rules)
policy = attrs.evolve(
    ts.DEVICE_POLICY,
    decider=rules(on(TokenizerGlitch, Directive.RESUME), *base.rules, default=base.default),
    intensity=RestartIntensity(2, 30.0),
    backoff=Backoff(0.5, 8.0, jitter=0.25),
)


def main() -> list[ts.Decision]:
    print(policy)
    state = policy.initial_state(seed=42)
    now = 0.0
    decisions = []
    failures = [
        (3.0, TokenizerGlitch("bad utf-8 in prompt")),
        (1.0, ts.ContextPoisoned("illegal address")),
        (1.0, ts.ContextPoisoned("illegal address")),
        (40.0, ts.ContextPoisoned("illegal address")),  # the window has emptied by now
        (1.0, ts.ContextPoisoned("illegal address")),
        (1.0, ts.ContextPoisoned("illegal address")),
    ]
    for ran_for, error in failures:
        state = policy.on_started(state, now)
        now += ran_for
        decision, state = policy.on_failure(state, error, now)
        decisions.append(decision)
        print(f"t={now:6.2f}  {decision.directive.name:<8} wait {decision.delay:5.2f}s  ", end="")
        print(decision.reason)
        if decision.directive in (Directive.STOP, Directive.ESCALATE):
            break
        now += decision.delay
    return decisions


if __name__ == "__main__":
    main()
