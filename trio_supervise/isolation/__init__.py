"""Where a worker's child tier lives: inline (this process) or, being built, a child process.

``_frames`` is the wire protocol of the process tier: length-prefixed msgspec frames.
"""
