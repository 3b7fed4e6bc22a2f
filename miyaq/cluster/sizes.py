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
"""
from __future__ import annotations

from typing import Any

#: Bytes allowed for a record's bounded fields (id 64, queue 128, URL 2048,
#: key 256, 16 holder ids, numbers and field names).
RECORD_ALLOWANCE = 8192
#: Bytes allowed for an event's or a tombstone's fixed items.
EVENT_ALLOWANCE = 512


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


def outcome_size(result: bytes | None, error: dict[str, Any] | None) -> int:
    """A finished task's outcome (a tombstone, an ``F`` event, a QUERY answer)."""
    return EVENT_ALLOWANCE + (len(result) if result else 0) + (packed_size(error) if error else 0)


def event_size(event: list[Any]) -> int:
    """A replication stream event (:mod:`miyaq.cluster.holder_events`)."""
    op = event[0]
    if op == "F":
        return outcome_size(event[3], event[4]) + (len(event[5]) if len(event) > 5 and event[5] else 0)
    if op in ("R", "D"):
        return outcome_size(None, event[-1])
    return EVENT_ALLOWANCE
