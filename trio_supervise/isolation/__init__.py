"""Where a worker's runner lives when it is not in the worker's process: a child process
(``process``) or a Ray actor on any node of a cluster (``ray``). Each is a home of the tier
(:class:`~trio_supervise.tier._home.RunnerHome`): the tier is the same, only where its runner
runs differs.

The parent's side:

* ``process``: :class:`~.process.ChildProcesses` (a worker's processes and its spare) and
  :class:`~.process.ProcessHome` (one incarnation's child process);
* ``ray/``: the same for Ray actors (:class:`~.ray.RayActors`, :class:`~.ray.RayHome`), with Ray's
  runtime and the bridge from Ray's futures to Trio;
* ``_child_process``: one child process, started, spoken to in frames, watched, stopped, reaped;
* ``_proxy``: the tier's stand-in for the runner that lives elsewhere (batches become frames);
* ``_spares``: a standby spare, parked in the background, for either home.

Both sides:

* ``_frames``: the messages that cross and how the values they carry become data;
* ``_codec``: frames as bytes (length-prefixed on a socket; whole payloads through Ray).

The runner's side: ``_host`` (:class:`~._host.RunnerHost`, and a child process's main loop) and
``ray/_actor`` (the actor that drives a ``RunnerHost`` in a Ray worker process).
"""
