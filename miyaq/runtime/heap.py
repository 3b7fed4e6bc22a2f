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
"""
from __future__ import annotations

import gc
import logging
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


def freeze_startup_heap() -> int:
    """Collect garbage, then freeze what is alive (see the module doc);
    returns how many objects are frozen now. Call once, when start-up is over."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("froze %d start-up objects out of the cycle collector's sight", frozen)
    return frozen
