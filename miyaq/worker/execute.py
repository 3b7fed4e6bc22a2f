"""Running one handler and turning what it did into a report.

The same code runs a task in every pool -- a greenlet, a thread, a child
process -- so a handler's outcome means the same everywhere: a return value
is DONE with the msgpack-packed result; ``Retry`` and any other exception
are a retryable FAILED (with the traceback); ``Reject`` fails for good; an
interruption by the worker (a cancel, a timeout) fails with its own type.

A handler that raises ``SystemExit`` (it called ``sys.exit()``),
``KeyboardInterrupt`` or any other ``BaseException`` fails its task the
same way, retryable: a task does not stop its worker. Before (2026-12-03),
such an exception ended the whole worker process in the gevent and threads
pools -- every other task it ran lost until their leases ran out -- and a
child of the processes pool. Only ``GreenletExit`` thrown into a gevent
pool's runner while the worker stops goes on: it is the worker killing its
own greenlets. Raised by the handler itself, in any pool, it fails the task
like the rest; before (2026-12-04) it ended the runner silently -- one slot
fewer for the worker's life, the attempt unreported until its lease ran out.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import sys
import traceback
from typing import Any, Callable

import msgpack

from ..errors import MiyaqError, Reject, Retry
from .config import ERROR_MESSAGE_BYTES, MAX_RESULT_BYTES, TRACEBACK_BYTES

#: ("done", packed result) or ("failed", error map as sent in FAILED)
Outcome = tuple[str, Any]


class Interrupted(BaseException):
    """Raised inside a handler the worker stops. A BaseException, so a
    handler's ``except Exception`` does not swallow it."""

    error_type = "Interrupted"
    message = "interrupted by the worker"
    retry = False


class TaskAborted(Interrupted):
    """The task was cancelled on the node (ABORT)."""

    error_type = "Aborted"
    message = "cancelled"


class TaskTimeout(Interrupted):
    """The handler ran past its task's timeout (its lease) without a touch.
    Retryable: the next attempt may be luckier, ``max_retries`` bounds it."""

    error_type = "Timeout"
    message = "ran past its timeout and was stopped"
    retry = True


class BadBody(MiyaqError):
    """The task's body is not what a handler is called with: msgpack
    ``[args, kwargs]`` (a producer in another language that packed something
    else). No attempt can succeed, so the task fails for good."""

    code = "bad_body"


def decode_args(body: bytes | None) -> tuple[list[Any], dict[str, Any]]:
    """The handler's arguments from a task's body (empty: none); raises
    :class:`BadBody` for anything but msgpack ``[array, map of strings]``."""
    if not body:
        return [], {}
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise BadBody(f"the task's body is not msgpack [args, kwargs]: {why}") from None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)
            and isinstance(value[1], dict) and (not value[1] or all(isinstance(k, str) for k in value[1]))):
        raise BadBody("the task's body is not msgpack [args, kwargs] (an array and a map with string keys)")
    return value[0], value[1]


def done(value: Any) -> Outcome:
    """DONE with ``value`` packed; a result over MAX_RESULT_BYTES fails
    instead (see there: sent, it would cost the worker its connection), and
    so does one msgpack cannot pack (:func:`unpackable`)."""
    try:
        result = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        return ("failed", unpackable(value, exc))
    if len(result) > MAX_RESULT_BYTES:
        return ("failed", too_large(len(result), MAX_RESULT_BYTES, "one message to a node can carry"))
    return ("done", result)


def too_large(size: int, limit: int, carrier: str) -> dict[str, Any]:
    """The failure of a result of ``size`` bytes over the ``limit`` of what
    carries it (``carrier``: "one message to a node can carry"): not retried,
    as a node fails a result over its ``max_payload``."""
    return {"type": "ResultTooLarge", "retry": False,
            "message": f"result of {size} bytes exceeds the {limit} bytes {carrier} (keep large data elsewhere "
                       f"and return where it is)"}


def unpackable(value: Any, exc: BaseException) -> dict[str, Any]:
    """The failure of a result msgpack cannot pack (``exc``: what packing
    raised, naming the type at fault -- a set, an object of the app's, an
    int over 64 bits, nesting too deep): not retried, as another attempt
    would return the same after running the handler's side effects again.
    Before 2026-12-06 it was a retryable ``TypeError``: 4 attempts by
    default, each running the handler again. A coroutine (a handler taken
    for a sync one that made one: :func:`miyaq.taskdef.runs_async`) is
    closed, so Python warns of none never awaited, and the message says so."""
    if inspect.iscoroutine(value):
        value.close()
        return {"type": "ResultNotSerializable", "retry": False,
                "message": "the handler returned a coroutine, which was never run: it was taken for a sync handler "
                           "(a def that returns a coroutine, or a wrapper that hides an async def); declare it with "
                           "async def, and a worker runs it on its asyncio loop"}
    return {"type": "ResultNotSerializable", "retry": False,
            "message": _text(f"the handler's result, of type {type(value).__name__}, is not something msgpack can pack "
                             f"({_describe(exc, str)}); a result is made of None, bool, int (64 bits), float, "
                             "str, bytes, list, tuple and dict with such keys")}


def interrupted(exc: Interrupted | type[Interrupted]) -> Outcome:
    return ("failed", {"type": exc.error_type, "message": exc.message, "retry": exc.retry})


def failure(exc: BaseException) -> Outcome:
    """The FAILED error map for an exception a handler raised (call inside ``except``)."""
    if isinstance(exc, Interrupted):
        return interrupted(exc)
    if isinstance(exc, Retry):
        return ("failed", {"type": "Retry", "message": _text(exc.message), "retry": True,
                           "delay": _delay(exc.delay)})
    if isinstance(exc, Reject):
        return ("failed", {"type": "Reject", "message": _text(exc.message), "retry": False})
    if isinstance(exc, BadBody):
        return ("failed", {"type": "BadBody", "message": _text(exc.message), "retry": False})
    message = _describe(exc, str)
    if not isinstance(exc, Exception):     # SystemExit, KeyboardInterrupt, another BaseException
        message = f"the handler raised {_describe(exc, repr)}; a task does not stop its worker"
    return ("failed", {"type": _text(type(exc).__name__), "message": _text(message), "retry": True,
                       "traceback": _text(_traceback(exc)[-TRACEBACK_BYTES:], TRACEBACK_BYTES)})


def _traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` (call inside ``except``). The traceback
    module describes the exception with ``str()`` and catches only an
    ``Exception`` from it: one whose ``__str__`` raises ``SystemExit`` got
    out, ended the runner and, in the gevent and threads pools, the worker
    process (before 2026-12-05). The frames are kept whatever the message."""
    try:
        return traceback.format_exc()
    except BaseException:  # noqa: BLE001 - describing a failure must never fail
        try:
            frames = "".join(traceback.format_tb(exc.__traceback__))
        except BaseException:  # noqa: BLE001
            frames = ""
        return f"Traceback (most recent call last):\n{frames}{_describe(exc, str)}\n"


def _text(value: Any, limit: int = ERROR_MESSAGE_BYTES) -> str:
    """``value`` as an error field the node takes: a string (``Retry(b"..")``
    and ``Reject(42)`` are stringified) of at most ``limit`` characters
    that msgpack can send -- a lone surrogate (text decoded with
    ``surrogateescape``, ``os.fsdecode`` of bad bytes) is escaped. Before,
    the node refused such a FAILED (every report in its batch with it), or
    packing it failed in the result flusher until the worker stopped."""
    if not isinstance(value, str):
        try:
            value = str(value)
        except BaseException:  # noqa: BLE001 - a __str__ raising SystemExit must not end the worker
            value = f"<{type(value).__name__}: str() failed>"
    return value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def _delay(value: Any) -> float | None:
    """A ``Retry`` delay as a float the node reads; anything else (a string,
    an object msgpack cannot pack, an int too large for it) is None: the
    task's backoff."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            pass
    return None


def _describe(exc: BaseException, how: Callable[[BaseException], str]) -> str:
    """``str(exc)`` or ``repr(exc)``; an exception whose ``__str__`` or
    ``__repr__`` raises is still described (by its type), as the traceback
    module does: its task fails like any other, rather than the failure
    escaping the pool and the attempt staying unreported until its lease
    runs out."""
    try:
        return how(exc)
    except BaseException:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, GreenletExit from __str__ too
        return f"<{type(exc).__name__}: {how.__name__}() failed>"


def run_sync(fn: Callable[..., Any], body: bytes | None, killing: Callable[[], bool] | None = None) -> Outcome:
    """Call ``fn`` with the task's arguments; whatever it raises becomes an
    outcome (an :class:`Interrupted`, ``SystemExit``, ``KeyboardInterrupt``,
    ``GreenletExit`` too), except a ``GreenletExit`` while ``killing()``
    (the gevent pool's: the worker killing its own greenlets as it stops)."""
    forks = _forks
    try:
        args, kwargs = decode_args(body)
        value = fn(*args, **kwargs)
        if _forks != forks:
            _end_forked_copy(0)
        return done(value)
    except BaseException as exc:
        if _forks != forks:
            _end_forked_copy(1)
        if killing is not None and killing() and _is_greenlet_exit(exc):
            raise
        return failure(exc)


#: Forks this process is the child of, counted by Python's fork hook: a
#: handler that sees it change ran in a copy made meanwhile. Read twice a
#: task, where ``os.getpid()`` would be two system calls.
_forks = 0

#: The greenlet that forked this process (None: a thread without greenlets,
#: the only one a forked copy keeps).
_forker: Any = None


def _count_fork() -> None:
    global _forks, _forker
    _forks += 1
    _forker = _current_greenlet()


def _current_greenlet() -> Any:
    """The running greenlet where greenlet is loaded, else None (a
    processes-pool child need not load it)."""
    greenlet = sys.modules.get("greenlet")
    return greenlet.getcurrent() if greenlet is not None else None


os.register_at_fork(after_in_child=_count_fork)


def _end_forked_copy(status: int) -> None:
    """End this process, a copy forked while the handler ran that returned
    from it (or raised, ``status`` 1) instead of calling ``os._exit()``:
    only the process that called the handler reports the task. In the
    gevent and threads pools the copy is a copy of the whole worker, on its
    sockets: before (syncteam, 2026-12-08) it ran on as a second worker, an
    orphan that outlived its worker's SIGTERM (one spun at full CPU). Its
    standard streams are flushed first, as ``multiprocessing`` does for a
    forked child.

    In the gevent pool a copy that yields runs the copies of the other
    handlers' greenlets too: one of those that returns is parked for good
    instead (:func:`_park_bystander`) -- the copy is the forking handler's,
    to end as it will. Before (review43, 2026-12-08) the first copy of any
    handler to return ended it, status 0: a helper forked to do some work
    was cut short, reported a success."""
    if _forker is not None and _current_greenlet() is not _forker:
        _park_bystander()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed or broken stream must not keep the copy alive
            pass
    os._exit(status)


def _park_bystander() -> None:
    """Never return: this greenlet is another handler's copy in a process
    one handler forked (its result is not this process's to report). It
    waits on an event nobody sets, whatever is thrown into it (the copied
    worker's timeout or stop, run by the copy's hub); the process ends as
    its forker does."""
    from ..runtime import green
    while True:
        try:
            green.Event().wait()
        except BaseException:  # noqa: BLE001 - a copy's interruption must not make it report
            pass


async def run_async(fn: Callable[..., Any], body: bytes | None,
                    reason: Callable[[], type[Interrupted] | None]) -> Outcome:
    """Await ``fn`` with the task's arguments; never raises an Exception. A
    cancellation of the asyncio task running this by the worker (a cancel or
    a timeout: ``reason()`` says which; the worker sets it before it
    cancels) becomes that interruption's outcome. A ``CancelledError`` the
    worker did not cause -- the handler awaited something another party
    cancelled -- fails the attempt like any other exception (retried, with
    its traceback): before 2026-12-05 it was taken for a cancel and the task
    dead-lettered as "Aborted", its retries lost."""
    try:
        args, kwargs = decode_args(body)
        return done(await fn(*args, **kwargs))
    except asyncio.CancelledError as exc:
        stop = reason()
        return interrupted(stop) if stop is not None else failure(exc)
    except BaseException as exc:      # no worker kills the asyncio thread: any GreenletExit is the handler's
        return failure(exc)


def _is_greenlet_exit(exc: BaseException) -> bool:
    """Looked up only where greenlet is loaded (a processes-pool child need
    not load it)."""
    greenlet = sys.modules.get("greenlet")
    return greenlet is not None and isinstance(exc, greenlet.GreenletExit)
