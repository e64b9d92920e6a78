"""``/v1/models``, ``/v1/models/{id}`` and ``/version``: the models a server serves, one of them
by its id, and the server's version (vLLM's shape).

A model object is ``{"id", "object": "model"}``, the same in the list and alone; an id that is
not served is a :class:`ModelNotFound` (404) that names the served models.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

from .._errors import ModelNotFound, shown

__all__ = [
    "MODELS_PATH",
    "MODEL_PREFIX",
    "VERSION_PATH",
    "model_named",
    "model_object",
    "models_body",
    "version_body",
]

MODELS_PATH = "/v1/models"
"""The list of models; ``/v1/models/{id}`` (:data:`MODEL_PREFIX` and the id) is one of them."""

MODEL_PREFIX = MODELS_PATH + "/"

VERSION_PATH = "/version"


def model_object(name: str) -> dict[str, Any]:
    """One model, as the list holds it and as ``/v1/models/{id}`` answers."""
    return {"id": name, "object": "model"}


def models_body(names: Sequence[str]) -> dict[str, Any]:
    """``GET /v1/models``: every model served."""
    return {"object": "list", "data": [model_object(name) for name in names]}


def model_named(name: str, names: Sequence[str]) -> dict[str, Any]:
    """``GET /v1/models/{id}``: the model of id ``name`` (the rest of the path, which may hold a
    ``/``, as ``org/model`` does).

    Raises:
        ModelNotFound: no model of that id is served (the message names those that are).
    """
    if name not in names:
        raise ModelNotFound(f"model {shown(name)} is not served here; models: {list(names)}")
    return model_object(name)


def _installed_version() -> str:
    """The installed distribution's version: ``trio_supervise.__version__``, which this layer
    may not import (tests/test_packaging.py checks that the two agree)."""
    try:
        return importlib.metadata.version("trio-supervise")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


_VERSION = _installed_version()


def version_body() -> dict[str, str]:
    """``GET /version``: the server's version, vLLM's shape."""
    return {"version": _VERSION}
