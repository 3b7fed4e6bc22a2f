"""Producer and operator commands: submit, status, tasks, cancel, dead."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigError, InvalidField, TaskCancelled, TaskExpired, TaskFailed, Timeout
from .answers import reading
from .connect import add_client_options as _connect_option
from .connect import client as _connected
from . import numbers
from .status_view import clock_time, print_node_status, print_task, shown


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


def _json_ready(value: Any) -> Any:
    """``value`` with every map's keys made strings, as JSON's are: a result
    is whatever a worker returned, and msgpack takes maps that ``json.dumps``
    does not -- keys of mixed types (``sort_keys`` compares them) or bytes.
    Before 2026-12-07 (review31) ``miyaq status ID --json`` of such a result
    ended in a TypeError traceback. A key JSON takes is written as JSON
    writes it (``1`` -> ``"1"``, ``True`` -> ``"true"``); another as ``str``."""
    if isinstance(value, dict):
        return {_json_key(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    return str(key)


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_json_ready(obj), indent=2, sort_keys=True, default=str))
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            print(f"{shown(k)}: {shown(v)}")
    else:
        print(shown(obj))


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
            print(f"miyaq: error: {shown(failure)}", file=sys.stderr)
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
            print_task(status)
        else:
            print_node_status(status)
    return 0


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
            when = clock_time(t.get("eta"))
            print(f"{shown(t['id'])}  {shown(t['queue']):<12} {shown(t['state']):<10} "
                  f"prio={shown(t['priority']):<4} eta={when} attempt={shown(t['attempt'])} "
                  f"{shown(t.get('name') or t.get('url'))}")
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
                print(f"{done} {len(ids)} dead task(s)" + "".join(f"\n  {shown(i)}" for i in ids) + _missed(missed))
        elif args.json:
            _print(answer["tasks"], True)
        else:
            for t in answer["tasks"]:
                err = t.get("error") or {}
                lost = t.get("args_lost")
                print(f"{shown(t['id'])}  {shown(t['queue']):<12} attempt={shown(t['attempt'])} "
                      f"{shown(err.get('type', ''))}: {shown(err.get('message', ''))}"
                      + (f"  [arguments lost with node {shown(lost)}: cannot be retried]" if lost else ""))
            print(f"{len(answer['tasks'])} dead task(s)" + _cut(len(answer["tasks"]), args.limit))
    return 0
