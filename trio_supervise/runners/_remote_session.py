"""A :class:`~.remote.RemoteRunner`'s HTTP sessions: the key each one sends (read again for
every new one), its client, and the closing of a retired one after its last stream.

The key (``api_key_env`` or ``api_key_file``) goes only into a client's ``Authorization``
header; every key sent is kept, so that what a server echoes can be scrubbed of it.
"""

from __future__ import annotations

import os
from typing import final

import httpx
import trio

from .._errors import Unauthorized, Unrecoverable

__all__ = ["Session", "Sessions"]


@final
class Session:
    """One HTTP client and the streams using it; a retired one closes when the last ends."""

    __slots__ = ("client", "retired", "users")

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.users = 0
        self.retired = False


@final
class Sessions:
    """The sessions of one runner: the current one, and retired ones still streaming."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout,
        max_connections: int,
        api_key_env: str | None,
        api_key_file: str | None,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.max_connections = max_connections
        self.api_key_env = api_key_env
        self.api_key_file = api_key_file
        self.current: Session | None = None
        self._open: set[Session] = set()
        self._keys: set[str] = set()  # every key sent, to scrub from what servers echo

    async def read_key(self) -> str | None:
        """The key, read now (``None`` without one).

        Raises:
            Unrecoverable: ``api_key_env`` is not set.
            Unauthorized: ``api_key_file`` cannot be read, or is empty.
        """
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise Unrecoverable(
                    f"api_key_env={self.api_key_env!r}: that environment variable is not set"
                )
            return key.strip()
        if self.api_key_file is not None:
            try:  # a mounted secret may sit on a slow filesystem: not on the event loop
                key = (await trio.Path(self.api_key_file).read_text()).strip()
            except OSError as exc:
                raise Unauthorized(
                    f"cannot read api_key_file {self.api_key_file!r}: {exc.strerror}"
                ) from None
            if not key:
                raise Unauthorized(f"api_key_file {self.api_key_file!r} is empty")
            return key
        return None

    def scrub(self, text: str) -> str:
        """``text`` (a server's words) with any key this runner sent replaced by ``***``."""
        for key in self._keys:
            text = text.replace(key, "***")
        return text

    async def open(self) -> Session:
        """A new session, with the key read now (the current one is left as it is)."""
        key = await self.read_key()
        if key is not None:
            self._keys.add(key)
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
        )
        session = Session(client)
        self._open.add(session)
        return session

    async def replace(self) -> None:
        """Make a new session current; the old one closes after its last stream."""
        new = await self.open()
        old, self.current = self.current, new
        if old is not None:
            old.retired = True
            if old.users == 0:
                await self._close(old)

    async def release(self, session: Session) -> None:
        """A stream stopped using ``session``."""
        session.users -= 1
        if session.retired and session.users == 0:
            await self._close(session)

    async def aclose(self) -> None:
        """Close every client."""
        self.current = None
        for session in list(self._open):
            await self._close(session)

    async def _close(self, session: Session) -> None:
        self._open.discard(session)
        with trio.CancelScope(shield=True):
            await session.client.aclose()
