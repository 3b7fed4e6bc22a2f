"""Keeping messages between nodes under ``max_message``.

A node reads another node's message only up to ``max_message`` plus a few
KiB (:func:`miyaq.runtime.messages.recv_bounded`), so whatever it sends
another node -- REPLICATE batches, handoffs, SYNC answers, stream events,
QUERY answers -- is split so each message stays under ``max_message``.
Sizes are estimates that never fall short of the msgpack size: the payload
and result bytes, the error and extras measured when present, and a fixed
allowance (:data:`RECORD_ALLOWANCE`) for the bounded fields (id, queue, name
or URL, key, holders, numbers). The estimate of a record costs a few
dictionary reads: the replication path is hot.

Each message also carries at most :data:`PEER_MESSAGE_BYTES` of the bytes
that vary with what it carries -- payloads, results, errors, a record's
meta -- (:func:`peer_chunks`): a message must arrive whole within the
waits of the peer link, and ``max_message`` (16 MiB by default) takes
longer than 5 s on a link under 27 Mbit/s.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar


T = TypeVar("T")

#: Bytes allowed for a record's bounded fields (id 64, queue 128, URL 2048,
#: key 256, 16 holder ids, numbers and field names).
RECORD_ALLOWANCE = 8192
#: Bytes allowed for an event's or a tombstone's fixed items.
EVENT_ALLOWANCE = 512
#: Most bytes of payloads, results, errors and metas one message between
#: nodes carries (one item larger than that goes alone). Every such message
#: must arrive whole within the peer link's waits -- 5 s for a SYNC answer
#: (``RESYNC_TIMEOUT``) or a handoff's confirmation
#: (``HANDOFF_CONFIRM_TIMEOUT``), ``replication_timeout`` for a submit's
#: copies, ``peer_heartbeat_timeout`` for any message (libzmq hears the
#: heartbeat's answer only behind it, and drops the connection past it).
#: Before 2026-12-06 only ``max_message`` bounded them: a message of 16 MiB
#: takes longer than 5 s on a link under 27 Mbit/s, and was sent again and
#: again; 1 MiB takes 5 s at 1.7 Mbit/s. Small tasks are not affected: their
#: fixed fields are not counted (``max_message`` and the counts bound those).
PEER_MESSAGE_BYTES = 1 << 20


def packed_size(value: Any) -> int:
    """An upper bound of ``value``'s msgpack size (strings counted 4 bytes a character)."""
    kind = type(value)
    if kind is bytes:
        return 5 + len(value)
    if kind is str:
        return 5 + 4 * len(value)
    if kind is dict:
        return 5 + sum(packed_size(k) + packed_size(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return 5 + sum(packed_size(v) for v in value)
    return 9


def record_size(record: dict[str, Any]) -> int:
    """A task record (:mod:`miyaq.store.records`)."""
    size = RECORD_ALLOWANCE + len(record.get("body") or b"")
    for extra in ("meta", "error"):
        value = record.get(extra)
        if value:
            size += packed_size(value)
    return size


def peer_chunks(items: Sequence[T], max_items: int, max_message: int, size: Callable[[T], int],
                allowance: int, budget: int = PEER_MESSAGE_BYTES) -> Iterator[list[T]]:
    """Consecutive runs of ``items`` for messages between nodes: each at most
    ``max_items`` long, at most ``max_message`` bytes by ``size`` and at most
    ``budget`` bytes of what varies with the items -- ``size`` less the
    ``allowance`` every item of that kind is counted for its fixed fields
    (:data:`RECORD_ALLOWANCE`, :data:`EVENT_ALLOWANCE`) -- an item larger
    than either going alone. One pass; ``size`` is asked once an item."""
    chunk: list[T] = []
    total = varying = 0
    for item in items:
        n = size(item)
        if chunk and (len(chunk) >= max_items or total + n > max_message or varying + n - allowance > budget):
            yield chunk
            chunk, total, varying = [], 0, 0
        chunk.append(item)
        total += n
        varying += n - allowance
    if chunk:
        yield chunk


def outcome_size(result: bytes | None, error: dict[str, Any] | None) -> int:
    """A finished task's outcome (a tombstone, an ``F`` event, a QUERY answer)."""
    return EVENT_ALLOWANCE + (len(result) if result else 0) + (packed_size(error) if error else 0)


def event_size(event: list[Any]) -> int:
    """A replication stream event (:mod:`miyaq.cluster.holder_events`)."""
    op = event[0]
    if op == "F":
        return outcome_size(event[3], event[4]) + (len(event[5]) if len(event) > 5 and event[5] else 0)
    if op == "R":
        return outcome_size(None, event[4])
    if op == "D":       # its error, and the record of a dead letter whose arguments were lost (holder_events)
        return outcome_size(None, event[3]) + (packed_size(event[4]) if len(event) > 4 and event[4] else 0)
    return EVENT_ALLOWANCE
