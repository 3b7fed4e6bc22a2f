"""What a held task counts in bytes, and what it lets go of when it leaves.

:func:`held_bytes` is what the table counts against ``max_bytes`` for a
task (``payload_bytes``), :func:`error_bytes` the bytes of an error (a held
task's and a tombstone's), and :func:`let_go` drops what a task that left
the table held beyond its header, so that a stale timer or lane entry
still referring to it holds none of it. The counting and the dropping are
one rule seen from both ends: what is counted as a task comes in is what
goes as it leaves.
"""
from __future__ import annotations

from typing import Any

from .task import Task


def held_bytes(task: Task) -> int:
    """The bytes of ``task`` that ``max_bytes`` counts (the table's
    ``payload_bytes``): its payload; a webhook task's headers -- their
    names and values, up to 64 of 256 + 8,192 characters (540 KB) with any
    payload, an empty one included -- and its URL (up to 2,048 characters,
    counted for each task even when tasks share it); its dedup key (up to
    256 characters); and its error (:func:`error_bytes`, up to
    ``ERROR_BYTES``), for a task that failed and is retrying or dead.
    Before 2026-12-07 only the payload
    counted: a node with ``max_bytes`` of 1 MiB took 2,000 webhook tasks of
    empty payloads and 64 headers of 8 KiB, and grew from 46 to 1,080 MiB
    while STATUS said ``payload_bytes`` 0; until later that day the URL, the
    key and the error counted nowhere. A task's payload, headers, URL and key
    never change while it is held, so what is counted as it comes in is
    what goes as it leaves (its payload may be emptied only after it left
    the table); its error changes only through
    :meth:`~miyaq.store.table.TaskTable.set_error`, which counts the change."""
    n = len(task.body)
    extra = task.extra
    meta = extra.meta
    if meta is not None:
        headers = meta.get("headers")
        if headers:
            for name, value in headers.items():
                n += len(name) + len(value)
    url = task.spec.url
    if url is not None:
        n += len(url) if url.isascii() else _text_bytes(url)
    key = extra.key
    if key is not None:
        n += len(key) if key.isascii() else _text_bytes(key)
    if extra.error:
        n += error_bytes(extra.error)
    return n


def error_bytes(error: Any) -> int:
    """The bytes of a task's error (a map of names to scalars,
    :func:`miyaq.protocol.failurespec.check_error`): its names and string
    values as UTF-8, 8 bytes per other value. 0 for None. What a held task
    counts in ``payload_bytes`` (:func:`held_bytes`) and a tombstone in
    ``result_bytes``, and what ``ERROR_BYTES`` bounds where an error enters
    (:func:`miyaq.protocol.failurespec.cut_error`)."""
    if not error:
        return 0
    if not isinstance(error, dict):
        return _text_bytes(error) if isinstance(error, str) else 8
    size = 0
    for name, value in error.items():
        size += _text_bytes(name) if isinstance(name, str) else 8
        size += _text_bytes(value) if isinstance(value, str) else 8
    return size


def _text_bytes(text: str) -> int:
    # ASCII (the usual text) is told in O(1); anything else is measured as UTF-8.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def let_go(task: Task) -> None:
    """Drop what ``task``, gone from the table (finished, purged, evicted,
    handed off), holds beyond its header: its payload and its webhook
    headers, which :func:`held_bytes` counted while it was held. A stale
    timer or ready-lane entry, dropped lazily, may still refer to it for a
    while (its timer's due time: an hour for a task due in an hour), and
    must not hold them there, outside ``max_bytes``. Before 2026-12-07 only
    the payload went: 3,000 delayed webhook tasks of 540 KB of headers,
    each cancelled at once, held a node at 1,584 MiB with no task live and
    ``payload_bytes`` 0 (the timers are compacted past 4,096 stale entries:
    2.2 GB)."""
    task.body = b""
    meta = task.extra.meta
    if meta is not None and "headers" in meta:
        task.meta = {name: value for name, value in meta.items() if name != "headers"} or None
