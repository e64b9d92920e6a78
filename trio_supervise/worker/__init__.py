"""The stable parent worker: the handle callers keep while the tier below it restarts.

* ``_worker``: :class:`Worker`, its settlement of each decision, and the operator's commands.
* ``_loop``: the worker's restart loop: tier incarnations under its policy, each decision
  settled before its event is emitted.
* ``_children``: where a process- or Ray-isolated worker's tiers live.
* ``_open_worker``: ``open_worker``, a worker for the body of an ``async with``.
* ``_admission``: accepted requests and the queue of jobs the tier takes from.
* ``_settlement``: what becomes of the requests on a tier that ended.
* ``_options``: a worker's options, checked once.
* ``_state``: the worker's states and statistics.
"""
