"""Where an isolated worker's tiers live: its child processes, or its Ray actors.

A worker with ``isolation="process"`` or ``"ray"`` opens its processes (or actors) once, for
all its tier incarnations (a spare may be parked there between them). Built from the worker's
options only, it imports :mod:`..isolation.process` or :mod:`..isolation.ray` lazily, so that
an inline worker never does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..supervision import Policy
from ._options import WorkerOptions

if TYPE_CHECKING:
    from ..isolation.process import ChildProcesses, ProcessSpec
    from ..isolation.ray import RayActors

__all__ = ["open_children"]


@contextlib.asynccontextmanager
async def open_children(
    options: WorkerOptions,
) -> AsyncIterator[tuple[ChildProcesses | RayActors, Policy | None]]:
    """Open the processes (or actors) of an isolated worker's tiers, its spare started.

    Yields them, and the runner's own ``default_policy`` when the options say to learn it
    from a probe (no policy was given; the parent never imports the runner), else ``None``.
    """
    from ..isolation import _frames

    opened: contextlib.AbstractAsyncContextManager[ChildProcesses | RayActors]
    if options.isolation == "ray":
        from ..isolation.ray import RayActors, RaySpec

        spec = RaySpec(
            _process_spec(options), options.ray_options, options.ray_address, options.ray_frames
        )
        opened = RayActors.open(spec)
    else:
        from ..isolation.process import ChildProcesses

        opened = ChildProcesses.open(_process_spec(options))
    async with opened as children:
        policy: Policy | None = None
        if options.probe_policy:
            ready = await children.probe()
            if ready.policy is not None:
                policy = _frames.policy_from_data(ready.policy)
        children.replenish_spare()
        yield children, policy


def _process_spec(options: WorkerOptions) -> ProcessSpec:
    from ..isolation.process import ProcessSpec

    o = options
    assert isinstance(o.device, str)
    return ProcessSpec(
        o.name, o.factory_path, o.runner_args, o.device, o.readiness_timeout,
        o.heartbeat_timeout, o.standby, o.standby_load,
    )  # fmt: skip
