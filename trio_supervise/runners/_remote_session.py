"""A :class:`~.remote.RemoteRunner`'s HTTP sessions: the key each one sends (read again for
every new one), its clients, and the closing of a retired one after its last stream.

A session's connections are spread over small clients of :data:`POOL_CONNECTIONS` each, made as
the streams at once need them: httpx's pool (httpcore's) looks over every connection it holds
at each request and each response's end, so one client of 32 busy connections spends about
twice the CPU a request that eight clients of four do (measured in ``docs/benchmarks.md``).
A stream takes the client with the fewest streams for its connections.

The key (``api_key_env`` or ``api_key_file``) goes only into a client's ``Authorization``
header; every key sent is kept, so that what a server echoes can be scrubbed of it.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Callable
from typing import final

import httpx
import trio

from .._errors import Unauthorized, Unrecoverable

__all__ = ["POOL_CONNECTIONS", "Session", "Sessions"]

POOL_CONNECTIONS = 4
"""Connections per client of a session (see the module docstring)."""


@final
class Session:
    """The HTTP clients of one key and the streams using them; a retired session closes when
    its last stream ends."""

    __slots__ = ("_make", "_sizes", "active", "clients", "retired", "users")

    def __init__(self, make: Callable[[int], httpx.AsyncClient], connections: int) -> None:
        self._make = make
        whole, rest = divmod(connections, POOL_CONNECTIONS)
        self._sizes = [POOL_CONNECTIONS] * whole + ([rest] if rest else [])
        self.clients = [make(self._sizes[0])]
        self.active = [0]  # streams on each client
        self.users = 0
        self.retired = False

    @property
    def client(self) -> httpx.AsyncClient:
        """The first client (for a call outside the streams: the model list)."""
        return self.clients[0]

    @property
    def closed(self) -> bool:
        return all(client.is_closed for client in self.clients)

    def lease(self) -> int:
        """The client a new stream takes (its index): the one with the fewest streams for its
        connections, or a new one when each is full and the session may have more."""
        active, sizes = self.active, self._sizes
        index = min(range(len(active)), key=lambda i: active[i] / sizes[i])
        if active[index] >= sizes[index] and len(active) < len(sizes):
            self.clients.append(self._make(sizes[len(active)]))
            active.append(0)
            index = len(active) - 1
        active[index] += 1
        return index

    def give_back(self, index: int) -> None:
        """A stream on client ``index`` ended."""
        self.active[index] -= 1


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
        self._tls_context: ssl.SSLContext | None = None

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
        verify = await self._tls()

        def make(connections: int) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=self.timeout,
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
                verify=verify,
            )

        session = Session(make, self.max_connections)
        self._open.add(session)
        return session

    async def _tls(self) -> ssl.SSLContext:
        """One TLS context for every client of the runner: each client would otherwise load
        the CA bundle, about 40 ms of the event loop each (httpx builds one for a plain
        ``http://`` server too)."""
        if self._tls_context is None:
            # Loading the CA bundle takes about 40 ms: not on the event loop.
            self._tls_context = await trio.to_thread.run_sync(httpx.create_ssl_context)
        return self._tls_context

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
            async with contextlib.AsyncExitStack() as stack:  # each one closed, whatever raises
                for client in session.clients:
                    stack.push_async_callback(client.aclose)
