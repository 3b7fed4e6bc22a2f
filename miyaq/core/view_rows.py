"""Views of every queue built and encoded a slice of queues at a time.

STATUS, ``GET /status``, ``GET /queues`` and the console's pages hold a row
for every queue: at 10,000 queues (``MAX_QUEUES``) about 10 ms to build and
13 ms more to write as JSON (4 ms as msgpack), in the node's one loop. The
view lane (:mod:`miyaq.core.view_lane`) bounds how often such views run;
this module bounds how long one holds the loop: the rows are built, then
encoded, a slice at a time (:func:`in_slices`), and between two slices the
loop's other greenlets run (``ViewLane.slices`` gives the pause, and keeps
its time out of the view's cost).

Encoding in a thread of the hub's pool, as ``/metrics`` writes its text,
would not help here: the JSON and msgpack encoders are C code that keeps
the interpreter's lock for the whole call (measured, 2026-12-06: a thread
encoding 10,000 rows as JSON held the loop 16 ms), whereas ``/metrics``'s
text is written by Python code, which lets the lock go every few
milliseconds. So the encoders here write one slice per call, in the loop:
:func:`json_in_slices` and :func:`msgpack_in_slices` give the bytes
``json.dumps`` (as the gateway's ``json_response``) and ``codec.pack`` give
for the same value.

A view so taken is a snapshot over a few milliseconds, not one instant:
each queue's row is read at once (its counts add up), but two rows may be
read a few slices apart (docs/http.md, "Metrics").
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from time import perf_counter
from typing import Any, TypeVar

import msgpack

T = TypeVar("T")

VIEW_SLICE = 0.002
"""About how long (seconds, real time) a slice of a view's rows holds the loop."""
FIRST_ROWS = 200
"""Rows in a view's first slice; a view of no more is built in one go (and
a STATUS of no more queues is answered at once by the service socket's
reader, as before slices)."""
FEWEST_ROWS = 50
"""Rows in a slice, at least (a slow host's slices are smaller, down to this)."""
MOST_ROWS = 1000
"""Rows in a slice, at most."""

#: Slices of a list: what ``ViewLane.slices`` is (or :func:`at_once`, outside a view).
Slicer = Callable[[Sequence[T]], Iterator[Sequence[T]]]


def at_once(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in one slice: for a view built where nothing may wait."""
    yield items


def checked(items: Sequence[T], check: Callable[[], None], size: int = FEWEST_ROWS) -> Iterator[Sequence[T]]:
    """``items`` ``size`` at a time, ``check()`` before each slice: for a
    view built where the loop's others are let in by a
    :class:`~miyaq.runtime.fairness.FairShare` (``/metrics``) rather than
    by the view lane."""
    for start in range(0, len(items), size):
        check()
        yield items[start:start + size]


def in_slices(items: Sequence[T], pause: Callable[[], None]) -> Iterator[Sequence[T]]:
    """``items`` a slice at a time, ``pause()`` after each slice when there
    are more than :data:`FIRST_ROWS` (after the last too: the work that
    follows a pass -- the next pass, the answer's last bytes -- does not
    add to its last slice). The first slice has :data:`FIRST_ROWS` items;
    each next one as many as the one before took :data:`VIEW_SLICE` for
    (real time from the slice's yield to the next request: the caller's
    work on it), between :data:`FEWEST_ROWS` and :data:`MOST_ROWS`."""
    if len(items) <= FIRST_ROWS:
        yield items
        return
    size, start = FIRST_ROWS, 0
    while start < len(items):
        chunk = items[start:start + size]
        began = perf_counter()
        yield chunk
        start += len(chunk)
        spent = perf_counter() - began
        pause()
        wanted = MOST_ROWS if spent <= 0 else int(len(chunk) * VIEW_SLICE / spent)
        size = max(FEWEST_ROWS, min(MOST_ROWS, wanted))


def _dumps(value: Any) -> str:
    """One value as the gateway's ``json_response`` writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _many(value: Any) -> bool:
    """A member of a view written in slices: a map or list of more than a slice."""
    return isinstance(value, (dict, list)) and len(value) > FIRST_ROWS


def json_in_slices(view: dict[str, Any], slices: Slicer[Any]) -> bytes:
    """``view`` as JSON, the bytes ``json_response`` writes for it; each of
    its members that is a map or list of more than :data:`FIRST_ROWS` items
    (``queues``) is written a slice of ``slices`` at a time."""
    parts = ["{"]
    for key, value in view.items():
        if len(parts) > 1:
            parts.append(",")
        parts += (_dumps(key), ":")
        if not _many(value):
            parts.append(_dumps(value))
            continue
        parts.append("{" if isinstance(value, dict) else "[")
        first = True
        if isinstance(value, dict):      # sliced by name: no (name, row) pair made for each
            for names in slices(list(value)):
                parts += ("" if first else ",", _dumps({name: value[name] for name in names})[1:-1])
                first = False
            parts.append("}")
        else:
            for chunk in slices(value):
                parts += ("" if first else ",", _dumps(list(chunk))[1:-1])
                first = False
            parts.append("]")
    parts.append("}")
    return "".join(parts).encode()


def msgpack_in_slices(view: dict[str, Any], slices: Slicer[Any]) -> bytes:
    """``view`` as msgpack, the bytes ``codec.pack`` gives for it; each of its
    members that is a map or list of more than :data:`FIRST_ROWS` items is
    packed a slice of ``slices`` at a time."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    packer.pack_map_header(len(view))
    for key, value in view.items():
        packer.pack(key)
        if not _many(value):
            packer.pack(value)
        elif isinstance(value, dict):
            packer.pack_map_header(len(value))
            for names in slices(list(value)):
                for name in names:
                    packer.pack(name)
                    packer.pack(value[name])
        else:
            packer.pack_array_header(len(value))
            for chunk in slices(value):
                for item in chunk:
                    packer.pack(item)
    return packer.bytes()
