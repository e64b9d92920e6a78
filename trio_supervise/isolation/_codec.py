"""Frames as bytes: msgpack payloads, length-prefixed on a byte stream.

A child process's socket is a byte stream: there each frame is a 4-byte big-endian length, then
that many bytes of msgpack (:func:`encode`, split again by a :class:`FrameReader`). Ray delimits
what it carries itself: a call's argument or result is one payload (:func:`pack`,
:func:`unpack`), and one item of a batch's stream is one payload that holds every frame that was
waiting (:func:`pack_all`, :func:`unpack_all`), decoded at once with no re-framing.

A length over :data:`~._frames.MAX_FRAME` (16 MiB), or bytes that do not decode to a known
message, is a :class:`MalformedFrame`: the parent treats the child as dead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ._frames import MAX_FRAME, Message, Reply

__all__ = [
    "UNENCODABLE",
    "FrameReader",
    "MalformedFrame",
    "encode",
    "encoding_problem",
    "pack",
    "pack_all",
    "unpack",
    "unpack_all",
]


class MalformedFrame(Exception):
    """Bytes that are not a valid frame."""


_encoder = msgspec.msgpack.Encoder()
_to_child = msgspec.msgpack.Decoder(Message)
_to_parent = msgspec.msgpack.Decoder(Reply)
_to_parent_all = msgspec.msgpack.Decoder(list[Reply])

UNENCODABLE = (OverflowError, UnicodeEncodeError, MalformedFrame)
"""What :func:`encode` and :func:`pack` raise for a message a frame cannot carry (an int beyond
64 bits, a lone surrogate, over :data:`~._frames.MAX_FRAME`), before anything is sent."""


def encoding_problem(data: msgspec.Struct) -> str | None:
    """Why ``data`` cannot travel in a frame, or None when it can."""
    try:
        pack(data)
    except UNENCODABLE as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def pack(message: msgspec.Struct) -> bytes:
    """The payload of one frame (no length prefix), for a carrier that delimits it.

    Raises:
        OverflowError, UnicodeEncodeError, MalformedFrame: see :data:`UNENCODABLE`.
    """
    payload = _encoder.encode(message)
    if len(payload) > MAX_FRAME:
        raise MalformedFrame(f"a frame of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
    return payload


def encode(message: msgspec.Struct) -> bytes:
    """A whole frame for a byte stream: the length prefix, then :func:`pack`'s payload.

    Raises:
        OverflowError, UnicodeEncodeError, MalformedFrame: see :data:`UNENCODABLE`.
    """
    payload = pack(message)
    return len(payload).to_bytes(4, "big") + payload


def pack_all(replies: Sequence[msgspec.Struct]) -> bytes:
    """Several child-to-parent frames as one payload (one item of a Ray stream).

    Each frame is held to :data:`~._frames.MAX_FRAME`, as on a pipe; the payload may hold more.

    Raises:
        MalformedFrame: one of the frames is over the limit.
    """
    payload = _encoder.encode(replies)
    if len(payload) > MAX_FRAME:  # rare: find the frame over the limit, if one is
        for reply in replies:
            pack(reply)
    return payload


def _decode(decoder: msgspec.msgpack.Decoder[Any], payload: bytes) -> Any:
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise MalformedFrame(f"undecodable frame ({exc}): {payload[:64]!r}") from exc


def unpack(payload: bytes, *, from_child: bool) -> Any:
    """One frame back from :func:`pack`'s payload.

    Raises:
        MalformedFrame: the payload is not a known message of that direction.
    """
    return _decode(_to_parent if from_child else _to_child, payload)


def unpack_all(payload: bytes) -> list[Any]:
    """The child-to-parent frames back from :func:`pack_all`'s payload.

    Raises:
        MalformedFrame: the payload is not a list of known messages.
    """
    messages: list[Any] = _decode(_to_parent_all, payload)
    return messages


class FrameReader:
    """Splits a byte stream into decoded messages; feed it bytes as they arrive."""

    def __init__(self, *, from_child: bool) -> None:
        self._decoder = _to_parent if from_child else _to_child
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Add ``data``; return the messages it completed.

        Raises:
            MalformedFrame: an oversized length, or a payload that is not a known message.
        """
        self._buffer += data
        messages = []
        while len(self._buffer) >= 4:
            size = int.from_bytes(self._buffer[:4], "big")
            if size > MAX_FRAME:
                head = bytes(self._buffer[:16])
                raise MalformedFrame(
                    f"frame length {size} exceeds {MAX_FRAME} (first bytes: {head!r})"
                )
            if len(self._buffer) < 4 + size:
                break
            payload = bytes(self._buffer[4 : 4 + size])
            del self._buffer[: 4 + size]
            messages.append(_decode(self._decoder, payload))
        return messages

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer)
