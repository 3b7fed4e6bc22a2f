"""Pausing a queue: nothing of it starts (workers, pull consumers, webhooks),
submits are still accepted, and resuming starts what waited, in order. The
dispatcher with an injected clock first, then a real node over HTTP and the
``miyaq queue pause/resume`` command."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest
from gateway_harness import FIXTURES, Http, wait_for
from test_limits import pump, setup, submit

from miyaq.cli import queue_cmd
from miyaq.cli.main import main as cli_main
from miyaq.errors import InvalidField
from miyaq.core import limits as limits_module
from miyaq.core.limits import Limit
from miyaq.testing.harness import refusing_port

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals


def test_paused_queue_starts_nothing_and_resume_starts_in_order():
    engine, dispatcher, consumer = setup("", "q", "other")
    assert dispatcher.limits.pause("q", 0.0)
    assert not dispatcher.limits.pause("q", 0.0)          # idempotent: already paused
    submit(engine, "q", 3, 1.0)
    submit(engine, "other", 2, 1.0)
    pump(dispatcher, 1.0)
    assert [t.queue for t in consumer.got] == ["other", "other"]   # the other queue is not held back
    assert engine.queue_counts()["q"]["ready"] == 3
    assert dispatcher.limits.resume("q") and not dispatcher.limits.resume("q")
    pump(dispatcher, 2.0)
    assert [t.id for t in consumer.got[2:]] == [f"q-False-{i}-1.0" for i in range(3)]


def test_pause_outlives_a_change_of_limits_and_covers_webhook_lanes():
    engine, dispatcher, consumer = setup("q:rate=100", "q", "@http/q")
    limits = dispatcher.limits
    limits.pause("q", 0.0)
    limits.clear("q")                                     # no limits left: the pause still holds
    assert limits.active
    limits.set("q", Limit(max_concurrent=5), 0.0)
    submit(engine, "q", 2, 1.0, url="http://hook.example/x")
    pump(dispatcher, 1.0)
    assert consumer.got == []
    limits.resume("q")
    pump(dispatcher, 1.0)
    assert len(consumer.got) == 2


def test_paused_queues_are_bounded(monkeypatch):
    """Fault: an operator (or a script) pauses more queues than the node may hold."""
    monkeypatch.setattr(limits_module, "MAX_PAUSED", 2)
    _, dispatcher, _ = setup("", "q")
    dispatcher.limits.pause("a", 0.0)
    dispatcher.limits.pause("b", 0.0)
    with pytest.raises(InvalidField, match="paused already"):
        dispatcher.limits.pause("c", 0.0)
    assert set(dispatcher.limits.paused) == {"a", "b"}


def test_limited_queues_are_bounded(monkeypatch):
    """Fault: an admin script puts limits on more queues than the node may
    hold (each keeps a bucket; the count had no bound). The one past the
    bound is refused and changes nothing; changing a limited queue's limit
    or clearing one still works."""
    monkeypatch.setattr(limits_module, "MAX_LIMITED", 2)
    _, dispatcher, _ = setup("", "q")
    limits = dispatcher.limits
    limits.set("a", Limit(rate=1.0), 0.0)
    limits.set("b", Limit(rate=1.0), 0.0)
    with pytest.raises(InvalidField, match="queues have limits already"):
        limits.set("c", Limit(rate=1.0), 0.0)
    assert set(limits.limits) == {"a", "b"} and "c" not in limits._buckets
    limits.set("a", Limit(max_concurrent=3), 0.0)
    assert limits.clear("b") is True
    limits.set("c", Limit(rate=2.0), 0.0)
    assert set(limits.limits) == {"a", "c"}


def test_pause_over_http_keeps_submits_and_holds_receives(api):
    assert api.post("/queues/jobs/pause")[1] == {"queue": "jobs", "paused": True, "changed": True}
    status, sub, _ = api.post("/tasks", {"name": "job", "queue": "jobs"})
    assert status == 202 and sub["status"] == "accepted"
    assert api.post("/receive", {"queues": ["jobs"]})[1] == {"task": None}
    row = api.get("/queues/jobs")[1]
    assert row["paused"] is True and row["ready"] == 1
    assert api.get("/status")[1]["queues"]["jobs"]["paused"] is True
    assert api.post("/queues/jobs/resume")[1] == {"queue": "jobs", "paused": False, "changed": True}
    got = api.post("/receive", {"queues": ["jobs"]})[1]["task"]
    assert got is not None and got["id"] == sub["id"]


def test_a_queue_paused_over_http_shows_paused_to_a_zeromq_client(http_node, api):
    """Fault: an operator pauses a queue over HTTP (or the console) and a
    Python program watching STATUS over ZeroMQ cannot tell: its queue rows
    had no ``paused`` and no ``limits`` (only ``GET /status`` added them).
    Both doors now show the same rows."""
    import miyaq

    api.post("/queues/jobs/pause")
    api.request("PUT", "/queues/jobs/limits", {"max_concurrent": 3})
    api.post("/tasks", {"name": "job", "queue": "jobs"})
    with miyaq.Client(f"tcp://127.0.0.1:{http_node.config.port}") as client:
        row = client.status()["queues"]["jobs"]
        assert row["paused"] is True and row["limits"]["max_concurrent"] == 3
        assert row == api.get("/status")[1]["queues"]["jobs"]
        api.post("/queues/jobs/resume")
        assert client.status()["queues"]["jobs"]["paused"] is False


def test_miyaq_status_marks_a_paused_queues_row(http_node, api, capsys):
    """An operator who paused a queue and forgot reads ``miyaq status``: its
    table had no sign of the pause (only ``miyaq queue list`` showed it), so a
    queue with ready tasks, idle workers and nothing starting looked stuck.
    The paused queue's row ends in PAUSED; the others do not."""
    api.post("/tasks", {"name": "job", "queue": "jobs"})
    api.post("/tasks", {"name": "job", "queue": "other"})
    api.post("/queues/jobs/pause")
    assert cli_main(["status", "--connect", f"tcp://127.0.0.1:{http_node.config.port}"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["jobs"].endswith("  PAUSED") and "PAUSED" not in rows["other"]


def test_pause_of_a_bad_queue_name_changes_nothing(api):
    status, answer, _ = api.post("/queues/bad@name/pause")
    assert status == 400 and answer["error"]["code"] == "invalid_field"
    assert all(not row["paused"] for row in api.get("/queues")[1]["queues"])


def test_long_poll_receive_starts_when_its_queue_resumes(http_node, api):
    """A pull consumer waiting on a paused queue gets the task once it resumes."""
    api.post("/queues/slow/pause")
    api.post("/tasks", {"name": "job", "queue": "slow"})
    waiter = Http(http_node.url)
    try:
        answers: list = []
        t = threading.Thread(target=lambda: answers.append(waiter.post("/receive",
                                                                       {"queues": ["slow"], "timeout": 10})))
        t.start()
        wait_for(lambda: http_node.call(lambda: any(c.kind == "pull" for c in http_node.node.core.dispatcher.hungry)),
                 "the receive to wait")
        api.post("/queues/slow/resume")
        t.join(15)
        assert answers and answers[0][1]["task"] is not None
    finally:
        waiter.close()


def test_queue_command_pauses_and_resumes(http_node, api, capsys):
    assert cli_main(["queue", "--http", http_node.url, "pause", "mail"]) == 0
    assert "t1: mail: paused" in capsys.readouterr().out
    assert api.get("/queues/mail")[1]["paused"] is True
    assert cli_main(["queue", "--http", http_node.url, "pause", "mail"]) == 0
    assert "(already)" in capsys.readouterr().out
    assert cli_main(["queue", "--http", http_node.url, "list"]) == 0
    assert "(paused)" in capsys.readouterr().out
    assert cli_main(["queue", "--http", http_node.url, "resume", "mail"]) == 0
    assert "t1: mail: running" in capsys.readouterr().out
    assert api.get("/queues/mail")[1]["paused"] is False


def _answer_once(answer: bytes) -> tuple[str, Callable[[], None]]:
    """A loopback server that reads one request head and answers ``answer``,
    then closes; its URL and a function that stops it."""
    return _answering(lambda head: answer)


def _answering(answer_to: Callable[[bytes], bytes]) -> tuple[str, Callable[[], None]]:
    """A loopback server that reads one request head per connection and
    answers ``answer_to(head)``, then closes it; its URL and a function
    that stops it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.sendall(answer_to(conn.recv(65536)))
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}", server.close


@pytest.mark.parametrize("answer", [
    pytest.param(b"HTTP/1.1 2OO OK\r\n\r\n", id="broken-status-line"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"qu", id="body-cut-short"),
    pytest.param(b"HTTP/1.1 500 Oops\r\nContent-Length: 17\r\n\r\n{\"error\": \"boom\"}", id="error-not-a-map"),
    pytest.param(b"HTTP/1.1 500 Oops\r\nContent-Length: 9\r\n\r\n{\"error\":", id="error-body-cut-short"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 4002\r\n\r\n" + b" " * 4000 + b"{}", id="answer-over-the-limit"),
])
def test_queue_command_against_a_gateway_answering_garbage_is_a_clear_error(answer, capsys, monkeypatch):
    """Fault: what answers at the gateway's address is not a miyaq gateway,
    or a broken one: a status line that is not HTTP, a body cut short, an
    error that is not a map, an answer past the most the command reads
    (lowered here to 1,000 bytes). The command says so in one line and exits
    with 2; no traceback."""
    monkeypatch.setattr(queue_cmd, "MAX_ANSWER", 1000)
    url, stop = _answer_once(answer)
    try:
        assert cli_main(["queue", "--http", url, "list"]) == 2
    finally:
        stop()
    err = capsys.readouterr().err
    assert err.startswith("miyaq: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def test_queue_list_names_ring_members_whose_pause_differs(make_http_node, capsys, monkeypatch):
    """Fault: a pause is each node's own and lasts until the node restarts.
    After a rolling upgrade the restarted nodes ran the paused queue's
    tasks, while ``miyaq queue list`` -- one node's table -- still said
    ``(paused)``, and nothing said the others differed (the sre audit, three
    nodes: queue-5 restarted, ``paused: false`` on its gateway). Now the
    list asks every ring member and names each whose pause or limits differ
    from the node asked, and one that cannot be asked; the exit status
    stays 0. The ring's gateways are two standalone nodes here (what
    ``GET /status`` of a clustered node lists under ``ring.http``)."""
    a, b = make_http_node(node_id="a"), make_http_node(node_id="b")
    api_a, api_b = Http(a.url), Http(b.url)
    members = [("a", a.url), ("b", b.url)]
    monkeypatch.setattr(queue_cmd, "_gateways", lambda args: members)
    try:
        for api in (api_a, api_b):
            assert api.post("/queues/mail/pause")[0] == 200
        assert cli_main(["queue", "--http", a.url, "list"]) == 0
        out = capsys.readouterr().out
        assert "(paused)" in out and "differs" not in out, out                 # the same everywhere: no line
        assert api_b.post("/queues/mail/resume")[0] == 200                    # b restarted: its pause gone
        assert cli_main(["queue", "--http", a.url, "list"]) == 0
        out = capsys.readouterr().out
        assert "b differs: mail (paused on a, running there)" in out, out
        assert "lasts until a node restarts" in out and "miyaq queue pause Q" in out, out
        with refusing_port() as port:                                         # a member whose gateway is down
            members.append(("c", f"http://127.0.0.1:{port}"))
            assert cli_main(["queue", "--http", a.url, "list"]) == 0
        assert "c: not compared (cannot reach the node at" in capsys.readouterr().out
    finally:
        api_a.close()
        api_b.close()


def test_queue_list_prints_its_table_and_exits_0_when_the_ring_cannot_be_read(capsys):
    """Fault: the node asked answers ``GET /queues`` but not ``GET /status``
    (here a 500; on a loaded node its larger view timing out). The list of
    2026-12-07 asks ``/status`` for the ring's gateways after printing the
    table, outside the guard of the members it compares: the table came,
    then ``miyaq: error: GET /status: HTTP 500`` and exit status 2, from a
    command that said nothing here fails it (and before that date only
    read ``/queues``). Now one line says the members were not compared, and
    the exit status is 0."""
    rows = b'{"queues": [{"name": "mail", "scheduled": 0, "ready": 1, "running": 0, "retrying": 0, "dead": 0, ' \
           b'"workers": 0, "idle": 0, "limits": null, "paused": true}]}'
    answers = {b"/queues": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(rows), rows),
               b"/status": b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nboom"}
    def answer_to(head: bytes) -> bytes:
        path = head.split(b" ")[1] if head.count(b" ") else b""
        return answers.get(path, b"HTTP/1.1 404 No\r\nContent-Length: 0\r\n\r\n")

    url, stop = _answering(answer_to)
    try:
        assert cli_main(["queue", "--http", url, "list"]) == 0
    finally:
        stop()
    out = capsys.readouterr().out
    assert "mail" in out and "(paused)" in out, out
    assert "the other ring members: not compared (GET /status: HTTP 500)" in out, out
