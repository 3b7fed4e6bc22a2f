"""What the client puts on the wire and reads back, for every client flavour:
task ids, the ``[args, kwargs]`` payload, task options, outcomes and the
tasks a pull consumer receives (docs/protocol.md §2, §5, §6)."""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterable, Mapping

import msgpack

from ..errors import InvalidField, ProtocolError, TaskCancelled, TaskExpired, TaskFailed, Timeout, UnknownCommand
from ..protocol import commands as c
from .option_values import check_option_values

TASK_OPTIONS = ("queue", "priority", "eta", "countdown", "ttl", "max_retries", "backoff",
                "backoff_max", "timeout", "key", "replicas", "at_most_once", "offset")
_OPTION_SET = frozenset(TASK_OPTIONS)

#: What another task queue's task option is called here, or why there is none:
#: said by :func:`unknown_options` for a name a Celery, Dramatiq or RQ user types
#: (docs/celery.md). Keys are the other libraries' names, never miyaq's own.
FOREIGN_OPTIONS = {
    "time_limit": "the lease is 'timeout', in seconds (a handler past it without ctx.touch() is stopped and "
                  "the attempt fails)",
    "soft_time_limit": "the lease is 'timeout', in seconds; there is no soft limit",
    "job_timeout": "the lease is 'timeout', in seconds",
    "expires": "'ttl': seconds from acceptance within which the task must start",
    "default_retry_delay": "'backoff': the base of the exponential retry delay, in seconds",
    "retry_backoff": "'backoff': the base of the exponential retry delay, in seconds",
    "retry_backoff_max": "'backoff_max', in seconds",
    "min_backoff": "'backoff', in seconds (not milliseconds)",
    "max_backoff": "'backoff_max', in seconds (not milliseconds)",
    "autoretry_for": "every exception is retried up to 'max_retries' (default 3); raise miyaq.Reject to fail "
                     "without retrying",
    "retry_for": "every exception is retried up to 'max_retries' (default 3); raise miyaq.Reject to fail "
                 "without retrying",
    "bind": "call miyaq.current_task() inside the handler for its id, attempt and touch()",
    "ignore_result": "results are always kept, for the node's result_ttl",
    "store_results": "results are always kept, for the node's result_ttl",
    "result_ttl": "results are kept for the node's result_ttl (a node setting)",
    "acks_late": "a task whose worker is lost runs again by default; at_most_once=True never runs it twice",
    "reject_on_worker_lost": "a task whose worker is lost runs again by default; at_most_once=True never runs "
                             "it twice",
    "rate_limit": "rates are per queue, on the node: `miyaq queue limit QUEUE --rate R`",
    "serializer": "arguments and results are always msgpack",
    "queue_name": "'queue'",
    "actor_name": "'name'",
    "routing_key": "'queue'",
}


def unknown_options(unknown: Iterable[str]) -> str:
    """The message for task options not in :data:`TASK_OPTIONS`: each name,
    what it is called here when another task queue's (:data:`FOREIGN_OPTIONS`),
    and the options there are. Names are shown with ``repr`` and at most
    five of them, so a caller's typo list keeps the message one short line."""
    names = sorted(str(n) for n in unknown)
    said = [f"{n!r} ({FOREIGN_OPTIONS[n]})" if n in FOREIGN_OPTIONS else repr(n) for n in names[:5]]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return (f"unknown task option(s): {', '.join(said)}{more}; the task options are {', '.join(TASK_OPTIONS)} "
            "(docs/python-api.md; coming from Celery: docs/celery.md)")


_ID_BYTES = 16
_POOL_BYTES = _ID_BYTES * 256
_random = threading.local()   # per thread: a pool of os.urandom bytes and the next offset in it


def _forget_pool() -> None:
    _random.__dict__.clear()


os.register_at_fork(after_in_child=_forget_pool)   # a child must never reuse its parent's bytes


def new_id() -> str:
    """A fresh random 128-bit task id (32 hex digits) from ``os.urandom``,
    read 256 ids at a time (one system call per id was a measurable share of
    a pipelined submit). The pool is per thread and forgotten in a forked
    child, so no two ids come from the same bytes."""
    pool = _random.__dict__
    offset = pool.get("offset", _POOL_BYTES)
    if offset >= _POOL_BYTES:
        pool["bytes"] = os.urandom(_POOL_BYTES)
        offset = 0
    pool["offset"] = offset + _ID_BYTES
    return pool["bytes"][offset:offset + _ID_BYTES].hex()


def submit_id(task_id: str | None) -> str:
    """The id a submit goes with: ``task_id``, or a new one when None. One
    that is not a string is InvalidField here, before anything is sent: the
    client keys its unacknowledged submits by id (a list's would break its
    I/O loop), and the node's refusal of an int's would match no submit (the
    caller waited for its deadline). A string UTF-8 cannot encode (a lone
    surrogate) is TypeError (:func:`check_text`). Any other string goes to
    the node, which refuses a malformed one by name."""
    if task_id is None:
        return new_id()
    if not isinstance(task_id, str):
        raise InvalidField(f"field 'id' must be a string, not {type(task_id).__name__}", field="id")
    if not task_id.isascii():
        check_text(task_id, "id")
    return task_id


def check_text(value: str, field: str, what: str = "task") -> None:
    """TypeError naming ``field`` (of a ``what``: task, request) if ``value``
    has a character UTF-8 cannot encode: a lone surrogate, what
    ``os.fsdecode()`` and ``errors="surrogateescape"`` make of bytes that are
    not UTF-8 (a file name, an environment variable). msgpack would fail on
    it where the client encodes the message -- in its I/O loop, for a
    submit sent in a batch. The message shows the character escaped
    (``\\udce9``), so printing it never fails in turn. An ASCII string
    passes at once (``str.isascii`` reads a flag: about 30 ns)."""
    if value.isascii():
        return
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise TypeError(f"{what} field {field!r} is a string msgpack cannot encode: "
                        f"{value[exc.start:exc.end]!r} at position {exc.start} {_SURROGATE}") from None


_SURROGATE = ("is a lone surrogate (as os.fsdecode() or errors='surrogateescape' make of bytes that are not "
              "UTF-8); decode the bytes with their real encoding, or with errors='replace'")


def pack_args(args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None) -> bytes:
    """A task's arguments as its payload; TypeError for arguments msgpack
    cannot encode -- an object, an int past 64 bits, a list that contains
    itself or nests too deep (msgpack raises OverflowError or ValueError for
    the last three: the documented error is TypeError)."""
    try:
        return msgpack.packb([list(args), kwargs or {}], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"task arguments msgpack cannot encode: {exc}{ARGS_HINT}") from None


ARGS_HINT = ("; pass plain data -- None, bool, int (64 bits), float, str, bytes, lists and dicts of them: a "
             "datetime as .isoformat() or .timestamp(), a set as a list, an object by its id")
"""What a task's arguments may be, said when they cannot be encoded
(docs/python-api.md, "Arguments, results and msgpack")."""


def options_wire(options: Mapping[str, Any]) -> dict[str, Any]:
    """Task options as SUBMIT fields: None left out, a datetime ``eta`` as unix
    time. An unknown option raises TypeError (like an unknown keyword)."""
    if not options:
        return {}
    unknown = options.keys() - _OPTION_SET
    if unknown:
        raise TypeError(unknown_options(unknown))
    wire = {k: v for k, v in options.items() if v is not None}
    eta = wire.get("eta")
    if eta is not None and hasattr(eta, "timestamp"):
        wire["eta"] = eta.timestamp()
    return wire


#: Field values msgpack always encodes (an int: within 64 bits; a str: when
#: UTF-8 can encode it, :func:`check_text`).
_PLAIN = frozenset({float, bool, bytes, type(None)})


def encodable(fields: dict[str, Any], what: str = "task", keys: bool = False) -> None:
    """Raise TypeError naming the field, in the caller, if msgpack cannot
    encode a field of ``fields`` (a set, an object, an int past 64 bits, a
    string with a lone surrogate) of a ``what`` (task, request). The I/O
    loop encodes what it sends (a batch of submits at once): a field it
    could not encode there failed the loop, every later call of the client
    failing, and lost the batch. Fields of plain values (a task's usual
    options, ASCII strings) are looked at, not encoded: a trial encode cost
    a submit about a tenth of its CPU in bulk. With ``keys`` the keys are
    checked too (a request's body may come from the caller; a task's keys
    are option names, checked by :func:`options_wire`)."""
    for name, value in fields.items():
        kind = type(value)
        if kind is str:
            if not value.isascii():
                check_text(value, str(name), what)
        elif kind not in _PLAIN and not (kind is int and -(2**63) <= value < 2**64):
            _trial(value, name, what)
        if keys and (type(name) is not str or not name.isascii()):
            _trial(name, name, what)


def _trial(value: Any, name: Any, what: str) -> None:
    """Encode ``value`` (field ``name``) once: TypeError naming the field if msgpack cannot."""
    try:
        msgpack.packb(value, use_bin_type=True)
    except UnicodeEncodeError as exc:
        raise TypeError(f"{what} field {name!r} is a value msgpack cannot encode: a string in it holds "
                        f"{exc.object[exc.start:exc.end]!r}, which {_SURROGATE}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{what} field {name!r} is a value msgpack cannot encode: {exc}") from None


#: The commands a node answers with a REPLY (or an ERROR) naming the request.
REQUEST_COMMANDS = c.REQUESTS | {c.TOUCH}


def check_request(command: bytes, body: dict[str, Any]) -> None:
    """TypeError, in the caller, for a request the I/O loop could not send:
    a command that is not bytes, a body that is not a dict, or one msgpack
    cannot encode (:func:`encodable`); :class:`~miyaq.errors.UnknownCommand`
    for a command no node answers as a request (``REQUEST_COMMANDS``): a
    node answers an unknown one with an ERROR that names no request, and
    before 2026-12-07 the call waited its whole timeout for a REPLY and
    raised ``Timeout`` (review30)."""
    if not isinstance(command, bytes):
        raise TypeError(f"a request's command must be bytes (b\"STATUS\"), not {type(command).__name__}")
    if command not in REQUEST_COMMANDS:
        known = ", ".join(sorted(name.decode() for name in REQUEST_COMMANDS))
        raise UnknownCommand(f"{command[:32]!r} is not a request a node answers (one of {known})")
    if not isinstance(body, dict):
        raise TypeError(f"a request's body must be a dict, not {type(body).__name__}")
    encodable(body, "request", keys=True)


def unsendable(fields: dict[str, Any]) -> tuple[str, str] | None:
    """The first field of ``fields`` msgpack cannot encode and why, or None:
    what the I/O loop says of a message that reached it unencodable
    (:meth:`miyaq.client.core.ClientCore._send`), slow and thorough."""
    for name, value in fields.items():
        try:
            msgpack.packb({name: value}, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            return str(name), str(exc)
    return None


def task_wire(name: str, args: Iterable[Any], kwargs: dict[str, Any] | None,
              options: Mapping[str, Any]) -> dict[str, Any]:
    """A named task's SUBMIT entry, without its id. TypeError for a name or
    option msgpack cannot encode (:func:`encodable`), InvalidField for an
    option value the node would refuse (:mod:`.option_values`)."""
    wire = options_wire(options)
    wire["name"] = name
    if len(wire) != 1 or type(name) is not str or not name.isascii():    # an ASCII name alone: nothing to check
        encodable(wire)
        check_option_values(wire)
    wire["body"] = pack_args(args, kwargs)
    return wire


def url_wire(url: str, body: bytes, method: str, headers: dict[str, str] | None,
             options: Mapping[str, Any]) -> dict[str, Any]:
    """A webhook task's SUBMIT entry, without its id. TypeError for a body
    that is not bytes, or a field msgpack cannot encode (:func:`encodable`);
    InvalidField for an option value the node would refuse (:mod:`.option_values`)."""
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"a webhook body must be bytes, not {type(body).__name__}")
    wire = options_wire(options)
    wire.update(url=url, method=method)
    if headers:
        wire["headers"] = headers
    encodable(wire)
    check_option_values(wire)
    wire["body"] = body
    return wire


def accepted_as(task_id: str, value: tuple[str, str, Any]) -> tuple[str, str | None]:
    """From a submit's acknowledgement (node, status, detail): the node that
    accepted it and, for a ``key`` duplicate, the id of the task holding the key."""
    node, status, detail = value
    if status == "duplicate" and isinstance(detail, str) and detail != task_id:
        return node, detail
    return node, None


def decode_outcome(task_id: str, answer: dict[str, Any]) -> Any:
    """A RESULT answer as the handler's return value, or the exception it stands for."""
    state = answer.get("state")
    if state == "done":
        raw = answer.get("result")
        if raw is None:
            return None
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception:      # msgpack raises several unrelated types; a non-bytes result is TypeError
            raise ProtocolError(f"the result of task {task_id} is not msgpack") from None
    error = answer.get("error")
    if not isinstance(error, dict):
        error = {}
    if state == "dead":
        remote_type, remote_message = str(error.get("type", "")), str(error.get("message", ""))
        raise TaskFailed(f"task {task_id} failed: {remote_type}: {remote_message}",
                         remote_type=remote_type, remote_message=remote_message,
                         traceback=str(error.get("traceback", "")))
    if state == "cancelled":
        raise TaskCancelled(f"task {task_id} was cancelled")
    if state == "expired":
        raise TaskExpired(f"task {task_id} expired before it started")
    held = HELD_SLOT if state in ("ready", "running") and in_handler is not None and in_handler() else ""
    raise Timeout(f"task {task_id} is still {state}{STILL.get(str(state), '').format(id=task_id)}{held}")


#: Whether the calling code runs in a worker's handler, or None: set by
#: :mod:`miyaq.worker.context` (which this package may not import).
in_handler: Callable[[], bool] | None = None

#: Added to a result wait's Timeout in a handler, for a task that waits for
#: a worker's slot: this wait may hold the slot it needs.
HELD_SLOT = ("; this wait runs in a handler, which holds its worker's slot while it waits: a handler that waits for "
             "a task its own workers must run can wait for ever (docs/python-api.md, \"Waiting for a task in a "
             "handler\")")

STILL = {
    "ready": (": no worker of its queue took it in time (none running for that queue, or all busy: "
              "`miyaq status` lists each queue's workers and idle slots)"),
    "running": ": a worker holds it (its handler runs, or it waits in that worker's prefetch for a free slot)",
    "retrying": ": its attempts failed so far (`miyaq status {id}` shows the last error)",
    "scheduled": ": its countdown or eta has not come",
}
"""What a result wait that ran out in each state most likely means (its
Timeout's message, after "task ID is still STATE")."""


class ReceivedTask:
    """A task taken by ``receive()``: ``id``, ``name``, ``queue``, ``attempt``,
    ``args``, ``kwargs`` (decoded from the ``[args, kwargs]`` payload; another
    shape arrives as ``args == [payload]``, ``kwargs == {}``) and ``info``
    (the whole task map). The clients add ``ack``, ``nack`` and ``touch``."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.id: str = info["id"]
        self.name: str | None = info.get("name")
        self.queue: str = info["queue"]
        self.attempt: int = info["attempt"]
        body = info.get("body") or b""
        try:
            self.args, self.kwargs = msgpack.unpackb(body, raw=False, strict_map_key=False) if body else ([], {})
        except Exception:
            self.args, self.kwargs = [body], {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.queue}>"
