"""docs/protocol.md, to the letter: a client written from the document alone
must work against a node.

The client here *is* the document's: the two Python blocks of section 11
("The same, frame by frame, in Python without miyaq") are read from the page
and executed -- the wire helpers, the minimal producer (``submit``,
``result``) and the minimal worker (``work``), which use nothing but pyzmq
and msgpack -- with the page's node address replaced by a test node's. The
doc runner runs the same blocks as a reader would; here they also meet the
cases a reader of another language trips on: the state a RESULT long-poll
reports when it ends, a duplicate by key, a REQ socket, an ABORTed task and
its credit, the heartbeat rule, and the answers sections 5, 6 and 8 specify
for odd input. If the node and the page drift apart, a test here fails.
"""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from miyaq.testing.harness import wait_for

PAGE = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
SECTION = "### The same, frame by frame, in Python without miyaq"
PAGE_NODE = "tcp://127.0.0.1:7450"


def section_blocks() -> list[str]:
    """The Python blocks of section 11's frame-by-frame example, in order."""
    text = PAGE.read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## 12.", start)]
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 2, "section 11 should hold the helpers and the example"
    return blocks


class Doc:
    """The namespace of the document's helpers, talking to ``endpoint``."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ns: dict[str, Any] = {"__name__": "protocol_doc"}
        helpers, self.example = section_blocks()
        assert PAGE_NODE in helpers
        exec(compile(helpers.replace(PAGE_NODE, endpoint), f"{PAGE}: helpers", "exec"), self.ns)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.ns[name]
        except KeyError:
            raise AttributeError(name) from None

    def run_example(self) -> None:
        exec(compile(self.example.replace(PAGE_NODE, self.endpoint), f"{PAGE}: example", "exec"), self.ns)

    def close(self) -> None:
        if not self.ns["ctx"].closed:
            self.ns["ctx"].destroy(linger=0)


@pytest.fixture
def doc(node):
    d = Doc(node.endpoint)
    yield d
    d.close()


def status(doc: Doc) -> dict[str, Any]:
    sock = doc.dealer()
    try:
        return doc.request(sock, b"STATUS", {})
    finally:
        sock.close()


def body_of(doc: Doc, *args: Any, **kwargs: Any) -> bytes:
    return doc.pack([list(args), kwargs])


def register(doc: Doc, worker_id: str, queues: list[str], capacity: int = 1) -> zmq.Socket:
    """A raw worker connection (section 7.1), WELCOMEd."""
    sock = doc.dealer()
    doc.send(sock, b"READY", {"worker": worker_id, "queues": queues, "capacity": capacity})
    command, _ = doc.receive(sock)
    assert command == b"WELCOME"
    return sock


def next_message(doc: Doc, sock: zmq.Socket, want: bytes) -> dict[str, Any]:
    """The next message but the node's heartbeats; it must be ``want``."""
    while True:
        command, body = doc.receive(sock)
        if command != b"HEARTBEAT":
            assert command == want, (command, body)
            return body


# -- the example, as printed ------------------------------------------------------------


def test_the_page_example_runs_against_a_node(doc, capsys):
    """Fault simulated: none -- a stranger copies section 11 and runs it; every
    line it prints must be what the page's comments say."""
    doc.run_example()
    out = capsys.readouterr().out.splitlines()
    assert out == ["raw-add-1 raw-add-2 raw-add-2", "done 5", "not_found"]


# -- 5.5 RESULT: the state it reports is true --------------------------------------------


def test_result_reports_the_state_the_task_is_in_when_the_wait_ends(doc):
    """Fault simulated: a long-poll ending without an outcome. The reply must
    name the task's real state (scheduled, ready, running, retrying) -- never
    a state it is not in -- both at once (timeout 0) and at the deadline."""
    producer = doc.dealer()
    tasks = {
        "scheduled": {"id": "conf-sched", "queue": "later", "countdown": 3600},
        "ready": {"id": "conf-ready", "queue": "nobody"},
        "running": {"id": "conf-run", "queue": "run"},
        "retrying": {"id": "conf-retry", "queue": "retry"},
    }
    for task in tasks.values():
        assert doc.submit(producer, {"name": "add", "body": body_of(doc, 1, 2), **task}) == task["id"]
    runner = register(doc, "conf-runner", ["run"])
    assert next_message(doc, runner, b"DISPATCH")["tasks"][0][0] == "conf-run"
    failer = register(doc, "conf-failer", ["retry"])
    item = next_message(doc, failer, b"DISPATCH")["tasks"][0]
    doc.send(failer, b"FAILED", {"failed": [[item[0], item[4], {"type": "E", "message": "later",
                                                                "retry": True, "delay": 3600}]]})
    wait_for(lambda: doc.request(producer, b"TASK", {"id": "conf-retry"})["task"]["state"] == "retrying")
    for state, task in tasks.items():
        for wait in (0, 0.2):
            answer = doc.request(producer, b"RESULT", {"id": task["id"], "timeout": wait})
            assert answer == {"req": answer["req"], "state": state, "timeout": True}, (wait, answer)
    for sock in (producer, runner, failer):
        sock.close()


# -- 11: a duplicate by key is followed by its detail id ------------------------------------


def test_a_key_duplicate_holds_nothing_under_its_own_id(doc):
    """Fault simulated: a producer that asks about its own id after a
    ``duplicate`` by key -- the node stored nothing under it, so TASK, CANCEL
    and RESULT answer not_found, and the ``detail`` id is the one to follow."""
    producer = doc.dealer()
    held = doc.submit(producer, {"id": "conf-key-1", "name": "add", "key": "conf-key", "queue": "nobody"})
    assert doc.submit(producer, {"id": "conf-key-2", "name": "add", "key": "conf-key", "queue": "nobody"}) == held
    for command in (b"TASK", b"CANCEL", b"RESULT"):
        with pytest.raises(doc.NodeError) as err:
            doc.request(producer, command, {"id": "conf-key-2"})
        assert err.value.code == "not_found"
    assert doc.request(producer, b"TASK", {"id": held})["task"]["key"] == "conf-key"
    producer.close()


# -- 1: a REQ socket ----------------------------------------------------------------------


def test_a_req_socket_never_gets_an_answer(doc):
    """Fault simulated: a client on a REQ socket. Its empty delimiter frame
    makes the message bad_frame (counted by the node), and the ERROR, which
    carries no delimiter, is dropped by the REQ socket: the client waits."""
    before = status(doc)["errors"].get("bad_frame", 0)
    req = doc.ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(doc.endpoint)
    req.send_multipart([doc.TAG, b"STATUS", doc.pack({"req": 1})])
    wait_for(lambda: status(doc)["errors"].get("bad_frame", 0) == before + 1)
    assert req.poll(500) == 0, "a REQ socket got an answer: section 1 says it cannot"
    req.close()


# -- 7.8 / 11: an ABORTed task still gives its slot back only when reported ----------------


def idle(doc: Doc, queue: str) -> int:
    return status(doc)["queues"][queue]["idle"]


def test_an_aborted_task_gives_its_slot_back_only_when_reported(doc):
    """Fault simulated: a task cancelled while a capacity-1 worker runs it. The
    node sends ABORT and counts the slot as taken until the worker reports the
    task (FAILED Aborted here); then the next task is dispatched."""
    producer = doc.dealer()
    worker = register(doc, "conf-abort", ["abort"], capacity=1)
    doc.submit(producer, {"id": "conf-abort-1", "name": "add", "queue": "abort"})
    item = next_message(doc, worker, b"DISPATCH")["tasks"][0]
    cancel = doc.request(producer, b"CANCEL", {"id": "conf-abort-1"})
    assert (cancel["cancelled"], cancel["state"]) == (True, "running")
    assert next_message(doc, worker, b"ABORT")["ids"] == ["conf-abort-1"]
    doc.submit(producer, {"id": "conf-abort-2", "name": "add", "queue": "abort"})
    # Dispatching follows each burst of messages, so by the next request's answer
    # the task would be running had the worker a slot.
    task = doc.request(producer, b"TASK", {"id": "conf-abort-2"})["task"]
    assert task["state"] == "ready", "an aborted task not yet reported must keep its slot"
    doc.send(worker, b"FAILED", {"failed": [[item[0], item[4], {"type": "Aborted", "message": "cancelled",
                                                               "retry": False}]]})
    assert next_message(doc, worker, b"DISPATCH")["tasks"][0][0] == "conf-abort-2"
    assert doc.request(producer, b"RESULT", {"id": "conf-abort-1"})["state"] == "cancelled"
    producer.close()
    worker.close()


def test_the_page_worker_reports_an_aborted_task_and_keeps_working(doc):
    """Fault simulated: a task cancelled after it was dispatched to the page's
    worker but before it started (the worker was busy). The worker must
    report it, not run it, and go on taking work."""
    release = threading.Event()
    ran: list[int] = []

    def block() -> None:
        release.wait(10)

    def add(a: int, b: int) -> int:
        ran.append(a + b)
        return a + b

    stop = threading.Event()
    thread = threading.Thread(target=doc.work, args=("conf-page-worker", {"block": block, "add": add}),
                              kwargs={"capacity": 2, "until": stop.is_set})
    producer = doc.dealer()
    thread.start()
    try:
        doc.submit(producer, {"id": "conf-block", "name": "block", "body": body_of(doc)})
        wait_for(lambda: doc.request(producer, b"TASK", {"id": "conf-block"})["task"]["state"] == "running")
        doc.submit(producer, {"id": "conf-never", "name": "add", "body": body_of(doc, 1, 1)})
        wait_for(lambda: doc.request(producer, b"TASK", {"id": "conf-never"})["task"]["state"] == "running")
        assert doc.request(producer, b"CANCEL", {"id": "conf-never"})["cancelled"] is True
        release.set()
        doc.submit(producer, {"id": "conf-after", "name": "add", "body": body_of(doc, 2, 3)})
        answer = doc.result(producer, "conf-after", 10)
        assert answer["state"] == "done" and doc.unpack(answer["result"]) == 5
        assert ran == [5], "the cancelled task ran, or the next one did not"
        wait_for(lambda: idle(doc, "default") == 2)
    finally:
        release.set()
        stop.set()
        thread.join(15)
        producer.close()
    assert not thread.is_alive()


# -- 7.2 / 11: the heartbeat rule ------------------------------------------------------------


def test_the_page_worker_is_never_declared_lost(make_node):
    """Fault simulated: a worker that has nothing to do for many heartbeat
    intervals. Sending per the recipe (a HEARTBEAT once `heartbeat` passed
    since its last message), it keeps its registration throughout."""
    node = make_node(heartbeat=0.3, liveness=3)
    doc = Doc(node.endpoint)
    try:
        end = time.monotonic() + 2.5
        done = threading.Event()
        thread = threading.Thread(target=lambda: (doc.work("conf-idle", {}, until=lambda: time.monotonic() > end),
                                                  done.set()))
        thread.start()
        wait_for(lambda: status(doc)["totals"]["workers"] == 1)
        thread.join(15)
        assert done.is_set()
        workers = node.node.core.workers
        assert workers.lost_total == 0, "the node declared the page's worker lost"
    finally:
        doc.close()


# -- what sections 5, 6 and 8 specify for odd input --------------------------------------------


def submit_raw(doc: Doc, sock: zmq.Socket, tasks: list[Any]) -> list[list[Any]]:
    doc.send(sock, b"SUBMIT", {"tasks": tasks})
    return next_message(doc, sock, b"SUBMITTED")["results"]


def test_odd_submits_are_refused_as_section_5_1_says(doc):
    """Fault simulated: tasks a careless client builds -- eta with countdown, an
    entry that is not a map, an id that is not a string. Each is rejected with
    the id and field the page gives; nothing is stored."""
    sock = doc.dealer()
    cases = [
        ({"id": "conf-both", "name": "add", "eta": time.time() + 60, "countdown": 60}, "conf-both", "eta"),
        (["conf-list", "add"], "", "tasks"),
        ({"id": 7, "name": "add"}, "", "id"),
        ({"name": "add"}, "", "id"),
        ({"id": "bad id", "name": "add"}, "bad id", "id"),
    ]
    for task, task_id, field in cases:
        ((got_id, state, detail),) = submit_raw(doc, sock, [task])
        assert (got_id, state, detail["code"], detail["field"]) == (task_id, "rejected", "invalid_field", field)
    assert status(doc)["totals"]["live"] == 0
    sock.close()


def test_unknown_ids_are_answered_as_sections_6_and_8_say(doc):
    """Fault simulated: a consumer acknowledging an id the node never knew.
    ACK and NACK answer REPLY ok:false; TASK, CANCEL and RESULT answer ERROR
    not_found."""
    sock = doc.dealer()
    assert doc.request(sock, b"ACK", {"id": "conf-unknown", "attempt": 1})["ok"] is False
    assert doc.request(sock, b"NACK", {"id": "conf-unknown", "attempt": 1,
                                       "error": {"type": "E", "message": "m"}})["ok"] is False
    for command in (b"TASK", b"CANCEL", b"RESULT"):
        with pytest.raises(doc.NodeError) as err:
            doc.request(sock, command, {"id": "conf-unknown"})
        assert err.value.code == "not_found"
    sock.close()


def documented_status() -> dict[str, Any]:
    """Section 5.2's STATUS reply, read from the page (its JSON-like example)."""
    text = PAGE.read_text()
    start = text.index("### 5.2 STATUS")
    block = re.search(r"```text\n(.*?)```", text[start:], re.DOTALL).group(1)
    reply = block[block.index("← REPLY ") + len("← REPLY "):]
    return json.loads(reply.replace("nil", "null"))


def test_status_carries_the_documented_fields(doc):
    """Fault simulated: a STATUS field added or renamed without the page.
    The top-level fields and those of its fixed sections are the page's."""
    page = documented_status()
    live = status(doc)
    assert set(live) == set(page)
    for section in ("totals", "waiters", "dispatch", "periodic", "ignored"):
        assert set(live[section]) == set(page[section]), section


def test_a_pull_consumers_touch_extends_its_lease_as_section_6_4_says(doc):
    """Fault simulated: a pull consumer (another language's) whose task runs
    longer than its ``timeout`` sends TOUCH, as section 6.4 says. The node
    checked the touch against the connection's registered worker -- none --
    so the lease never moved (``ignored.not_leased`` counted it), and the
    task went back to ready and ran twice. Now a pull consumer touches what
    it received; another connection's TOUCH still extends nothing."""
    consumer, stranger = doc.dealer(), doc.dealer()
    doc.send(consumer, b"SUBMIT", {"req": 1, "tasks": [{"id": "conf-touch", "name": "slow", "queue": "conf-touch",
                                                        "timeout": 60}]})
    doc.receive(consumer)
    task = doc.request(consumer, b"RECEIVE", {"queues": ["conf-touch"]})["task"]
    assert task["id"] == "conf-touch"
    leased_until = task["lease_end"]
    doc.send(stranger, b"TOUCH", {"ids": ["conf-touch"]})
    assert next_message(doc, stranger, b"RECONNECT")
    assert doc.request(consumer, b"TASK", {"id": "conf-touch"})["task"]["lease_end"] == leased_until
    assert status(doc)["ignored"]["not_leased"] == 1      # the stranger's touch: not its lease
    doc.send(consumer, b"TOUCH", {"ids": ["conf-touch"]})
    assert next_message(doc, consumer, b"RECONNECT")      # not a worker: told so, the touch applied all the same
    # The consumer's touch is its lease's: not counted as not_leased (before the
    # fix it was, and nothing moved). The lease is renewed from the node's
    # clock of that moment -- a burst of messages may share one reading, so
    # the new end is no earlier than the old, not necessarily later.
    assert status(doc)["ignored"]["not_leased"] == 1
    assert doc.request(consumer, b"TASK", {"id": "conf-touch"})["task"]["lease_end"] >= leased_until
    consumer.close()
    stranger.close()


@pytest.mark.parametrize("command,body", [
    (b"RETURN", {"ids": [], "credit": 0}),
    (b"DONE", {"done": [], "credit": 0}),
    (b"FAILED", {"failed": [], "credit": "no"}),
    (b"HEARTBEAT", {"worker": "conf-w", "side": "no"}),
], ids=["return-credit-0", "done-credit-0", "failed-credit-text", "heartbeat-side-text"])
def test_boolean_fields_that_are_not_booleans_are_refused_as_section_2_says(doc, command, body):
    """Fault simulated: a client in a language without a boolean type sends
    0/1 or text. ``credit: 0`` was read as true (the slot given back, the
    opposite of ``credit: false``) and ``side: "no"`` as a side heartbeat.
    Section 2: booleans are msgpack true/false -- now anything else is
    ERROR ``invalid_field`` naming the field."""
    sock = register(doc, "conf-w", ["conf-bool"])
    doc.send(sock, command, body)
    answer = next_message(doc, sock, b"ERROR")
    assert answer["code"] == "invalid_field" and answer["field"] in ("credit", "side"), answer
    sock.close()


@pytest.mark.parametrize("command", [b"READY", b"RECEIVE"])
def test_a_bad_name_in_queues_is_refused_naming_the_field_queues(doc, command):
    """Fault simulated: READY or RECEIVE with ``"queues": ["bad q"]``. The
    ERROR named the field ``queue``, which these messages do not have;
    section 4 says ``field`` is the offending field: ``queues``."""
    sock = doc.dealer()
    body = {"req": 5, "queues": ["bad q"]}
    if command == b"READY":
        body["worker"] = "conf-bad-queues"
    doc.send(sock, command, body)
    answer = next_message(doc, sock, b"ERROR")
    assert answer["code"] == "invalid_field" and answer["field"] == "queues", answer
    sock.close()


def test_a_retry_delay_past_30_days_is_30_days_not_the_backoff(doc):
    """Fault simulated: a handler raises ``Retry(delay=40 days)`` (or
    ``inf``). The node ignored a delay past 30 days and retried after the
    task's backoff -- within milliseconds for a short one. Now it is taken
    as 30 days (section 7, FAILED), and a pull consumer's NACK takes the
    same range (it was at most a day)."""
    worker = register(doc, "conf-retry-w", ["conf-delay"])
    producer = doc.dealer()
    doc.send(producer, b"SUBMIT", {"req": 1, "tasks": [{"id": "conf-delay", "name": "later", "queue": "conf-delay",
                                                        "backoff": 0.01}]})
    doc.receive(producer)
    item = next_message(doc, worker, b"DISPATCH")["tasks"][0]
    doc.send(worker, b"FAILED", {"failed": [[item[0], item[4], {"type": "E", "message": "later",
                                                                "retry": True, "delay": float("inf")}]]})
    wait_for(lambda: doc.request(producer, b"TASK", {"id": "conf-delay"})["task"]["state"] == "retrying")
    eta = doc.request(producer, b"TASK", {"id": "conf-delay"})["task"]["eta"]
    assert eta > time.time() + 29 * 86400
    nack = doc.request(producer, b"NACK", {"id": "conf-delay", "attempt": 1, "delay": 20 * 86400,
                                           "error": {"type": "E", "message": "m"}})
    assert nack["ok"] is False          # accepted as a NACK (not leased to this consumer), not refused
    worker.close()
    producer.close()


def test_the_node_stamps_dispatch_and_heartbeat_with_its_monotonic_clock_as_section_7_3_says(doc):
    """Fault simulated: a node that stops stamping ``sent`` (7.2, 7.3). The
    worker then measures no lag and runs a DISPATCH a network cut held past
    the node's patience: the stale-DISPATCH give-back silently gone, and
    every worker test still passing (their played nodes stamp for
    themselves). A real node's DISPATCH and HEARTBEAT each carry a number
    on its monotonic clock (the node runs in this process: the same
    clock), taken when it sent them."""
    from miyaq.runtime import monotonic
    before = monotonic()
    producer = doc.dealer()
    assert doc.submit(producer, {"id": "conf-sent", "name": "add", "body": body_of(doc, 1, 2),
                                 "queue": "sent"}) == "conf-sent"
    sock = register(doc, "conf-stamped", ["sent"])
    seen: dict[bytes, float] = {}
    while len(seen) < 2:
        command, body = doc.receive(sock)
        if command in (b"DISPATCH", b"HEARTBEAT") and command not in seen:
            assert type(body["sent"]) is float, (command, body)
            assert before <= body["sent"] <= monotonic(), (command, body["sent"], before)
            seen[command] = body["sent"]
