"""The child tier and its contract: what a worker restarts, and what crosses between them.

* ``_runner``: the model runner protocol (``load``, ``execute``, ``aclose``...), its attributes,
  and :data:`DEVICE_POLICY`, the policy a runner gets when it names none.
* ``_requests``: a request's state and buffer (``RequestState``) and the caller's
  :class:`RequestStream`; every request ends exactly once.
* ``_continuation``: what a cut stream delivered, so that a re-run goes on from there.
* ``_port``: the port a worker gives each incarnation (jobs down, callbacks and counts up).
* ``_home``: where a tier's runner lives: the ``RunnerHome`` protocol (load, teardown,
  placement) and ``InlineHome`` (this process); the process and Ray homes are in ``isolation/``.
* ``_tier``: one incarnation: its runner (from its home), dispatch of batches, a batch's failure.
* ``_breaker``: the circuit breaker a runner may keep for its backend; the tier reports it.
"""
