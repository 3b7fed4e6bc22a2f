"""What the command line prints of a node's answers: the values in them are
anyone's text -- a task's name is its producer's, a worker's id and pool and
a failed attempt's message are the worker's -- and reach the operator's
terminal. Tables and ``key: value`` lines print them with their control
characters escaped (:func:`miyaq.logs.escape_controls`, the escaping of log
lines), so no key below ``admin`` can clear the operator's screen, retitle
the terminal or forge rows. ``--json`` is JSON, whose strings escape them
already.

Also: ``miyaq dead retry|purge ID --queue Q`` is a usage error (a DEAD with
ids ignores its queue: the command purged ID in whatever queue it was).
"""
from __future__ import annotations

import json
import os
import re

import pytest
from gateway_harness import WorkerServer
from secure_harness import Keys, Speaker, make_keys, submit, task

from miyaq.cli.main import main
from miyaq.cli.ring_cmd import format_ring
from miyaq.cli.status_view import task_names as _task_names
from miyaq.protocol import commands as c

ESC = "\x1b"
NAME = f"echo{ESC}[2K{ESC}]0;pwned\x07\nFORGED-ID-000000000000000000000  qa           ready      prio=0"
WORKER = f"w1{ESC}[1A{ESC}[2K\rfake-worker"
POOL = f"{ESC}[31mred"
MESSAGE = f"m{ESC}[2J{ESC}[H\nall clear: 0 dead task(s)"
NAMED, DEAD = "inj-task-" + "0" * 20, "inj-dead-" + "0" * 20
#: What must never reach the terminal raw: C0 (the line feed that ends each
#: printed line aside) and C1 controls, DEL, the Unicode line separators.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def escaped(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


@pytest.fixture
def keys(tmp_path) -> Keys:
    return make_keys(os.path.join(str(tmp_path), "keys"))


@pytest.fixture
def hostile(ctx, make_node, keys):
    """A node with keys where a producer key submitted a task named with
    escapes and a forged row, a worker key registered a worker whose id and
    pool hold escapes, and dead-lettered a task with such an error message.
    Returns the admin's command-line options."""
    node = make_node(keys=keys.dir, heartbeat=5.0)     # the raw worker below sends no heartbeats

    def speaker(name: str) -> Speaker:
        public, secret = keys.pair(name)
        return Speaker(ctx, node.endpoint, (public, secret, keys.server_public))

    producer, worker, puller = speaker("producer"), speaker("worker"), speaker("worker")
    assert submit(producer, {**task(NAMED, queue="qa"), "name": NAME})[0][1] == "accepted"
    worker.send(c.READY, {"worker": WORKER, "queues": ["qz"], "pool": POOL, "capacity": 1,
                          "names": [NAME], "names_only": True})
    assert worker.recv()[0] == c.WELCOME
    assert submit(producer, task(DEAD, queue="qd"))[0][1] == "accepted"
    assert puller.ok(c.RECEIVE, {"queues": ["qd"]})["task"]["id"] == DEAD
    assert puller.ok(c.NACK, {"id": DEAD, "attempt": 1, "retry": False,
                              "error": {"type": f"X{ESC}[8m", "message": MESSAGE}})["ok"]
    return ["--connect", node.endpoint, "--key", keys.secret("admin"), "--server-key", keys.server_key]


def printed(capsys, *argv: str) -> list[str]:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    assert not CONTROL.search(out), out
    return out.splitlines()


def test_the_node_status_table_escapes_a_workers_id_and_pool(hostile, capsys):
    """Fault: a worker key registers a worker whose id is
    ``w1 ESC[1A ESC[2K CR fake-worker`` and whose pool is ``ESC[31m``; ``miyaq
    status`` printed them raw in its workers table: the cursor went up a
    line and erased it, the rest of the screen turned red. Now the row holds
    them escaped, and the table has one row for the one worker. The task
    name it declared (a row of its own forged in it) is escaped too, and
    quoted (it is no plain name)."""
    lines = printed(capsys, "status", *hostile)
    rows = [line for line in lines if escaped(WORKER) in line]
    assert len(rows) == 1 and escaped(POOL) in rows[0], lines
    assert rows[0].endswith(f'qz  "{escaped(NAME)}"'), rows[0]
    assert not any(line.startswith("fake-worker") for line in lines)


def test_the_task_listing_escapes_a_producers_task_name(hostile, capsys):
    """Fault: a producer key names a task ``echo ESC[2K ESC]0;pwned BEL`` and a
    line break followed by a row of its own; ``miyaq tasks`` printed it raw:
    the terminal's title changed and a task that does not exist was listed.
    Now the two tasks are two rows and a count, the name escaped."""
    lines = printed(capsys, "tasks", *hostile)
    assert len(lines) == 3 and lines[-1] == "2 task(s)", lines
    [named] = [line for line in lines if line.startswith(NAMED)]
    assert named.endswith(escaped(NAME)), named
    assert not any(line.startswith("FORGED-ID") for line in lines)


def test_the_dead_letter_listing_escapes_a_workers_error(hostile, capsys):
    """Fault: a worker key fails a task for good with the message ``ESC[2J
    ESC[H`` + a line break + ``all clear: 0 dead task(s)``; ``miyaq dead
    list`` cleared the operator's screen and printed that the dead-letter
    queue was empty. Now one row and the true count."""
    lines = printed(capsys, "dead", "list", *hostile)
    assert lines == [f"{DEAD}  {'qd':<12} attempt=1 {escaped('X' + ESC + '[8m')}: {escaped(MESSAGE)}",
                     "1 dead task(s)"], lines


def test_a_tasks_status_escapes_its_name(hostile, capsys):
    """Fault: ``miyaq status ID`` printed each field as ``key: value`` raw, so
    the task's name changed the terminal's title and added a line that read
    as another field. Now one line per field, the name escaped."""
    lines = printed(capsys, "status", NAMED, *hostile)
    assert f"name: {escaped(NAME)}" in lines, lines
    assert all(re.match(r"^[a-z_]+: ", line) for line in lines), lines


def test_json_output_is_the_answer_as_it_came(hostile, capsys):
    """``--json`` is unchanged: JSON escapes control characters in strings,
    and the values are the node's, byte for byte, once parsed."""
    assert main(["tasks", *hostile, "--json"]) == 0
    tasks = json.loads(capsys.readouterr().out)
    assert {t["id"]: t["name"] for t in tasks}[NAMED] == NAME


def test_a_failed_tasks_message_is_escaped_in_the_error_line(ctx, node, capsys):
    """Fault: ``miyaq submit --wait`` ends with ``miyaq: error: <why the task
    failed>``, and that text is its worker's: a worker's message with escapes
    reached the submitter's terminal raw. Now escaped, on one line."""
    worker = Speaker(ctx, node.endpoint)
    assert submit(worker, task(DEAD, queue="qd"))[0][1] == "accepted"
    assert worker.ok(c.RECEIVE, {"queues": ["qd"]})["task"]["id"] == DEAD
    assert worker.ok(c.NACK, {"id": DEAD, "attempt": 1, "retry": False,
                              "error": {"type": "X", "message": MESSAGE}})["ok"]
    code = main(["submit", "echo", "--id", DEAD, "--queue", "qd", "--wait", "--wait-timeout", "10",
                 "--connect", node.endpoint])
    err = capsys.readouterr().err
    # exit status 1: a task that ended without a result (2 before 2026-12-07)
    assert code == 1 and err.count("\n") == 1 and escaped(MESSAGE) in err, err
    assert not CONTROL.search(err), err


def test_the_queue_listing_escapes_what_the_gateway_answers(capsys):
    """Fault: ``miyaq queue list`` printed the gateway's queue names and
    counts raw (a gateway's answer is the other side's text). Escaped now."""
    answer = {"queues": [{"name": f"q{ESC}]0;x\x07", "scheduled": 0, "ready": f"1{ESC}[2J", "running": 0,
                          "retrying": 0, "dead": 0, "workers": 0, "idle": 0, "limits": None}]}
    server = WorkerServer(script={1: (200, {"Content-Type": "application/json"}, 0.0,
                                      json.dumps(answer).encode())})
    try:
        lines = printed(capsys, "queue", "list", "--http", server.url)
    finally:
        server.close()
    # This gateway answers nothing else: the ring's other members are not compared (a line of its own).
    assert len(lines) == 3 and lines[1].startswith(escaped(f"q{ESC}]0;x\x07")) and escaped(f"1{ESC}[2J") in lines[1]
    assert lines[2].startswith("the other ring members: not compared ("), lines[2]


def test_the_ring_table_escapes_what_nodes_registered():
    """Fault: ``miyaq ring`` printed what members registered in ZooKeeper
    (their ids, endpoints) raw. Escaped now, one row per member."""
    member = {"in_ring": True, "registered": True, "joined": True, "share": 1.0, "weight": 1.0, "tasks": 0,
              "service": f"tcp://h:1{ESC}[2J", "peer": None, "pub": None, "http": None}
    text = format_ring({"cluster": "c", "epoch": 1, "leader": f"n1\n{ESC}[H", "members": {f"n1\n{ESC}[H": member}},
                       "zk")
    assert not CONTROL.search(text), text
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2].startswith(escaped(f"n1\n{ESC}[H") + " *"), lines


@pytest.mark.parametrize("op", ["retry", "purge"])
def test_dead_ids_with_a_queue_are_a_usage_error_that_changes_nothing(ctx, node, capsys, op):
    """Fault: ``miyaq dead purge ID --queue qa`` purged ID, a dead letter of
    queue qb, without a word (a DEAD with ids ignores its queue; retry the
    same). Now ids and --queue together are refused (exit 2) before
    anything is sent, and the dead letter stays."""
    admin = Speaker(ctx, node.endpoint)
    assert submit(admin, task(DEAD, queue="qb"))[0][1] == "accepted"
    assert admin.ok(c.RECEIVE, {"queues": ["qb"]})["task"]["id"] == DEAD
    assert admin.ok(c.NACK, {"id": DEAD, "attempt": 1, "retry": False, "error": {"type": "E"}})["ok"]
    assert main(["dead", op, DEAD, "--queue", "qa", "--connect", node.endpoint]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"miyaq: error: dead {op}: give task ids or --queue, not both"), err
    assert [t["id"] for t in admin.ok(c.DEAD, {"op": "list"})["tasks"]] == [DEAD]
    assert main(["dead", "list", DEAD, "--connect", node.endpoint]) == 2
    assert "dead list takes no task ids" in capsys.readouterr().err


def test_escape_controls_is_the_logs_escaping():
    """One implementation: the CLI's escaping is the log formatter's."""
    import logging

    from miyaq.logs import OneLineMessages, escape_controls
    record = logging.LogRecord("miyaq.x", logging.INFO, __file__, 1, "worker %s", (WORKER,), None)
    assert OneLineMessages("%(message)s").format(record) == "worker " + escape_controls(WORKER)
    assert escape_controls("a\tb\u2028" + ESC) == "a\tb\\u2028\\x1b"


@pytest.mark.parametrize("mark", ["\u202e", "\u202d", "\u2066", "\u2069", "\u200f", "\u061c"])
def test_bidirectional_controls_are_escaped_too(mark):
    """Fault: a producer names its task ``"ok\u202egnp.exe"``; a right-to-left
    override shows the rest of the row reversed in the operator's terminal
    (the text reads otherwise than it is: "Trojan source"). The bidi
    marks, embeddings, overrides and isolates are escaped like the C0/C1
    controls, in the CLI's tables and the log."""
    from miyaq.logs import escape_controls

    escaped = escape_controls(f"ok{mark}gnp.exe")
    assert mark not in escaped and escaped == f"ok\\u{ord(mark):04x}gnp.exe"


@pytest.mark.parametrize(("row", "shown"), [
    ({"names": "any"}, "any"),                                       # declared none, or its list not kept
    ({"names": ["a", "b"], "names_more": 0}, "a,b"),
    ({"names": [], "names_more": 0}, "none"),                       # names_only with no names (as the console)
    ({"names": ["a", "b", "c", "d"], "names_more": 16}, "a,b,c and 17 more"),
    ({}, "-"),                                                       # a node from before names were shown
    ({"names": "all of them"}, "?"),                                 # what no node sends
    ({"names": ["a", 7]}, "?"),
    ({"names": ["a"], "names_more": "3"}, "?"),
])
def test_a_workers_row_says_which_task_names_the_node_sends_it(row, shown):
    """``miyaq status`` shows the task names a worker declared as the node's
    row says them (docs/http.md, ``GET /workers``), the first three and a
    count; a value no node sends reads ``?``, never an error."""
    assert _task_names(row) == shown


@pytest.mark.parametrize(("names", "shown"), [
    (["any"], '"any"'), (["none"], '"none"'), (["-"], '"-"'), (["?"], '"?"'),
    (["a,b", "c and 99 more"], '"a,b","c and 99 more"'),
    (["x  STOPPING"], '"x  STOPPING"'),
    (["tasks.add", "jobs:send-mail", "v1.2_x"], "tasks.add,jobs:send-mail,v1.2_x"),
])
def test_a_declared_name_that_reads_like_the_table_s_own_words_is_quoted(names, shown):
    """Fault (audit review27): a worker declared task names ``any``,
    ``none``, ``-``, ``a,b`` with ``c and 99 more``, or ``x  STOPPING``, and
    its row read like a worker that takes any name, one that declared none,
    a node that does not say, more names than it has, or a stopping worker.
    Such a name is quoted; plain names (dotted paths) are shown as they are."""
    assert _task_names({"names": names, "names_more": 0}) == shown


def test_a_stopping_worker_is_marked_in_the_status_table(ctx, make_node, capsys):
    """A worker that said it is stopping (RETURN ``stopping``) is sent nothing
    more: its row in ``miyaq status`` says STOPPING, as the console's does."""
    node = make_node(heartbeat=5.0)
    worker = Speaker(ctx, node.endpoint)
    worker.send(c.READY, {"worker": "w-stop", "queues": ["qs"], "capacity": 2})
    assert worker.recv()[0] == c.WELCOME
    worker.send(c.RETURN, {"ids": [], "stopping": True})
    # Read in order on its connection: the STATUS answered, the RETURN was read.
    [row] = [w for w in worker.ok(c.STATUS, {})["workers"] if w["worker"] == "w-stop"]
    assert row["stopping"] is True and row["names"] == "any"
    lines = printed(capsys, "status", "--connect", node.endpoint)
    rows = [line for line in lines if line.startswith("w-stop")]
    assert len(rows) == 1 and rows[0].endswith("qs  any  STOPPING"), lines
    worker.sock.close(0)
