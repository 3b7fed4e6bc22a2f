"""The process's heap, out of the cycle collector's sight.

CPython's full (generation 2) collection walks every object it tracks,
with the hub stopped. Two ways keep most of a node's objects out of that
walk:

* :func:`freeze_startup_heap` -- what a node or a worker makes when it
  starts (modules, classes and functions, gevent's, kazoo's and
  prometheus_client's machinery, the task table replayed from the log):
  30-40 ms every few thousand tasks on the node measured in
  docs/performance.md ("Garbage collection"), about 10 µs a task on
  average and a pause every task waiting then shares. It collects once,
  then moves every object alive to the permanent generation
  (:func:`gc.freeze`), so later collections walk only what was made since.
  Frozen objects are still freed by reference counting as usual; only
  garbage *cycles* among them would stay, which can be no more than the
  start-up heap itself. For the processes miyaq owns (``miyaq node``,
  ``miyaq worker``), never for an application's process that merely uses
  the client.
* :func:`untrack` -- one object that is never part of a reference cycle
  while the collector does not see it: the store's tasks out of a lease,
  what they hold and the timers' lists of them (miyaq.store.task). A
  slotted object is one CPython tracks for as long as it lives, whatever
  it holds; a node's live tasks were most of what a full collection walked
  (277-288 ms at a million delayed tasks). Untracking is CPython's own
  ``PyObject_GC_UnTrack``, what it does itself for a tuple or a dict that
  holds only atomic values; an untracked object is still freed by
  reference counting, and what it refers to is taken as referred to from
  outside (kept, never freed early). The one cost: a cycle through it would
  never be collected -- hence the rule. Where the interpreter offers no such
  call (not CPython) both are no-ops.

And :func:`collector_paused` -- for a parse that makes a million containers
at once and keeps every one (a JSON body of ``http_max_body``): each 700
allocations start a young collection that walks what was made since, and
the older generations' walks follow, so the collector took 60-75% of such a
parse (a 4 MiB body of 1 million ``[0]``: 1.7 s with it, 0.47 without).
Nothing the paused stretch makes can be garbage yet; what it made is
collected as usual afterwards.

Apart from the collector, :class:`AllocatorTrim` returns to the system
what the C allocator holds free once a node has let go of a lot: glibc's
``malloc`` keeps what is freed for the process (a soak audit of
2026-12-06: a node that replayed 623k records of 244 MB and then swept
195,000 expired tombstones kept 256-294 MB resident with 13 tasks, 49 MB
fresh, for as long as it ran; a burst drained left 154 MB).
"""
from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

logger = logging.getLogger(__name__)

_HAVE_GC = 1 << 14      # Py_TPFLAGS_HAVE_GC: the type's objects are containers the collector may track


def _object_api(name: str) -> Callable[[Any], None] | None:
    """CPython's C API function ``name`` taking one object, or None where there is none."""
    try:
        import ctypes
        function = getattr(ctypes.pythonapi, name)
    except (ImportError, AttributeError):      # not CPython
        return None
    function.argtypes = (ctypes.py_object,)
    function.restype = None
    return function                            # type: ignore[no-any-return]


_untrack = _object_api("PyObject_GC_UnTrack")
_track = _object_api("PyObject_GC_Track")


def untrack(obj: Any) -> None:
    """Take ``obj`` out of the cycle collector's sight (see the module doc).

    Constraint: while untracked, ``obj`` is part of no reference cycle --
    nothing it refers to, directly or not, refers back to it -- or that
    cycle is never freed. Reference counting frees it as usual. A no-op for
    an object already untracked, or that the collector never tracks."""
    if _untrack is not None and gc.is_tracked(obj):
        _untrack(obj)


def track(obj: Any) -> None:
    """Put ``obj`` back in the cycle collector's sight (before it may become
    part of a reference cycle). A no-op for an object already tracked, or of
    a type the collector never tracks."""
    if _track is not None and type(obj).__flags__ & _HAVE_GC and not gc.is_tracked(obj):
        _track(obj)


_pause_lock = threading.RLock()
_pauses = 0                 # blocks of collector_paused running now, in every thread
_enabled_before = False     # whether the collector was on when the first of them began


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic cycle collection while the block runs (one that made
    many containers and keeps them all, doing nothing that yields: module
    docstring); the collector is as it was after, however the block ends.

    The collector is one for the whole process: blocks running at once in
    several threads (nodes in threads of one process,
    :class:`miyaq.testing.harness.ThreadNode`) pause it together, and it is
    enabled again when the last of them ends, if it was on when the first
    began. Before 2026-12-08 each block read the collector's state and
    disabled it on its own: a block that read "off" (another thread's block
    running) and disabled it only after that block had enabled it again
    left the collector off for the rest of the process (8 threads pausing
    20,000 times each left it off in 3 runs of 3)."""
    global _pauses, _enabled_before
    with _pause_lock:
        if _pauses == 0:
            _enabled_before = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _enabled_before:
                gc.enable()


def freeze_startup_heap() -> int:
    """Collect garbage, then freeze what is alive (see the module doc);
    returns how many objects are frozen now. Call once, when start-up is over."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("froze %d start-up objects out of the cycle collector's sight", frozen)
    return frozen


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        import ctypes
        function = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):     # not glibc (musl, macOS), or no ctypes
        return None
    function.argtypes = (ctypes.c_size_t,)
    function.restype = ctypes.c_int
    return function                            # type: ignore[no-any-return]


_trim = _malloc_trim()


def give_back_free_memory() -> bool:
    """Return to the system the memory the C allocator holds free (glibc's
    ``malloc_trim(0)``); True if some was. It walks the allocator's free
    lists with the interpreter's lock held -- about 10 ms on a heap of a few
    hundred megabytes with nothing to give back, 56 ms giving back 400 MB
    (measured 2026-12-06) -- so :class:`AllocatorTrim` says when. A no-op
    where the C library has no such call."""
    if _trim is None:
        return False
    return bool(_trim(0))


TRIM_SLACK = 64 * 1024 * 1024
"""Bytes the process may hold beyond what its store holds, and grow by
since its last trim, before :class:`AllocatorTrim` gives memory back."""
TRIM_INTERVAL = 60.0
"""Seconds between two looks (and so two trims), at least."""


try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):      # no sysconf
    _PAGE = 4096


def resident_bytes() -> int | None:
    """The process's resident memory now (Linux: ``/proc/self/statm``), or None where unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class AllocatorTrim:
    """When to give freed memory back (:func:`give_back_free_memory`): at
    most every ``TRIM_INTERVAL`` seconds it looks at the process's resident
    memory, and trims when that exceeds what the store holds (an estimate
    in bytes the node's housekeeping passes:
    :meth:`miyaq.store.table.TaskTable.approximate_bytes`) by
    ``TRIM_SLACK`` and grew by as much since the last trim -- so memory in
    use (a million delayed tasks) or left after a trim that gave little
    back is not trimmed for again and again. What it fixed: a node that
    replayed a long log, or drained a burst, kept the freed memory for as
    long as it ran (255 MB resident with 13 tasks after a replay of 623k
    records, 158 MB once trimmed; 49 MB fresh)."""

    def __init__(self, trim: Callable[[], bool] = give_back_free_memory,
                 resident: Callable[[], int | None] = resident_bytes) -> None:
        self.trim = trim
        self.resident = resident
        # Monotonic; the first look a minute after the first call (the start's garbage gone by then).
        self.next_look: float | None = None
        self.after_trim = 0                 # resident bytes after the last trim
        self.trims = 0

    def observe(self, held: int, now: float) -> bool:
        """The store holds about ``held`` bytes at ``now`` (monotonic
        seconds): trim if the process holds much more than that, and grew
        since its last trim; whether it trimmed."""
        if self.next_look is None or now < self.next_look:
            if self.next_look is None:
                self.next_look = now + TRIM_INTERVAL
            return False
        self.next_look = now + TRIM_INTERVAL
        rss = self.resident()
        if rss is None or rss - held < TRIM_SLACK or rss - self.after_trim < TRIM_SLACK:
            return False
        self.trims += 1
        self.trim()
        after = self.resident()
        self.after_trim = after if after is not None else rss
        logger.info("gave freed memory back to the system: resident %d MB -> %d MB (the store holds about %d MB)",
                    rss >> 20, self.after_trim >> 20, held >> 20)
        return True
