"""Encoding and decoding of protocol messages.

Decoding never trusts its input: anything that is not exactly
``[TAG, COMMAND, BODY]`` with a msgpack map body under the size limit raises
a :class:`~miyaq.errors.ProtocolError` subclass whose code goes back to the
sender. The task payload (``body`` inside a task) is opaque bytes here.

A body is also bounded in what it decodes *to*: at most :data:`MAX_VALUES`
values (scalars and containers together). msgpack writes an empty array in
one byte and Python holds it in 56, so without this bound one 16 MiB body of
empty arrays became 1.1 GB of objects and held the node's hub for three
seconds (measured, 2026-12-04); with it, at most about 70 MB and a fifth of
a second. No message of the protocol comes near the bound: the largest, a
SUBMIT of ``max_batch`` (at most ``miyaq.constants.MAX_BATCH``, 4,096)
tasks, holds at most 159 values a task.
"""
from __future__ import annotations

from typing import Any, Sequence

import msgpack

from miyaq.errors import BadEncoding, BadFrame, BadVersion, TooLarge, TooManyValues, UnknownCommand
from miyaq.protocol.commands import FRAMES, TAG
from miyaq.runtime.heap import collector_paused

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    """msgpack with bin type for bytes and str for text."""
    return _packer.pack(obj)


#: The most values one body may decode to (module docstring).
MAX_VALUES = 1 << 20


class _TooManyValues(Exception):
    """Raised inside the decoder's hooks when the body passes its budget. A
    class the hooks raise, not a ``TooManyValues`` made before decoding: the
    hooks would then close over it too, and the extra closure cell is made
    at every call, the plain path's included (0.03 µs of its 0.8, measured)."""


#: In a node (:func:`pause_collector_from`), a body this large or larger is
#: decoded with the cycle collector paused
#: (:func:`~miyaq.runtime.heap.collector_paused`): it may make a million
#: containers, and the collector's walks of them took 80-90% of the decode
#: (1 MB of empty arrays: 0.57-0.74 s of the node's one thread, 0.07-0.13 s
#: paused). Elsewhere (an application's process that uses the client) the
#: collector is never touched: no body is this large.
PAUSE_FROM = 1 << 62
#: What a node sets ``PAUSE_FROM`` to (the pause costs a fraction of a microsecond).
NODE_PAUSE_FROM = 64 * 1024


def pause_collector_from(size: int) -> None:
    """Decode bodies of ``size`` bytes or more with the cycle collector
    paused, in this process (a node's: :class:`miyaq.node.node.Node`)."""
    global PAUSE_FROM
    PAUSE_FROM = size


class _RepeatedKey(Exception):
    """Raised inside the decoder's map hook (``unique_keys``): a map holds a key twice."""


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _RepeatedKey
    return value


def unpack(data: bytes, max_values: int = MAX_VALUES, *, strict_keys: bool = False,
           unique_keys: bool = False) -> Any:
    """Decode one msgpack body of untrusted origin, at most ``max_values``
    values (in a node, the cycle collector paused for a body of
    ``PAUSE_FROM`` bytes or more). Raises :class:`~miyaq.errors.TooManyValues` past that bound and
    :class:`~miyaq.errors.BadEncoding` for anything that is not msgpack
    (with ``strict_keys``, a map key that is not a string or bytes too;
    with ``unique_keys``, a map that holds a key twice: Python keeps the
    last, so its bytes would decode to far fewer values -- a map of 400
    pairs of one 1,000-byte key, 400 KB, to one pair. The gateway shows a
    result's JSON only if it holds what its bytes hold, so its size is at
    least their fifth: :func:`miyaq.gateway.answers.least_result`).

    Every value takes at least one byte, so a body of at most ``max_values``
    bytes cannot pass the bound and is decoded as it is; a longer one is
    decoded with a count of the values each finished array and map holds,
    and no container longer than the bound is started."""
    size = len(data)
    if size < PAUSE_FROM and size <= max_values:      # the common case, without a call more
        try:
            if unique_keys:
                return msgpack.unpackb(data, raw=False, strict_map_key=strict_keys, object_pairs_hook=_unique_map)
            return msgpack.unpackb(data, raw=False, strict_map_key=strict_keys)
        except Exception as exc:  # msgpack raises several unrelated types
            raise BadEncoding(f"body is not valid msgpack: {exc.__class__.__name__}") from None
    if size >= PAUSE_FROM:
        with collector_paused():
            return _unpack(data, max_values, strict_keys, unique_keys)
    return _unpack(data, max_values, strict_keys, unique_keys)


def _unpack(data: bytes, max_values: int, strict_keys: bool, unique_keys: bool = False) -> Any:
    """:func:`unpack` of a body of ``PAUSE_FROM`` bytes or more, or more than ``max_values``."""
    if len(data) <= max_values:
        try:
            if unique_keys:
                return msgpack.unpackb(data, raw=False, strict_map_key=strict_keys, object_pairs_hook=_unique_map)
            return msgpack.unpackb(data, raw=False, strict_map_key=strict_keys)
        except Exception as exc:  # msgpack raises several unrelated types
            raise BadEncoding(f"body is not valid msgpack: {exc.__class__.__name__}") from None
    left = max_values

    def array_seen(value: list[Any]) -> list[Any]:
        nonlocal left
        left -= len(value) + 1
        if left < 0:
            raise _TooManyValues
        return value

    def map_seen(value: dict[Any, Any]) -> dict[Any, Any]:
        nonlocal left
        left -= 2 * len(value) + 1
        if left < 0:
            raise _TooManyValues
        return value

    def pairs_seen(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        nonlocal left
        left -= 2 * len(pairs) + 1
        if left < 0:
            raise _TooManyValues
        return _unique_map(pairs)

    maps: dict[str, Any] = {"object_pairs_hook": pairs_seen} if unique_keys else {"object_hook": map_seen}
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=strict_keys, list_hook=array_seen,
                               max_array_len=max_values, max_map_len=max_values, **maps)
    except _TooManyValues:
        pass
    except ValueError as exc:
        if "exceeds max_" not in str(exc):
            raise BadEncoding(f"body is not valid msgpack: {exc.__class__.__name__}") from None
    except Exception as exc:  # msgpack raises several unrelated types
        raise BadEncoding(f"body is not valid msgpack: {exc.__class__.__name__}") from None
    raise TooManyValues(f"body holds more than {max_values:,} values (arrays, maps and what they hold)")


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
    obj = unpack(body)
    if not isinstance(obj, dict):
        raise BadEncoding("body must be a msgpack map")
    return bytes(command), obj
