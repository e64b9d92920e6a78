"""The decider: what to do about one failure, from its exception to a :class:`Directive`.

A decider is any callable ``exc -> Directive``; :func:`rules` builds the usual one from
:func:`on` rules, first match wins. :func:`decide` applies a decider with the rules every decider
shares: an ``ExceptionGroup`` gets the most severe directive of its leaves, and only
``Exception`` instances are decided (``trio.Cancelled``, ``KeyboardInterrupt`` and friends must
propagate, so deciding one raises ``TypeError``). Nothing here counts, waits or reads a clock:
that is the restart intensity's and the backoff's job (``_pacing``), and the policy's
(``_policy``) to put the three together.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeAlias, final

import attrs

from ._errors import InvalidPolicy, leaves

__all__ = ["Decider", "Directive", "Rule", "Rules", "decide", "on", "rules"]


class Directive(enum.IntEnum):
    """What to do about a failure, ordered by severity: ``max()`` picks the most severe."""

    RESUME = 0
    """Keep the resource; fail only the unit of work and go on."""
    RESTART = 1
    """Tear the child down and build a fresh one (counted against the intensity)."""
    STOP = 2
    """End the child for good, cleanly."""
    ESCALATE = 3
    """Fail the supervisor itself with the error, so its own supervisor decides."""

    def __repr__(self) -> str:
        return f"Directive.{self.name}"

    __str__ = __repr__


Decider: TypeAlias = Callable[[Exception], Directive]
"""Anything that maps an exception to a :class:`Directive`."""


def _refuse_non_exception(exc: object) -> None:
    if not isinstance(exc, Exception):
        name = type(exc).__name__
        raise TypeError(
            f"only Exception instances are decided; {name} must propagate, not be decided"
        )


def decide(decider: Decider, exc: Exception) -> Directive:
    """Apply ``decider`` to ``exc``, with the rules every decider shares.

    An ``ExceptionGroup`` gets the most severe directive of its leaves. A ``BaseException`` that
    is not an ``Exception`` (``trio.Cancelled``, ``KeyboardInterrupt``, a group holding one)
    raises ``TypeError``: it must propagate. A decider that returns something other than a
    :class:`Directive` raises :class:`InvalidPolicy`.
    """
    _refuse_non_exception(exc)
    if isinstance(exc, BaseExceptionGroup):
        return max(decide(decider, leaf) for leaf in leaves(exc) if isinstance(leaf, Exception))
    directive = decider(exc)
    if not isinstance(directive, Directive):
        raise InvalidPolicy(
            f"decider {decider!r} must return a Directive, got {directive!r} for {exc!r}"
        )
    return directive


@final
@attrs.frozen(repr=False)
class Rule:
    """One rule of a decider: exceptions of these types get this directive. Built by :func:`on`."""

    exception_types: tuple[type[Exception], ...]
    """The exception classes this rule matches (``isinstance``)."""
    directive: Directive
    """The directive for a match."""

    def matches(self, exc: BaseException) -> bool:
        """Whether ``exc`` is an instance of one of this rule's types."""
        return isinstance(exc, self.exception_types)

    def __repr__(self) -> str:
        names = ", ".join(t.__qualname__ for t in self.exception_types)
        return f"on({names}, {self.directive!r})"


def on(*types_then_directive: type[Exception] | Directive) -> Rule:
    """A rule: ``on(ContextPoisoned, HungWorker, Directive.RESTART)``.

    Every argument but the last is an ``Exception`` subclass; the last is the directive.
    """
    if len(types_then_directive) < 2:
        raise InvalidPolicy(
            "on() takes one or more exception types and then a Directive, "
            f"got {len(types_then_directive)} argument(s)"
        )
    types: tuple[object, ...] = types_then_directive[:-1]
    directive = types_then_directive[-1]
    checked: list[type[Exception]] = []
    if not isinstance(directive, Directive):
        raise InvalidPolicy(f"on()'s last argument must be a Directive, got {directive!r}")
    for t in types:
        if isinstance(t, type) and issubclass(t, Exception):
            checked.append(t)
            continue
        hint = ""
        if isinstance(t, type) and issubclass(t, BaseException):
            hint = " (a BaseException that is not an Exception must propagate)"
        raise InvalidPolicy(
            f"on() takes Exception subclasses before the directive, got {t!r}{hint}"
        )
    return Rule(tuple(checked), directive)


@final
@attrs.frozen(repr=False)
class Rules:
    """A decider made of rules, first match wins; ``default`` when none matches.

    Built by :func:`rules`. Rules compose as plain tuples: to override a decider, put your rules
    first, ``rules(on(MyError, Directive.RESUME), *base.rules, default=base.default)``.
    """

    rules: tuple[Rule, ...]
    """The rules, tried in order."""
    default: Directive
    """The directive when no rule matches."""

    def __call__(self, exc: Exception) -> Directive:
        """Decide ``exc`` (see :func:`decide` for groups and non-exceptions)."""
        if isinstance(exc, BaseExceptionGroup) or not isinstance(exc, Exception):
            return decide(self, exc)
        for rule in self.rules:
            if rule.matches(exc):
                return rule.directive
        return self.default

    def __repr__(self) -> str:
        parts = [repr(r) for r in self.rules]
        parts.append(f"default={self.default!r}")
        return f"rules({', '.join(parts)})"


def rules(*rules: Rule, default: Directive = Directive.ESCALATE) -> Rules:
    """A decider from :func:`on` rules: ``rules(on(OutOfMemory, Directive.RESUME))``."""
    for rule in rules:
        if not isinstance(rule, Rule):
            raise InvalidPolicy(f"rules() takes rules built by on(), got {rule!r}")
    if not isinstance(default, Directive):
        raise InvalidPolicy(f"rules()'s default must be a Directive, got {default!r}")
    return Rules(tuple(rules), default)
