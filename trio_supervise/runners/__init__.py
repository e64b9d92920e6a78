"""Model runners that ship with trio-supervise (import each from its module; a config names
one as ``"trio_supervise.runners.mock:MockRunner"``).

* ``mock``: :class:`~trio_supervise.runners.mock.MockRunner`, deterministic tokens from the
  request's seed, with knobs for delays and faults: the stand-in for a model in tests and demos.
* ``charlm``: :class:`~trio_supervise.runners.charlm.CharLM`, a small character-level language
  model in NumPy (weights shipped), batched continuously.
* ``_stepping``: continuous batching without a task of its own, for both of those;
  ``_sampling``: CharLM's sampling on the host (the extra sampling fields, log probabilities).
* ``remote``: :class:`~trio_supervise.runners.remote.RemoteRunner`, a model behind an
  OpenAI-compatible server, over HTTP (the OpenAI codec in ``trio_supervise.openai``);
  ``_remote_session`` holds its HTTP sessions and keys, ``_remote_stream`` one request's
  exchange.
"""
