"""Record framing for the append-only log and its snapshots (on-disk format v1).

Every file of the log (``log-<first_seqno:020d>.mq`` segments and
``snap-<seqno:020d>.mq`` snapshots) is a plain sequence of frames, with no
file header. All integers are **big-endian** (network order)::

    offset  size  field
    0       2     magic   b"MQ" (0x4D 0x51) -- never two zero bytes, so a
                          zero-filled hole left by a crash never parses
    2       4     length  u32, number of payload bytes that follow the header
    6       4     crc     u32, zlib.crc32 of the payload bytes
    10      len   payload msgpack array [kind, seqno, body]

``kind`` is a small int: ``KIND_RECORD`` (0) in segments; in a snapshot the
first frame is ``KIND_SNAP_BEGIN`` (1, body ``{"format": 1, "created": unix
time}``), then one ``KIND_SNAP_RECORD`` (2) frame per live-state record, and
the last frame is ``KIND_SNAP_END`` (3, body ``{"records": count}``).
``seqno`` is the record's sequence number in segments; in a snapshot every
frame carries the snapshot's seqno (the last log record it covers). ``body``
is a msgpack map (a Python dict); bytes are msgpack ``bin``, str is ``str``;
tuples come back as lists and map keys may be any msgpack scalar.

Constraints: this module only encodes and decodes; it never opens files,
never raises on bad input while reading (it reports a :class:`FrameError`
with the offset instead), and checks lengths against the buffer before
trusting them, so a garbage length can never cause a huge allocation.
"""
from __future__ import annotations

import logging
import mmap
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Union

import msgpack

from miyaq.errors import MiyaqError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""The format a snapshot's header frame names (``{"format": 1}``). A log
whose snapshot names another was written by another miyaq: the replay
refuses it (:func:`snapshot_format`), it does not read it as this one."""
MAGIC = b"MQ"
HEADER = struct.Struct(">2sII")
HEADER_SIZE = HEADER.size  # 10
#: The largest payload a frame can hold (its length is a u32).
MAX_FRAME_PAYLOAD = 2**32 - 1

KIND_RECORD = 0
KIND_SNAP_BEGIN = 1
KIND_SNAP_RECORD = 2
KIND_SNAP_END = 3
_KINDS = frozenset((KIND_RECORD, KIND_SNAP_BEGIN, KIND_SNAP_RECORD, KIND_SNAP_END))

SEGMENT_RE = re.compile(r"^log-(\d{20})\.mq$")
SNAPSHOT_RE = re.compile(r"^snap-(\d{20})\.mq$")
#: The file the writer writes to learn whether the disk takes writes again.
PROBE_NAME = "probe.tmp"

#: A whole file's content: ``bytes`` or a read-only ``mmap`` of it.
Buffer = Union[bytes, mmap.mmap]


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: where it starts and ends in its file, and its content."""

    offset: int
    end: int
    kind: int
    seqno: int
    body: dict[Any, Any]


@dataclass(frozen=True, slots=True)
class FrameError:
    """Why decoding stopped at ``offset`` (the first byte that is not a good frame)."""

    offset: int
    reason: str


def pack_payload(kind: int, seqno: int, body: dict[Any, Any]) -> bytes:
    """Serialise ``[kind, seqno, body]``; raises TypeError/ValueError/OverflowError
    for values msgpack cannot encode."""
    return msgpack.packb([kind, seqno, body], use_bin_type=True)


def frame(payload: bytes) -> bytes:
    """Wrap an already packed payload in its header."""
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def encode(kind: int, seqno: int, body: dict[Any, Any]) -> bytes:
    """Header + payload for one frame."""
    return frame(pack_payload(kind, seqno, body))


def encode_record(kind: int, seqno: int, record: dict[Any, Any], max_bytes: int) -> bytes:
    """One framed record, checked: :class:`~miyaq.errors.MiyaqError` (nothing is
    written) if it is not a dict, cannot be encoded, or its payload is larger
    than ``max_bytes`` (``details["size"]``, ``details["limit"]``)."""
    if not isinstance(record, dict):
        raise MiyaqError(f"a log record must be a dict, not {type(record).__name__}")
    try:
        payload = pack_payload(kind, seqno, record)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MiyaqError(f"log record cannot be encoded with msgpack: {exc}") from exc
    if len(payload) > max_bytes:
        raise MiyaqError(f"log record of {len(payload)} bytes exceeds max_record_bytes={max_bytes}; "
                         "nothing was written", size=len(payload), limit=max_bytes)
    return frame(payload)


def decode_at(buf: Buffer, offset: int) -> Frame | FrameError:
    """Decode the frame starting at ``offset`` of ``buf`` (a whole file's bytes)."""
    size = len(buf)
    if offset + HEADER_SIZE > size:
        return FrameError(offset, f"short header ({size - offset} of {HEADER_SIZE} bytes)")
    magic, length, crc = HEADER.unpack_from(buf, offset)
    if magic != MAGIC:
        return FrameError(offset, f"bad magic {bytes(magic)!r}")
    start = offset + HEADER_SIZE
    end = start + length
    if end > size:
        return FrameError(offset, f"short payload ({size - start} of {length} bytes)")
    payload = buf[start:end]
    if zlib.crc32(payload) != crc:
        return FrameError(offset, "crc mismatch")
    try:
        decoded = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        return FrameError(offset, f"bad msgpack ({exc.__class__.__name__})")
    if (
        not isinstance(decoded, list)
        or len(decoded) != 3
        or decoded[0] not in _KINDS
        or not isinstance(decoded[1], int)
        or decoded[1] < 0
        or not isinstance(decoded[2], dict)
    ):
        return FrameError(offset, "payload is not [kind, seqno, body]")
    return Frame(offset, end, decoded[0], decoded[1], decoded[2])


def iter_frames(buf: Buffer, offset: int = 0) -> Iterator[Frame | FrameError]:
    """Yield frames from ``offset`` until the end of ``buf`` or the first bad
    frame, which is yielded as a :class:`FrameError` and ends the iteration."""
    size = len(buf)
    while offset < size:
        item = decode_at(buf, offset)
        yield item
        if isinstance(item, FrameError):
            return
        offset = item.end


SEARCH_BUDGET = 256 * 1024 * 1024
"""Payload bytes :func:`find_next_frame` checksums at most. Any "MQ" in a
damaged region (a task's body may hold many, crafted with lengths that fit)
is a candidate whose payload must be checksummed: unbounded, 8 MiB of such
candidates took minutes."""


SEARCH_CANDIDATE_COST = 64
"""Budget bytes each candidate costs at least (a candidate of length 0 costs
the search its own work)."""


class SearchGaveUp(Exception):
    """:func:`find_next_frame` checksummed its budget without finding a good
    frame: whether good frames follow the damage is not known."""


def find_next_frame(buf: Buffer, offset: int, budget: int = SEARCH_BUDGET) -> int | None:
    """Offset of the first good frame strictly after ``offset``, or None.
    Raises :class:`SearchGaveUp` once it checksummed ``budget`` payload bytes.

    Used to tell a torn tail (nothing good after the damage) from damage in
    the middle of a file (good frames follow)."""
    pos = offset
    view = memoryview(buf)
    size = len(buf)
    while True:
        pos = buf.find(MAGIC, pos + 1)
        if pos < 0 or pos + HEADER_SIZE > size:
            return None
        _, length, crc = HEADER.unpack_from(buf, pos)
        start = pos + HEADER_SIZE
        if start + length > size:
            continue
        budget -= max(length, SEARCH_CANDIDATE_COST)
        if budget < 0:
            raise SearchGaveUp
        if zlib.crc32(view[start:start + length]) == crc and isinstance(decode_at(buf, pos), Frame):
            return pos


def segment_name(first_seqno: int) -> str:
    """File name of the segment whose first record is ``first_seqno``."""
    return f"log-{first_seqno:020d}.mq"


def snapshot_name(seqno: int) -> str:
    """File name of the snapshot covering records up to ``seqno``."""
    return f"snap-{seqno:020d}.mq"


def snapshot_format(buf: Buffer) -> Any:
    """The ``format`` a snapshot's header frame names, or None when its first
    frame is not a readable header (damage: :func:`walk_snapshot` says what)."""
    first = decode_at(buf, 0) if len(buf) else None
    if not isinstance(first, Frame) or first.kind != KIND_SNAP_BEGIN or not isinstance(first.body, dict):
        return None
    return first.body.get("format")


def walk_snapshot(buf: Buffer, seqno: int) -> Iterator[Frame | FrameError]:
    """Yield a snapshot's record frames; a structural problem ends it with a FrameError."""
    count = 0
    begun = False
    for item in iter_frames(buf):
        if isinstance(item, FrameError):
            yield item
            return
        if item.seqno != seqno:
            yield FrameError(item.offset, f"frame seqno {item.seqno} in snapshot {seqno}")
            return
        if not begun:
            if item.kind != KIND_SNAP_BEGIN:
                yield FrameError(item.offset, "missing snapshot header frame")
                return
            begun = True
        elif item.kind == KIND_SNAP_RECORD:
            count += 1
            yield item
        elif item.kind == KIND_SNAP_END:
            if item.body.get("records") != count:
                yield FrameError(item.offset, f"end frame says {item.body.get('records')} records, found {count}")
            elif item.end != len(buf):
                yield FrameError(item.end, "bytes after the end frame")
            return
        else:
            yield FrameError(item.offset, f"unexpected frame kind {item.kind}")
            return
    yield FrameError(len(buf), "no end frame")
