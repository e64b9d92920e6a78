"""The Ray tier: a worker's runner in a Ray actor, placed by Ray on any node of a cluster.

* ``_home``: :class:`RaySpec`, :class:`RayActors` (Ray, the bridge, the actors and a standby
  spare, for one worker) and :class:`RayHome` (one tier incarnation's actor, its frames and its
  heartbeat);
* ``_handle``: one actor from the parent's side (its handle, where it runs, whether it died);
* ``_actor``: the actor itself, in a Ray worker process: the runner in a Trio loop of its own,
  driven by the same :class:`~.._host.RunnerHost` as a child process;
* ``_bridge``: :class:`Bridge`, Ray's results into Trio with no thread per call or chunk;
* ``_runtime``: the Ray this process uses, joined or started once and shared
  (:func:`ray_runtime`, :func:`import_ray`, :data:`LOOPBACK_ENV`).

Ray is imported only when a Ray worker starts (:func:`import_ray`), never by this package.
"""

from ._bridge import Bridge
from ._handle import RayActor
from ._home import RayActors, RayHome, RaySpec
from ._runtime import LOOPBACK_ENV, RUNTIME, import_ray, ray_runtime

__all__ = [
    "LOOPBACK_ENV",
    "RUNTIME",
    "Bridge",
    "RayActor",
    "RayActors",
    "RayHome",
    "RaySpec",
    "import_ray",
    "ray_runtime",
]
