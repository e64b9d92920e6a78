"""The stable parent worker: the handle callers keep while the tier below it restarts.

* ``_worker``: :class:`Worker`: tier after tier under ``supervise``, each decision settled in
  line before its event is emitted, and the operator's commands.
* ``_decider``: the worker's decider (an operator's restart is resumed, uncounted).
* ``_children``: where a process- or Ray-isolated worker's tiers live.
* ``_open_worker``: ``open_worker``, a worker for the body of an ``async with``.
* ``_admission``: accepted requests and the queue of jobs the tier takes from.
* ``_settlement``: what becomes of the requests on a tier that ended.
* ``_options``: a worker's options, checked once.
* ``_state``: the worker's states and statistics.
"""
