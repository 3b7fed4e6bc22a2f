"""``miyaq status ID`` as a person reads it: times as dates, the last
error as ``type: message`` and its traceback line by line (the newcomer
audit of 2026-12-06). ``--json`` is the answer as it came."""
from __future__ import annotations

import contextlib
import io
import json
import time

import miyaq
from miyaq.cli.main import main
from miyaq.cli.status_view import print_task as _print_task

ESC = "\x1b"


def failing_app() -> miyaq.App:
    app = miyaq.App("tcp://127.0.0.1:1")

    @app.task(name="boom")
    def boom(why):
        raise ValueError(why)

    return app


def test_a_dead_task_shows_its_error_and_traceback_on_lines_of_their_own(node, client, thread_worker, capsys):
    """Fault: a handler raises; the newcomer asks ``miyaq status ID`` why.
    Before: ``eta: 1796581333.286655`` and ``error: {'type': 'ValueError',
    'message': 'bad', 'traceback': 'Traceback (most recent call last):\\n
    File ...'}`` on one line. Now the time has its date after it, the error
    reads ``ValueError: bad``, and the traceback follows, indented, one line
    each -- its escapes still escaped (a handler's message is anyone's)."""
    thread_worker(failing_app(), node.endpoint)
    handle = client.submit("boom", [f"bad{ESC}[2J"], max_retries=0, wait=True)
    try:
        handle.result(timeout=20)
    except miyaq.TaskFailed:
        pass
    assert main(["status", handle.task_id, "--connect", node.endpoint]) == 0
    lines = capsys.readouterr().out.splitlines()
    created = next(line for line in lines if line.startswith("created: "))
    stamp = float(created.split()[1])
    assert created == f"created: {stamp!r} ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stamp))})", lines
    assert "error: ValueError: bad\\x1b[2J" in lines, lines
    trace = lines[lines.index("traceback:") + 1:]
    assert trace[0] == "  Traceback (most recent call last):" and trace[-1] == "  ValueError: bad\\x1b[2J", trace
    assert all(line.startswith("  ") for line in trace) and any("raise ValueError(why)" in t for t in trace), trace
    assert main(["status", handle.task_id, "--connect", node.endpoint, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["error"]["type"] == "ValueError" and answer["created"] == stamp


def test_a_time_no_clock_can_show_is_a_dash():
    """Not a fault of the user's: a copy moved by a peer's skewed clock can
    carry an eta of 1e17; the line shows the number and ``-``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _print_task({"id": "t1", "eta": 1e17, "state": "scheduled"})
    assert out.getvalue().splitlines() == ["id: t1", "eta: 1e+17 (-)", "state: scheduled"]


def test_dead_retry_lists_what_it_put_back_and_says_which_ids_it_did_not(node, client, thread_worker, capsys):
    """Mistake: ``miyaq dead retry`` with a mistyped id. Before: ``retried:
    ['…']`` (a Python list) and ``retried: []`` for an id that is no dead
    task, nothing saying the id matched nothing."""
    thread_worker(failing_app(), node.endpoint)
    handle = client.submit("boom", ["bad"], max_retries=0, wait=True)
    try:
        handle.result(timeout=20)
    except miyaq.TaskFailed:
        pass
    assert main(["dead", "retry", handle.task_id, "no-such-dead-task", "--connect", node.endpoint]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "retried 1 dead task(s)", f"  {handle.task_id}",
        "1 of the ids given is no dead task here (`miyaq dead list`)"]
    assert main(["dead", "purge", "--queue", "nothing-dead-here", "--connect", node.endpoint]) == 0
    assert capsys.readouterr().out.splitlines() == ["purged 0 dead task(s)"]


def test_a_listing_cut_at_its_limit_says_there_may_be_more(node, client, thread_worker, capsys):
    """Mistake: 105 dead tasks, ``miyaq dead list`` ends "100 dead
    task(s)" -- read as the total, while it is the ``--limit`` (100 by
    default); ``miyaq tasks`` the same. A listing as long as its limit now
    says it may be cut there; a shorter one is the whole count, as before."""
    thread_worker(failing_app(), node.endpoint)
    for why in ("a", "b", "c"):
        try:
            client.submit("boom", [why], max_retries=0, wait=True).result(timeout=20)
        except miyaq.TaskFailed:
            pass
    for i in range(3):
        client.submit("later", [i], countdown=600, wait=True)
    cut = "(the first --limit 2; there may be more: --limit N, up to 10,000)"
    assert main(["dead", "list", "--limit", "2", "--connect", node.endpoint]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"2 dead task(s) {cut}"
    assert main(["dead", "list", "--connect", node.endpoint]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "3 dead task(s)"
    assert main(["tasks", "--state", "scheduled", "--limit", "2", "--connect", node.endpoint]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"2 task(s) {cut}"
    assert main(["tasks", "--state", "scheduled", "--limit", "3", "--connect", node.endpoint]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"3 task(s) {cut.replace('2', '3')}"
    assert main(["tasks", "--state", "scheduled", "--connect", node.endpoint]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "3 task(s)"
