"""API keys: which requests must carry one, and whether the one a request carries is good.

A server asks for a key when ``[server] api_keys``, the lines of ``[server] api_key_file``
(blank lines and ``#`` comments left out) or the ``TRIO_SUPERVISE_API_KEY`` environment variable
give any. A request then sends ``Authorization: Bearer <key>`` (as the OpenAI clients do) on every
route but ``/healthz``, ``/readyz``, ``/version`` and (unless ``metrics_need_key``) ``/metrics``;
without a good one it gets a 401 with ``WWW-Authenticate: Bearer``. The key sent is compared with
every key in constant time (``hmac.compare_digest``, each one, whatever matched first), and no
key, good or bad, is ever logged, echoed in an error or shown.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from typing import final

from .._errors import ConfigError
from ._config_reading import read_small_file
from ._config_tables import ServerConfig

__all__ = ["ENV_VAR", "OPEN_PATHS", "ApiKeys", "load_api_keys"]

ENV_VAR = "TRIO_SUPERVISE_API_KEY"
"""The environment variable that may hold one key."""

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/version"})
"""Routes answered without a key (an orchestrator's probes, the version)."""

_MAX_KEY_FILE = 1 << 20


@final
class ApiKeys:
    """The keys a server accepts (at least one)."""

    def __init__(self, keys: frozenset[bytes], *, metrics_need_key: bool = False) -> None:
        if not keys:
            raise ValueError("ApiKeys needs at least one key")
        self._keys = tuple(keys)
        self.metrics_need_key = metrics_need_key

    def __repr__(self) -> str:
        return f"<ApiKeys: {len(self._keys)} keys>"  # never the keys

    def needed(self, path: str) -> bool:
        """Whether a request for ``path`` must carry a key."""
        if path in OPEN_PATHS:
            return False
        return path != "/metrics" or self.metrics_need_key

    def accepts(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header carries one of the keys (``Bearer <key>``)."""
        if authorization is None:
            return False
        scheme, _, sent = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        sent = sent.strip()
        good = False
        for key in self._keys:  # every key compared: the time says nothing of which matched
            good |= hmac.compare_digest(sent, key)
        return good


def load_api_keys(server: ServerConfig, environ: Mapping[str, str] = os.environ) -> ApiKeys | None:
    """The keys ``server`` and the environment give, or None where there are none.

    Raises:
        ConfigError: the key file cannot be read, or a key in it or in the environment is not
            printable text (the key itself is not shown).
    """
    keys = {key.encode() for key in server.api_keys}
    path = server.api_key_file
    if path is not None:
        raw = read_small_file(path, _MAX_KEY_FILE, "the API key file")
        try:
            lines = raw.decode().splitlines()
        except UnicodeDecodeError:
            raise ConfigError(f"the API key file {path!r} is not UTF-8 text") from None
        for number, line in enumerate(lines, 1):
            key = line.strip()
            if not key or key.startswith("#"):
                continue
            if not key.isprintable() or " " in key:
                raise ConfigError(
                    f"the API key file {path!r}, line {number}: a key must be printable text "
                    "with no space in it (the line is not shown)"
                )
            keys.add(key.encode())
    sent = environ.get(ENV_VAR, "").strip()
    if sent:
        if not sent.isprintable() or " " in sent:
            raise ConfigError(
                f"{ENV_VAR}: a key must be printable text with no space in it (not shown)"
            )
        keys.add(sent.encode())
    if not keys:
        return None
    return ApiKeys(frozenset(keys), metrics_need_key=server.metrics_need_key)
