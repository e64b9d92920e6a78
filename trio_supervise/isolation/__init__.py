"""Where a worker's child tier lives when it is not inline: a child process (``process``) or
a Ray actor on any node of a cluster (``ray``).

``_frames`` is the wire protocol of both: msgspec frames, length-prefixed on a child process's
pipe; what runs on the other side is in ``_child`` and ``_child_process`` (and ``_ray_actor``).
"""
