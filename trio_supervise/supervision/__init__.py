"""Supervision, generic: it knows nothing of inference, devices or requests.

* ``_policy``: the pure restart policy (a decider from exception to directive, the OTP restart
  intensity window, backoff with jitter), sans-I/O.
* ``_events``: every decision as an immutable :class:`SupervisionEvent`, for observers only.
* ``_supervised``: ``supervised(child, policy)``, one child restarted in the caller's task.
* ``_supervisor``: :class:`Supervisor`, many children with OTP strategies.
* ``_errors``: the errors of supervision itself, the root of the library's taxonomy.
"""
