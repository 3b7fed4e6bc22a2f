"""Producer and operator commands: submit, status, tasks, cancel, dead."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError, InvalidField, TaskCancelled, TaskExpired, TaskFailed, Timeout
from ..logs import escape_controls
from ..protocol.name_labels import name_label
from .answers import reading
from .connect import add_client_options as _connect_option
from .connect import client as _connected
from . import numbers


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a task by name")
    p.add_argument("name", help="the handler's registered name")
    p.add_argument("--args", default="[]", help="JSON list of positional arguments")
    p.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    p.add_argument("--queue", default=None, help="the queue it waits in (default: default)")
    p.add_argument("--priority", type=numbers.integer(), default=None, help="lower runs first")
    p.add_argument("--countdown", type=numbers.seconds, default=None, help="seconds from now")
    p.add_argument("--eta", type=numbers.real(0.0), default=None, help="unix time to run at")
    p.add_argument("--ttl", type=numbers.positive_seconds, default=None, help="expire if not started within")
    p.add_argument("--dedup-key", default=None, metavar="KEY",
                   help="deduplication key (a second submit with it answers 'duplicate')")
    p.add_argument("--max-retries", type=numbers.integer(0, 10_000), default=None,
                   help="retries after the first attempt (default: the node's --default-max-retries, 3)")
    p.add_argument("--timeout", type=numbers.positive_seconds, default=None, help="lease in seconds")
    p.add_argument("--id", default=None, help="task id (default: a new 128-bit id)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the result and print it (exit status 1: the task ended without one -- dead, "
                        "cancelled or expired; 3: --wait-timeout passed first)")
    p.add_argument("--wait-timeout", type=numbers.seconds, default=60.0,
                   help="with --wait, seconds to wait for the result [default 60]")
    _connect_option(p)
    p.set_defaults(run=run_submit)

    p = sub.add_parser("status", help="a node's status, or one task's")
    p.add_argument("id", nargs="?", help="task id (omit for the node)")
    _connect_option(p)
    p.set_defaults(run=run_status)

    p = sub.add_parser("tasks", help="list tasks")
    p.add_argument("--queue", default=None, help="only this queue's tasks")
    p.add_argument("--state", default=None,
                   help="only tasks in this state: scheduled, ready, running, retrying or dead (finished tasks "
                        "are not listed: `miyaq status ID`)")
    p.add_argument("--limit", type=numbers.integer(1, 10_000), default=100, help="most tasks listed [default 100]")
    _connect_option(p)
    p.set_defaults(run=run_tasks)

    p = sub.add_parser("cancel", help="cancel a task")
    p.add_argument("id", help="the task's id (exit status 1 when it was not cancelled: it had finished)")
    _connect_option(p)
    p.set_defaults(run=run_cancel)

    p = sub.add_parser("dead", help="the dead-letter queue: list, retry ID..., purge")
    p.add_argument("op", choices=("list", "retry", "purge"),
                   help="list them; retry: put them back, attempts reset; purge: delete them")
    p.add_argument("ids", nargs="*", help="task ids (retry, purge: none means every dead task)")
    p.add_argument("--queue", default=None, help="only this queue's dead tasks (not with ids: ids name their tasks)")
    p.add_argument("--limit", type=numbers.integer(1, 10_000), default=100,
                   help="list: most tasks listed [default 100]")
    _connect_option(p)
    p.set_defaults(run=run_dead)


def _client(args: argparse.Namespace) -> Any:
    return _connected(args, submit_timeout=10.0, request_timeout=5.0)


def _node(args: argparse.Namespace) -> str:
    """Where the command's answers come from, for an error about their shape."""
    return f"the node at {args.connect}" if getattr(args, "connect", None) else "the node"


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}") from None


def _shown(value: Any) -> str:
    """``value`` as text for a table or a ``key: value`` line, its control
    characters escaped (:func:`miyaq.logs.escape_controls`). Every value an
    answer carries goes through it: a task's name, a worker's id, an error
    message are anyone's text (a producer's, a worker's), and an escape
    sequence or a line break printed raw would clear the operator's screen,
    retitle the terminal or forge rows. ``--json`` prints answers as JSON,
    whose strings escape control characters already."""
    return escape_controls(str(value))


def _clock_time(value: Any) -> str:
    """``value``, a unix time from an answer, as the local ``HH:MM:SS``, or
    ``-`` when it is no time this machine can show (not a number, or out of
    its ``localtime`` range): one odd row must not end the whole listing
    (before 2026-12-05 an eta of 1e17, a copy moved by a peer's skewed
    clock, ended ``miyaq tasks`` with a traceback)."""
    if type(value) is not float and type(value) is not int:
        return "-"
    try:
        return time.strftime("%H:%M:%S", time.localtime(value))
    except (OverflowError, OSError, ValueError):
        return "-"


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True, default=str))
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            print(f"{_shown(k)}: {_shown(v)}")
    else:
        print(_shown(obj))


EXIT_NO_RESULT = 1
"""``miyaq submit --wait``'s exit status when the task ended without a result (dead, cancelled, expired)."""
EXIT_STILL_WAITING = 3
"""``miyaq submit --wait``'s exit status when ``--wait-timeout`` passed before the task finished."""


def run_submit(args: argparse.Namespace) -> int:
    task_args = _json(args.args, "--args")
    task_kwargs = _json(args.kwargs, "--kwargs")
    if not isinstance(task_args, list) or not isinstance(task_kwargs, dict):
        raise ConfigError("--args must be a JSON list and --kwargs a JSON object")
    options = {"queue": args.queue, "priority": args.priority, "countdown": args.countdown, "eta": args.eta,
               "ttl": args.ttl, "key": args.dedup_key, "max_retries": args.max_retries, "timeout": args.timeout}
    client = _client(args)
    try:
        handle = client.submit(args.name, task_args, task_kwargs, id=args.id, wait=True, **options)
        out: dict[str, Any] = {"id": handle.task_id, "status": "accepted"}
        if handle.duplicate_of:
            out["status"] = "duplicate"
        code, failure = 0, None
        if args.wait:
            code, failure = _wait_outcome(client, handle, args.wait_timeout, out)
        # As text, why there is no result is the error line on stderr (as
        # main printed it before 2026-12-07, with exit status 2 and nothing on stdout).
        _print(out if args.json else {k: v for k, v in out.items() if k != "error"}, args.json)
        if failure is not None and not args.json:
            print(f"miyaq: error: {_shown(failure)}", file=sys.stderr)
    finally:
        client.close(flush=False)
    return code


def _wait_outcome(client: Any, handle: Any, timeout: float, out: dict[str, Any]) -> tuple[int, str | None]:
    """Wait for the task's outcome and put it in ``out``: its ``state`` and
    its ``result`` (done), or an ``error`` (``type``, ``message``, and a
    dead task's ``traceback``) saying why there is none. The exit status
    and, if it did not finish done, the error's line. Before 2026-12-07 a
    task that did not end done was a MiyaqError for main: exit status 2 (a
    usage error's) and, with ``--json``, nothing on stdout."""
    from ..client.wire import decode_outcome
    answer = client.wait_result(handle.task_id, timeout, node=handle.node)
    state = answer.get("state")
    out["state"] = state if isinstance(state, str) else None
    try:
        out["result"] = decode_outcome(handle.task_id, answer)
        return 0, None
    except TaskFailed as err:
        out["error"] = {"type": err.remote_type, "message": err.remote_message}
        if err.traceback:
            out["error"]["traceback"] = err.traceback
        return EXIT_NO_RESULT, err.message
    except (TaskCancelled, TaskExpired, Timeout) as err:
        out["error"] = {"type": type(err).__name__, "message": err.message}
        return (EXIT_STILL_WAITING if isinstance(err, Timeout) else EXIT_NO_RESULT), err.message


def run_status(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        status = client.status(args.id)
    finally:
        client.close(flush=False)
    with reading(_node(args), raw_hint=not args.json):
        if args.json:
            _print(status, True)
        elif args.id:
            _print_task(status)
        else:
            _print_node_status(status)
    return 0


TASK_TIMES = frozenset({"eta", "created", "finished", "expires", "lease_end", "started"})
"""The fields of a TASK answer that are unix times (docs/protocol.md, 5.3)."""


def _print_task(task: dict[str, Any]) -> None:
    """``miyaq status ID``: one ``key: value`` line per field, a time also as
    the local date and time after its unix value, the last error as ``type:
    message`` with its traceback, if any, below it, indented. Before
    2026-12-06 times were bare unix numbers and the error a Python dict on
    one line, its traceback's line breaks printed as ``\\n``.

    The error is labelled ``error:`` only on a dead task, whose last attempt
    it ended; in any other state it is an earlier attempt's, ``last failed
    attempt:`` (before 2026-12-07 a task done at its second attempt showed
    ``error: Lost: worker ... went silent``, read as the task's failure)."""
    label = "error" if task.get("state") == "dead" else "last failed attempt"
    for key, value in task.items():
        if key in TASK_TIMES and type(value) in (int, float):
            print(f"{_shown(key)}: {_shown(value)} ({_local_time(value)})")
        elif key == "error" and isinstance(value, dict):
            print(f"{label}: {_shown(value.get('type', ''))}: {_shown(value.get('message', ''))}")
            trace = value.get("traceback")
            if trace:
                print("traceback:")
                for line in str(trace).rstrip("\n").split("\n"):
                    print(f"  {_shown(line)}")
        else:
            print(f"{_shown(key)}: {_shown(value)}")


def _local_time(value: float) -> str:
    """A unix time as the local ``YYYY-MM-DD HH:MM:SS``, or ``-`` out of range."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    except (OverflowError, OSError, ValueError):
        return "-"


def _print_node_status(status: dict[str, Any]) -> None:
    print(f"node {_shown(status['node'])}  version {_shown(status['version'])}  up {status['uptime']:.0f}s  "
          f"accepting {_shown(status['accepting'])}")
    totals = status["totals"]
    bound = status.get("max_tasks")
    live = f"live {totals['live']}" + (f" of {bound}" if bound else "")
    print(_shown(f"{live}  dead {totals['dead']}  workers {totals['workers']}"))
    if bound and totals["live"] >= bound:
        print(_shown(f"FULL: {totals['live']} live tasks, max_tasks {bound}: new tasks are refused busy until "
                     "workers finish some (or raise max_tasks)"))
    memory = status.get("memory")
    if memory:
        print(f"payloads {_mib(memory['payload_bytes'])} of {_mib(memory['max_bytes'])}  "
              f"results {_mib(memory['result_bytes'])} of {_mib(memory['max_result_bytes'])}")
    storage = status.get("storage")
    if storage:
        state = "ok" if storage["writable"] else f"REFUSING NEW TASKS, log not writable: {storage['error']}"
        print(_shown(f"storage {state}  (faults {storage['faults']}, write errors {storage['write_errors']}, "
                     f"fsync errors {storage['fsync_errors']})"))
    files = status.get("open_files")
    if files and files.get("near"):
        print(_shown(f"OPEN FILES {files['open']} of the limit of {files['limit']}: connections past it are "
                     "refused; raise the limit (docs/configuration.md, \"Open files\")"))
    for line in _handshake_lines(status.get("security") or {}):
        print(line)
    cols = ("scheduled", "ready", "running", "retrying", "dead", "workers", "idle")
    print(f"{'queue':<24}" + "".join(f"{c:>10}" for c in cols))
    for name, row in sorted(status["queues"].items()):
        paused = "  PAUSED" if row.get("paused") else ""     # dispatch stopped here: `miyaq queue resume`
        print(f"{_shown(name):<24}" + "".join(f"{_shown(row.get(c, 0)):>10}" for c in cols) + paused)
    if "workers" not in status:
        if totals["workers"]:
            print("(the workers' list is shown to admin keys only)")
        return
    workers = status["workers"] or []
    if workers:
        print(f"{'worker':<32}{'pool':>10}{'concurrency':>12}{'running':>9}  queues  tasks")
        for w in workers:
            stopping = "  STOPPING" if w.get("stopping") is True else ""   # sent nothing more (protocol.md 7.9)
            print(f"{_shown(w.get('worker', '?')):<32}{_shown(w.get('pool', '-')):>10}"
                  f"{_shown(w.get('concurrency', '-')):>12}{_shown(w.get('running', 0)):>9}  "
                  f"{_shown(','.join(w.get('queues') or []))}  {_task_names(w)}{stopping}")


NAMES_SHOWN = 3
"""Task names a worker's row in ``miyaq status`` shows at most (the node's
row carries up to 20; the console shows 5)."""


def _task_names(row: dict[str, Any]) -> str:
    """The task names the node sends a worker, as its ``miyaq status`` row
    says them (``names``, ``names_more``; docs/http.md, ``GET /workers``):
    ``any``; the first :data:`NAMES_SHOWN` and how many more; ``none``
    (it declared an empty list); ``-`` from a
    node that does not say; ``?`` for a value no node sends. A declared
    name that could be read as one of these, or as the list's own commas
    and marks, is quoted (:func:`~miyaq.protocol.name_labels.name_label`)."""
    names, more = row.get("names"), row.get("names_more", 0)
    if names is None:
        return "-"
    if names == "any":
        return "any"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or type(more) is not int:
        return "?"
    if not names and not more:
        return "none"                   # READY names_only with no names: the console says so too
    more += max(0, len(names) - NAMES_SHOWN)
    shown = ",".join(name_label(n) for n in names[:NAMES_SHOWN])
    return _shown(shown + (f" and {more} more" if more > 0 else ""))


def _handshake_lines(security: dict[str, Any]) -> list[str]:
    """The handshakes that failed before any key was checked (by port and
    reason) and those whose key was refused (with keys), when there were
    any since the node started: a client, worker or node with a wrong key
    or none, or something that is not a ZeroMQ peer (docs/operations.md).
    None when all counts are 0."""
    lines = []
    failed = security.get("handshakes_failed") or {}
    ports = [f"{port}: " + _at_most(f"{reason} {count}" for reason, count in sorted(reasons.items()) if count)
             for port, reasons in sorted(failed.items()) if any(reasons.values())]
    if ports:
        lines.append(_shown("handshakes failed before any key was checked  " + _at_most(ports, "; ")))
    refused = security.get("handshakes_refused") or 0
    if refused:
        lines.append(_shown(f"handshakes refused (key unknown, revoked or not a peer's)  {refused}"))
    return lines


SHOWN_PARTS = 8
"""Ports, and reasons a port, a handshake line shows at most: a node has
two ports and a handful of reasons; an answer with thousands (a hostile or
broken node) made one line of 249 KB."""


def _at_most(parts: Iterable[str], sep: str = ", ") -> str:
    """The first :data:`SHOWN_PARTS` of ``parts`` joined, and how many more."""
    items = list(parts)
    more = len(items) - SHOWN_PARTS
    return sep.join(items[:SHOWN_PARTS]) + (f"{sep}and {more} more" if more > 0 else "")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def run_tasks(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        tasks = client.tasks(args.queue, args.state, args.limit)
    finally:
        client.close(flush=False)
    with reading(_node(args), raw_hint=not args.json):
        if args.json:
            _print(tasks, True)
            return 0
        for t in tasks:
            when = _clock_time(t.get("eta"))
            print(f"{_shown(t['id'])}  {_shown(t['queue']):<12} {_shown(t['state']):<10} "
                  f"prio={_shown(t['priority']):<4} eta={when} attempt={_shown(t['attempt'])} "
                  f"{_shown(t.get('name') or t.get('url'))}")
        print(f"{len(tasks)} task(s)" + _cut(len(tasks), args.limit))
    return 0


def _cut(listed: int, limit: int) -> str:
    """After a listing's count: whether it may be cut at ``--limit`` (before
    2026-12-07 "100 dead task(s)" of 105 read as the total)."""
    return f" (the first --limit {limit}; there may be more: --limit N, up to 10,000)" if listed >= limit else ""


def run_cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        cancelled = client.cancel(args.id)
    finally:
        client.close(flush=False)
    _print({"id": args.id, "cancelled": cancelled}, args.json)
    return 0 if cancelled else 1


def _missed(missed: int) -> str:
    """The line after a ``dead retry``/``purge`` of ids, when some were no dead task."""
    if not missed:
        return ""
    return f"\n{missed} of the ids given " + ("is no dead task" if missed == 1 else "are no dead tasks") + \
        " here (`miyaq dead list`)"


def run_dead(args: argparse.Namespace) -> int:
    """``dead list``, or ``retry``/``purge`` of the ids given (ids or
    ``--queue``, not both: a DEAD with ids ignores its queue, so ``purge ID
    --queue qa`` purged ID in whatever queue it was)."""
    if args.ids and args.op == "list":
        raise InvalidField("dead list takes no task ids (--queue and --limit choose what it lists)", field="ids")
    if args.ids and args.queue is not None:
        raise InvalidField(f"dead {args.op}: give task ids or --queue, not both (ids name their tasks, "
                           "whatever queue they are in)", field="queue")
    client = _client(args)
    try:
        if args.op == "list":
            answer = client.dead("list", args.queue, limit=args.limit)
        else:
            answer = client.dead(args.op, args.queue, ids=args.ids or None)
    finally:
        client.close(flush=False)
    with reading(_node(args), raw_hint=not args.json):
        if args.op != "list":
            done = "retried" if args.op == "retry" else "purged"
            if args.json:
                _print({done: answer[done]}, True)
            elif type(answer[done]) is int:       # purge answers a count
                missed = max(0, len(set(args.ids)) - answer[done]) if args.ids else 0
                print(f"{done} {answer[done]} dead task(s)" + _missed(missed))
            else:
                ids = list(answer[done])
                missed = len(set(args.ids) - {str(i) for i in ids})
                print(f"{done} {len(ids)} dead task(s)" + "".join(f"\n  {_shown(i)}" for i in ids) + _missed(missed))
        elif args.json:
            _print(answer["tasks"], True)
        else:
            for t in answer["tasks"]:
                err = t.get("error") or {}
                print(f"{_shown(t['id'])}  {_shown(t['queue']):<12} attempt={_shown(t['attempt'])} "
                      f"{_shown(err.get('type', ''))}: {_shown(err.get('message', ''))}")
            print(f"{len(answer['tasks'])} dead task(s)" + _cut(len(answer["tasks"]), args.limit))
    return 0
