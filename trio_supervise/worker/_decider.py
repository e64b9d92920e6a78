"""The worker's decider: an operator's restart is resumed (uncounted), the rest as its policy's
decider says."""

from __future__ import annotations

import attrs

from ..supervision import Decider, Directive, decide
from ..tier._tier import RestartRequested

__all__ = ["WorkerDecider"]


@attrs.define(frozen=True)
class WorkerDecider:
    """The worker's decider: an operator restart is resumed (uncounted), the rest as given."""

    inner: Decider

    def __call__(self, exc: Exception) -> Directive:
        if isinstance(exc, RestartRequested):
            return Directive.RESUME
        return decide(self.inner, exc)

    def __repr__(self) -> str:
        return repr(self.inner)
