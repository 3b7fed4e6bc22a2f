"""Splitting what goes out into messages a receiver takes.

Every sender -- a client's SUBMITs, a node's REPLICATE batches, handoffs,
SYNC pages and stream messages -- cuts its items in order into runs under a
count and a size (its own estimate of each item's bytes on the wire), so no
message passes the receiver's ``max_message``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

__all__ = ["chunks"]


def chunks(items: Sequence[T], max_items: int, max_bytes: int, size: Callable[[T], int]) -> Iterator[list[T]]:
    """Consecutive runs of ``items``, each at most ``max_items`` long and, by
    ``size``, at most ``max_bytes`` (an item larger than that goes alone)."""
    chunk: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if chunk and (len(chunk) >= max_items or total + n > max_bytes):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += n
    if chunk:
        yield chunk
