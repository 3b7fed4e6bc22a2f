"""How ``miyaq status`` and ``miyaq tasks`` show what a node answered: a
task's fields, a node's status, the names and times in them. Every value
an answer carries is anyone's text (a producer's task name, a worker's
error message) and is shown with its control characters escaped
(:func:`shown`); ``--json`` prints the answers as they are."""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..logs import escape_controls
from ..protocol.name_labels import name_label


def shown(value: Any) -> str:
    """``value`` as text for a table or a ``key: value`` line, its control
    characters escaped (:func:`miyaq.logs.escape_controls`). Every value an
    answer carries goes through it: a task's name, a worker's id, an error
    message are anyone's text (a producer's, a worker's), and an escape
    sequence or a line break printed raw would clear the operator's screen,
    retitle the terminal or forge rows. ``--json`` prints answers as JSON,
    whose strings escape control characters already."""
    return escape_controls(str(value))


def clock_time(value: Any) -> str:
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


TASK_TIMES = frozenset({"eta", "created", "finished", "expires", "lease_end", "started"})
"""The fields of a TASK answer that are unix times (docs/protocol.md, 5.3)."""


def print_task(task: dict[str, Any]) -> None:
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
            print(f"{shown(key)}: {shown(value)} ({local_time(value)})")
        elif key == "error" and isinstance(value, dict):
            print(f"{label}: {shown(value.get('type', ''))}: {shown(value.get('message', ''))}")
            trace = value.get("traceback")
            if trace:
                print("traceback:")
                for line in str(trace).rstrip("\n").split("\n"):
                    print(f"  {shown(line)}")
        else:
            print(f"{shown(key)}: {shown(value)}")


def local_time(value: float) -> str:
    """A unix time as the local ``YYYY-MM-DD HH:MM:SS``, or ``-`` out of range."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    except (OverflowError, OSError, ValueError):
        return "-"


def print_node_status(status: dict[str, Any]) -> None:
    print(f"node {shown(status['node'])}  version {shown(status['version'])}  up {status['uptime']:.0f}s  "
          f"accepting {shown(status['accepting'])}")
    totals = status["totals"]
    bound = status.get("max_tasks")
    live = f"live {totals['live']}" + (f" of {bound}" if bound else "")
    print(shown(f"{live}  dead {totals['dead']}  workers {totals['workers']}"))
    if bound and totals["live"] >= bound:
        print(shown(f"FULL: {totals['live']} live tasks, max_tasks {bound}: new tasks are refused busy until "
                     "workers finish some (or raise max_tasks)"))
    memory = status.get("memory")
    if memory:
        print(f"payloads {mib(memory['payload_bytes'])} of {mib(memory['max_bytes'])}  "
              f"results {mib(memory['result_bytes'])} of {mib(memory['max_result_bytes'])}")
    storage = status.get("storage")
    if storage:
        state = "ok" if storage["writable"] else f"REFUSING NEW TASKS, log not writable: {storage['error']}"
        print(shown(f"storage {state}  (faults {storage['faults']}, write errors {storage['write_errors']}, "
                     f"fsync errors {storage['fsync_errors']})"))
    files = status.get("open_files")
    if files and files.get("near"):
        print(shown(f"OPEN FILES {files['open']} of the limit of {files['limit']}: connections past it are "
                     "refused; raise the limit (docs/configuration.md, \"Open files\")"))
    for line in handshake_lines(status.get("security") or {}):
        print(line)
    cols = ("scheduled", "ready", "running", "retrying", "dead", "workers", "idle")
    print(f"{'queue':<24}" + "".join(f"{c:>10}" for c in cols))
    for name, row in sorted(status["queues"].items()):
        paused = "  PAUSED" if row.get("paused") else ""     # dispatch stopped here: `miyaq queue resume`
        print(f"{shown(name):<24}" + "".join(f"{shown(row.get(c, 0)):>10}" for c in cols) + paused)
    if "workers" not in status:
        if totals["workers"]:
            print("(the workers' list is shown to admin keys only)")
        return
    workers = status["workers"] or []
    if workers:
        print(f"{'worker':<32}{'pool':>10}{'concurrency':>12}{'running':>9}  queues  tasks")
        for w in workers:
            stopping = "  STOPPING" if w.get("stopping") is True else ""   # sent nothing more (protocol.md 7.9)
            print(f"{shown(w.get('worker', '?')):<32}{shown(w.get('pool', '-')):>10}"
                  f"{shown(w.get('concurrency', '-')):>12}{shown(w.get('running', 0)):>9}  "
                  f"{shown(','.join(w.get('queues') or []))}  {task_names(w)}{stopping}")


NAMES_SHOWN = 3
"""Task names a worker's row in ``miyaq status`` shows at most (the node's
row carries up to 20; the console shows 5)."""


def task_names(row: dict[str, Any]) -> str:
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
    listed = ",".join(name_label(n) for n in names[:NAMES_SHOWN])
    return shown(listed + (f" and {more} more" if more > 0 else ""))


def handshake_lines(security: dict[str, Any]) -> list[str]:
    """The handshakes that failed before any key was checked (by port and
    reason) and those whose key was refused (with keys), when there were
    any since the node started: a client, worker or node with a wrong key
    or none, or something that is not a ZeroMQ peer (docs/operations.md).
    None when all counts are 0."""
    lines = []
    failed = security.get("handshakes_failed") or {}
    ports = [f"{port}: " + at_most(f"{reason} {count}" for reason, count in sorted(reasons.items()) if count)
             for port, reasons in sorted(failed.items()) if any(reasons.values())]
    if ports:
        lines.append(shown("handshakes failed before any key was checked  " + at_most(ports, "; ")))
    refused = security.get("handshakes_refused") or 0
    if refused:
        lines.append(shown(f"handshakes refused (key unknown, revoked or not a peer's)  {refused}"))
    return lines


SHOWN_PARTS = 8
"""Ports, and reasons a port, a handshake line shows at most: a node has
two ports and a handful of reasons; an answer with thousands (a hostile or
broken node) made one line of 249 KB."""


def at_most(parts: Iterable[str], sep: str = ", ") -> str:
    """The first :data:`SHOWN_PARTS` of ``parts`` joined, and how many more."""
    items = list(parts)
    more = len(items) - SHOWN_PARTS
    return sep.join(items[:SHOWN_PARTS]) + (f"{sep}and {more} more" if more > 0 else "")


def mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"
