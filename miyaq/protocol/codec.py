"""Encoding and decoding of protocol messages.

Decoding never trusts its input: anything that is not exactly
``[TAG, COMMAND, BODY]`` with a msgpack map body under the size limit raises
a :class:`~miyaq.errors.ProtocolError` subclass whose code goes back to the
sender. The task payload (``body`` inside a task) is opaque bytes here.
"""
from __future__ import annotations

from typing import Any, Sequence

import msgpack

from miyaq.errors import BadEncoding, BadFrame, BadVersion, TooLarge, UnknownCommand
from miyaq.protocol.commands import FRAMES, TAG

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    """msgpack with bin type for bytes and str for text."""
    return _packer.pack(obj)


def unpack(data: bytes, max_size: int) -> Any:
    """Decode one body; the caller has already checked ``len(data) <= max_size``."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise BadEncoding(f"body is not valid msgpack: {exc.__class__.__name__}") from None


def encode(command: bytes, body: dict[str, Any]) -> list[bytes]:
    """The three frames of one message."""
    return [TAG, command, _packer.pack(body)]


def decode(frames: Sequence[bytes], known: frozenset[bytes], max_size: int) -> tuple[bytes, dict[str, Any]]:
    """Validate ``frames`` (without routing id) and return (command, body)."""
    if len(frames) != FRAMES:
        raise BadFrame(f"expected {FRAMES} frames [tag, command, body], got {len(frames)}")
    tag, command, body = frames
    if tag != TAG:
        raise BadVersion(f"unsupported protocol tag {bytes(tag)[:16]!r}; this node speaks {TAG!r}")
    if command not in known:
        raise UnknownCommand(f"unknown command {bytes(command)[:32]!r}")
    if len(body) > max_size:
        raise TooLarge(f"message of {len(body)} bytes exceeds the limit of {max_size}")
    obj = unpack(body, max_size)
    if not isinstance(obj, dict):
        raise BadEncoding("body must be a msgpack map")
    return bytes(command), obj
