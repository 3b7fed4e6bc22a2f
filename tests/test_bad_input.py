"""Bad input never crashes a node (DESIGN.md, guarantee 5).

Each test plays a broken or hostile peer with a raw ``zmq.DEALER`` (plain
pyzmq, linger 0) against a real node in a thread: malformed frames, bad
msgpack, wrong field types, unknown commands, foreign protocol versions,
oversized messages, and worker-protocol garbage. Each must get an ERROR with
the right code and a message (or, for a bad task inside SUBMIT, a
``rejected`` result), be counted in the node's status ``errors``, store
nothing, and leave the node serving everyone else.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any, Callable

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

TAG = c.TAG
REPLY_WAIT = 10.0   # seconds; a guard against a hang, not a timing assertion


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.fixture
def dealer() -> Callable[[str], zmq.Socket]:
    """Factory of raw DEALER sockets connected to an endpoint (None: not yet);
    all closed at the end."""
    ctx = zmq.Context()
    socks: list[zmq.Socket] = []

    def make(endpoint: str | None) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if endpoint is not None:
            sock.connect(endpoint)
        socks.append(sock)
        return sock

    yield make
    for sock in socks:
        sock.close(linger=0)
    ctx.term()


def recv(sock: zmq.Socket, skip: tuple[bytes, ...] = (c.HEARTBEAT,)) -> tuple[bytes, dict[str, Any]]:
    """The next message from the node (heartbeats skipped) as (command, body)."""
    deadline = time.monotonic() + REPLY_WAIT
    while True:
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        assert sock.poll(left_ms), "the node sent no answer"
        frames = sock.recv_multipart()
        assert len(frames) == 3 and frames[0] == TAG, frames
        if frames[1] in skip:
            continue
        body = msgpack.unpackb(frames[2], raw=False)
        assert isinstance(body, dict)
        return frames[1], body


def expect_error(sock: zmq.Socket, code: str) -> dict[str, Any]:
    command, body = recv(sock)
    assert command == c.ERROR, (command, body)
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    return body


def snapshot(client) -> tuple[dict[str, int], dict[str, int]]:
    status = client.status()
    return dict(status["errors"]), dict(status["totals"])


def assert_counted_and_nothing_stored(client, before, code: str, n: int = 1) -> None:
    errors_before, totals_before = before
    errors, totals = snapshot(client)
    assert errors.get(code, 0) == errors_before.get(code, 0) + n, (errors_before, errors)
    for k in ("live", "dead", "tombstones"):
        assert totals[k] == totals_before[k], (k, totals_before, totals)


def assert_still_serving(client) -> None:
    handle = client.submit("echo", [1], countdown=60, wait=True)
    assert client.status(handle.id)["state"] == "scheduled"
    assert client.cancel(handle.id)


# -- frames, encoding, commands, versions --------------------------------------------


FRAME_FAULTS = [
    pytest.param([TAG], "bad_frame", id="one-frame"),
    pytest.param([TAG, c.STATUS], "bad_frame", id="two-frames"),
    pytest.param([TAG, c.STATUS, pack({}), b"extra"], "bad_frame", id="four-frames"),
    pytest.param([TAG, c.SUBMIT] + [b"x" * 1000] * 60, "bad_frame", id="sixty-frames"),
    pytest.param([TAG, c.STATUS, b"\xc1"], "bad_encoding", id="invalid-msgpack-byte"),
    pytest.param([TAG, c.SUBMIT, b"\x81\xa5tasks"], "bad_encoding", id="truncated-msgpack"),
    pytest.param([TAG, c.STATUS, pack({"a": 1}) + b"\x00"], "bad_encoding", id="trailing-bytes"),
    pytest.param([TAG, c.STATUS, b""], "bad_encoding", id="empty-body"),
    pytest.param([TAG, c.STATUS, pack([1, 2])], "bad_encoding", id="body-is-a-list"),
    pytest.param([TAG, c.SUBMIT, pack(5)], "bad_encoding", id="body-is-an-int"),
    pytest.param([TAG, c.SUBMIT, pack(b"tasks")], "bad_encoding", id="body-is-bytes"),
    pytest.param([TAG, b"EXPLODE", pack({})], "unknown_command", id="unknown-command"),
    pytest.param([TAG, b"", pack({})], "unknown_command", id="empty-command"),
    pytest.param([TAG, c.DISPATCH, pack({"tasks": []})], "unknown_command", id="node-to-worker-command"),
    pytest.param([b"MQ2", c.STATUS, pack({})], "bad_version", id="version-2"),
    pytest.param([b"XXX", c.STATUS, pack({})], "bad_version", id="foreign-tag"),
    pytest.param([b"", c.STATUS, pack({})], "bad_version", id="empty-tag"),
    pytest.param([TAG, c.SUBMIT, pack({"tasks": {"id": "x", "name": "echo"}})], "invalid_field",
                 id="submit-tasks-not-a-list"),
    pytest.param([TAG, c.SUBMIT, pack({})], "invalid_field", id="submit-without-tasks"),
    pytest.param([TAG, c.SUBMIT, pack({"tasks": "echo"})], "invalid_field", id="submit-tasks-a-string"),
]


@pytest.mark.parametrize("frames,code", FRAME_FAULTS)
def test_malformed_message_gets_an_error_and_changes_nothing(node, client, dealer, frames, code):
    """Fault: a peer sends a message that breaks the framing, the encoding, the
    command set or the protocol version. It gets ERROR with the matching code,
    the node counts it, stores nothing, and keeps serving."""
    before = snapshot(client)
    sock = dealer(node.endpoint)
    sock.send_multipart(frames)
    expect_error(sock, code)
    assert_counted_and_nothing_stored(client, before, code)
    assert_still_serving(client)


def test_submit_with_more_tasks_than_max_batch_is_refused_whole(make_node, client_for, dealer):
    """Fault: a SUBMIT carrying more tasks than max_batch. It is refused whole
    (invalid_field), none of its tasks is stored."""
    n = make_node(max_batch=4)
    client = client_for(n.endpoint)
    before = snapshot(client)
    sock = dealer(n.endpoint)
    tasks = [{"id": f"t{i}", "name": "echo"} for i in range(5)]
    sock.send_multipart([TAG, c.SUBMIT, pack({"tasks": tasks})])
    expect_error(sock, "invalid_field")
    assert_counted_and_nothing_stored(client, before, "invalid_field")


# -- wrong fields in requests ----------------------------------------------------------


REQUEST_FAULTS = [
    pytest.param(c.TASK, {"id": 5}, id="task-id-int"),
    pytest.param(c.TASK, {"id": "has space"}, id="task-id-space"),
    pytest.param(c.TASK, {}, id="task-id-missing"),
    pytest.param(c.CANCEL, {"id": ["x"]}, id="cancel-id-list"),
    pytest.param(c.TASKS, {"state": "bogus"}, id="tasks-state-unknown"),
    pytest.param(c.TASKS, {"limit": True}, id="tasks-limit-bool"),
    pytest.param(c.TASKS, {"limit": 0}, id="tasks-limit-zero"),
    pytest.param(c.TASKS, {"queue": "bad queue"}, id="tasks-queue-space"),
    pytest.param(c.RESULT, {"id": "x", "timeout": "soon"}, id="result-timeout-string"),
    pytest.param(c.RESULT, {"id": "x", "timeout": float("nan")}, id="result-timeout-nan"),
    pytest.param(c.RESULT, {"id": "x", "timeout": 1e300}, id="result-timeout-huge"),
    pytest.param(c.DEAD, {"op": "explode"}, id="dead-op-unknown"),
    pytest.param(c.DEAD, {}, id="dead-op-missing"),
    pytest.param(c.DEAD, {"op": "retry", "ids": "x"}, id="dead-ids-string"),
    pytest.param(c.RECEIVE, {"queues": "default"}, id="receive-queues-string"),
    pytest.param(c.RECEIVE, {"queues": [1]}, id="receive-queues-ints"),
    pytest.param(c.ACK, {"id": "x", "attempt": "1"}, id="ack-attempt-string"),
    pytest.param(c.ACK, {"id": "x", "attempt": 1, "result": "text"}, id="ack-result-text"),
    pytest.param(c.NACK, {"id": "x", "attempt": 1, "error": "oops"}, id="nack-error-string"),
    pytest.param(c.NACK, {"id": "x", "attempt": 1, "error": {}, "retry": "yes"}, id="nack-retry-string"),
]


@pytest.mark.parametrize("command,body", REQUEST_FAULTS)
def test_request_with_a_wrong_field_gets_invalid_field(node, client, dealer, command, body):
    """Fault: a request whose field has the wrong type or range. ERROR
    invalid_field, carrying the request's ``req`` back; counted; nothing stored."""
    before = snapshot(client)
    sock = dealer(node.endpoint)
    sock.send_multipart([TAG, command, pack({"req": 41, **body})])
    err = expect_error(sock, "invalid_field")
    assert err["req"] == 41
    assert "field" in err
    assert_counted_and_nothing_stored(client, before, "invalid_field")
    assert_still_serving(client)


# -- bad tasks inside SUBMIT -----------------------------------------------------------


BIG = 1024 * 1024 + 1     # one byte over the default max_payload

TASK_FAULTS = [
    pytest.param({"id": "t1", "name": "echo", "priority": "high"}, "t1", "priority", id="priority-string"),
    pytest.param({"id": "t1", "name": "echo", "priority": 1.5}, "t1", "priority", id="priority-float"),
    pytest.param({"id": "has space", "name": "echo"}, "has space", "id", id="id-with-space"),
    pytest.param({"id": "x" * 65, "name": "echo"}, "x" * 65, "id", id="id-too-long"),
    pytest.param({"id": 7, "name": "echo"}, "", "id", id="id-int"),
    pytest.param({"name": "echo"}, "", "id", id="id-missing"),
    pytest.param({"id": "t1", "name": "echo", "countdown": -1}, "t1", "countdown", id="countdown-negative"),
    pytest.param({"id": "t1", "name": "echo", "countdown": float("inf")}, "t1", "countdown",
                 id="countdown-infinite"),
    pytest.param({"id": "t1", "name": "echo", "eta": 1.0, "countdown": 1.0}, "t1", "eta",
                 id="eta-and-countdown"),
    pytest.param({"id": "t1"}, "t1", "name", id="neither-name-nor-url"),
    pytest.param({"id": "t1", "name": "echo", "url": "http://x/"}, "t1", "name", id="both-name-and-url"),
    pytest.param({"id": "t1", "url": "ftp://x/"}, "t1", "url", id="url-not-http"),
    pytest.param({"id": "t1", "name": "echo", "body": b"x" * BIG}, "t1", "body", id="payload-too-big"),
    pytest.param({"id": "t1", "name": "echo", "body": "text"}, "t1", "body", id="payload-text"),
    pytest.param({"id": "t1", "name": "echo", "queue": "bad queue"}, "t1", "queue", id="queue-space"),
    pytest.param({"id": "t1", "name": "echo", "ttl": 0}, "t1", "ttl", id="ttl-zero"),
    pytest.param({"id": "t1", "name": "echo", "max_retries": -1}, "t1", "max_retries", id="retries-negative"),
    pytest.param({"id": "t1", "name": "echo", "at_most_once": "yes"}, "t1", "at_most_once", id="amo-string"),
    pytest.param({"id": "t1", "name": "echo", "key": 5}, "t1", "key", id="key-int"),
    pytest.param({"id": "t1", "name": "echo", "headers": ["a"]}, "t1", "headers", id="headers-list"),
    pytest.param({"id": "t1", "name": "echo", "replicas": 0}, "t1", "replicas", id="replicas-zero"),
    pytest.param(5, "", "tasks", id="task-not-a-map"),
]


@pytest.mark.parametrize("wire,reported_id,field", TASK_FAULTS)
def test_bad_task_in_submit_is_rejected_with_the_field(node, client, dealer, wire, reported_id, field):
    """Fault: a SUBMIT whose task has a bad field. The SUBMITTED result says
    "rejected" with code invalid_field naming the field; counted; not stored."""
    before = snapshot(client)
    sock = dealer(node.endpoint)
    sock.send_multipart([TAG, c.SUBMIT, pack({"tasks": [wire]})])
    command, body = recv(sock)
    assert command == c.SUBMITTED, (command, body)
    [[task_id, status, detail]] = body["results"]
    assert (task_id, status) == (reported_id, c.REJECTED)
    assert detail["code"] == "invalid_field" and detail["field"] == field, detail
    assert isinstance(detail["message"], str) and detail["message"]
    assert_counted_and_nothing_stored(client, before, "invalid_field")
    assert_still_serving(client)


def test_one_bad_task_does_not_reject_its_neighbours(node, client, dealer):
    """A SUBMIT of [good, bad, good]: the good ones are accepted and stored,
    the bad one alone is rejected."""
    sock = dealer(node.endpoint)
    tasks = [{"id": "good-1", "name": "echo", "countdown": 60},
             {"id": "bad-1", "name": "echo", "priority": "high"},
             {"id": "good-2", "name": "echo", "countdown": 60}]
    sock.send_multipart([TAG, c.SUBMIT, pack({"tasks": tasks})])
    command, body = recv(sock)
    assert command == c.SUBMITTED
    assert [(r[0], r[1]) for r in body["results"]] == [
        ("good-1", c.ACCEPTED), ("bad-1", c.REJECTED), ("good-2", c.ACCEPTED)]
    assert sorted(t["id"] for t in client.tasks()) == ["good-1", "good-2"]


# -- oversized messages ----------------------------------------------------------------


def test_message_over_max_message_is_too_large(make_node, client_for, dealer):
    """Fault: a message body above max_message (4 KiB here), both a padded
    STATUS and a SUBMIT of many tasks. ERROR too_large; nothing stored."""
    n = make_node(max_message=4096)
    client = client_for(n.endpoint)
    before = snapshot(client)
    sock = dealer(n.endpoint)
    sock.send_multipart([TAG, c.STATUS, pack({"req": 1, "pad": b"x" * 5000})])
    expect_error(sock, "too_large")
    # Over max_message, under max_message + 4 KiB (a larger frame is dropped with the connection).
    tasks = [{"id": f"t{i}", "name": "echo", "body": b"y" * 400} for i in range(12)]
    sock.send_multipart([TAG, c.SUBMIT, pack({"tasks": tasks})])
    expect_error(sock, "too_large")
    assert_counted_and_nothing_stored(client, before, "too_large", n=2)
    sock.send_multipart([TAG, c.STATUS, pack({"req": 2})])     # the same peer is still served
    command, body = recv(sock)
    assert command == c.REPLY and body["req"] == 2
    assert_still_serving(client)


def test_message_of_small_frames_over_the_limit_is_too_large(make_node, client_for, dealer):
    """Fault: a message whose frames are each under the per-frame limit but
    together over the message limit (max_message + 4 KiB). It is drained
    without being kept and answered too_large; the same peer is served next."""
    n = make_node(max_message=4096)
    client = client_for(n.endpoint)
    before = snapshot(client)
    sock = dealer(n.endpoint)
    sock.send_multipart([TAG, b"S" * 5000, b"x" * 5000])
    expect_error(sock, "too_large")
    assert_counted_and_nothing_stored(client, before, "too_large")
    sock.send_multipart([TAG, c.STATUS, pack({"req": 2})])
    command, body = recv(sock)
    assert command == c.REPLY and body["req"] == 2


def _next_event(monitor: zmq.Socket) -> int:
    assert monitor.poll(int(REPLY_WAIT * 1000)), "no socket event"
    return recv_monitor_message(monitor)["event"]


def test_message_far_over_the_limit_is_dropped_and_the_node_keeps_serving(make_node, client_for, dealer):
    """Fault: a frame so large (many times max_message) that the socket itself
    refuses it and drops the connection. The node does not crash and serves
    other clients; the offender may reconnect and be served."""
    n = make_node(max_message=4096)
    client = client_for(n.endpoint)
    sock = dealer(None)
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    sock.connect(n.endpoint)        # after the monitor, so it sees the connection
    try:
        assert _next_event(monitor) == zmq.EVENT_CONNECTED
        sock.send_multipart([TAG, c.STATUS, pack({"req": 1, "pad": b"x" * 200_000})])
        assert _next_event(monitor) == zmq.EVENT_DISCONNECTED     # the node hung up on it
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
    assert_still_serving(client)
    polite = dealer(n.endpoint)
    polite.send_multipart([TAG, c.STATUS, pack({"req": 3})])
    command, body = recv(polite)
    assert command == c.REPLY and body["req"] == 3 and body["totals"]["live"] == 0


# -- worker-protocol garbage -----------------------------------------------------------


def _raw_worker(dealer, endpoint: str, wid: str, queue: str) -> zmq.Socket:
    sock = dealer(endpoint)
    sock.send_multipart([TAG, c.READY, pack({"worker": wid, "queues": [queue], "capacity": 1})])
    command, body = recv(sock)
    assert command == c.WELCOME, (command, body)
    return sock


def test_worker_protocol_garbage_is_refused_whole(make_node, client_for, dealer):
    """Fault: a buggy worker holding a leased task sends DONE with malformed
    items (one good item next to a bad one), FAILED with a non-map error,
    TOUCH/CREDIT with bad fields, and another sends READY with capacity 0.
    Each is refused whole with invalid_field: the task stays running under
    the same attempt, no worker is registered; a correct DONE then finishes it."""
    n = make_node(heartbeat=5.0)          # long liveness: the raw worker need not heartbeat
    client = client_for(n.endpoint)
    worker = _raw_worker(dealer, n.endpoint, "raw-1", "rawq")
    handle = client.submit("echo", [1], queue="rawq", wait=True)
    command, body = recv(worker)
    assert command == c.DISPATCH
    [[task_id, queue, name, _, attempt, _]] = body["tasks"]
    assert (task_id, queue, name, attempt) == (handle.id, "rawq", "echo", 1)
    before = snapshot(client)
    assert before[1]["workers"] == 1

    garbage = [
        (c.DONE, {"done": [[task_id, 1, None], ["other", "one", None]]}),   # good item + bad item
        (c.DONE, {"done": [[task_id, 1, "text-not-bytes"]]}),
        (c.DONE, {"done": [[task_id, 1]]}),
        (c.DONE, {"done": [task_id, 1, None]}),
        (c.DONE, {"done": "all of them"}),
        (c.DONE, {}),
        (c.FAILED, {"failed": [[task_id, 1, "oops"]]}),
        (c.FAILED, {"failed": [[task_id, 1, {"type": "E", "message": "m"}], [task_id, "1", {}]]}),
        (c.FAILED, {"failed": [[task_id, 1, {"type": 5, "message": "m"}]]}),
        (c.FAILED, {"failed": {"id": task_id}}),
        (c.TOUCH, {"ids": task_id}),
        (c.CREDIT, {"n": 0}),
        (c.CREDIT, {"n": "lots"}),
    ]
    for command, body in garbage:
        worker.send_multipart([TAG, command, pack(body)])
        expect_error(worker, "invalid_field")
    other = dealer(n.endpoint)
    for body in ({"worker": "raw-2", "queues": ["rawq"], "capacity": 0},
                 {"worker": "raw-2", "queues": "rawq", "capacity": 1},
                 {"queues": ["rawq"], "capacity": 1}):
        other.send_multipart([TAG, c.READY, pack(body)])
        expect_error(other, "invalid_field")

    assert_counted_and_nothing_stored(client, before, "invalid_field", n=len(garbage) + 3)
    info = client.status(task_id)
    assert (info["state"], info["attempt"]) == ("running", 1)
    assert client.status()["totals"]["workers"] == 1
    assert client.status()["outcomes"].get("failed", 0) == 0

    worker.send_multipart([TAG, c.DONE, pack({"done": [[task_id, 1, pack({"ok": True})]]})])
    assert handle.result(10) == {"ok": True}
    assert_still_serving(client)


@pytest.mark.parametrize("claims", [
    pytest.param({"host": b"\xff\xfe"}, id="host-bytes"),
    pytest.param({"host": {"name": ["box"]}}, id="host-a-map"),
    pytest.param({"host": "h" * 256}, id="host-too-long"),
    pytest.param({"pid": float("nan")}, id="pid-nan"),
    pytest.param({"pid": -1}, id="pid-negative"),
    pytest.param({"pid": True}, id="pid-boolean"),
    pytest.param({"concurrency": "x" * 1000}, id="concurrency-text"),
    pytest.param({"concurrency": 0}, id="concurrency-zero"),
    pytest.param({"pool": [1, 2]}, id="pool-a-list"),
])
def test_ready_whose_claims_about_the_worker_are_malformed_is_refused(make_node, client_for, dealer, claims):
    """Fault: a buggy or hostile worker says READY with what it claims about
    itself (host, pid, concurrency, pool: shown by ``GET /workers`` and the
    console) in a shape JSON cannot show or out of range. Kept, host bytes
    made every later ``GET /workers`` a 500; it is refused with
    invalid_field, no worker is registered and nothing is declared."""
    n = make_node()
    client = client_for(n.endpoint)
    before = snapshot(client)
    sock = dealer(n.endpoint)
    sock.send_multipart([TAG, c.READY, pack({"worker": "claims", "queues": ["q"], "capacity": 1, **claims})])
    expect_error(sock, "invalid_field")
    assert_counted_and_nothing_stored(client, before, "invalid_field")
    assert client.status()["totals"]["workers"] == 0
    honest = dealer(n.endpoint)
    honest.send_multipart([TAG, c.READY, pack({"worker": "claims", "queues": ["q"], "capacity": 1, "pid": 7,
                                               "host": "box", "concurrency": 1, "pool": "gevent"})])
    assert recv(honest)[0] == c.WELCOME


def test_readys_from_more_workers_than_max_workers_are_refused_busy(make_node, client_for, dealer):
    """Fault: READYs from ever more connections (a buggy fleet, or anyone who
    reaches a node without keys), each a worker the node would keep. Past
    ``max_workers`` a READY from a new worker is refused busy, naming the
    limit, and nothing is registered or declared; a registered worker that
    says READY again is still welcome, and once one goes (BYE) another
    worker may take its place."""
    n = make_node(max_workers=3, heartbeat=5.0)      # long liveness: raw workers need not heartbeat
    client = client_for(n.endpoint)
    socks = [_raw_worker(dealer, n.endpoint, f"w{i}", "q") for i in range(3)]
    extra = dealer(n.endpoint)
    schedule = {"name": "tick", "task": "echo", "every": 60}
    extra.send_multipart([TAG, c.READY, pack({"worker": "w3", "queues": ["q"], "capacity": 1, "names": ["echo"],
                                              "periodic": [schedule]})])
    assert "max_workers" in expect_error(extra, "busy")["message"]
    assert client.status()["totals"]["workers"] == 3
    assert client.status()["periodic"]["schedules"] == 0
    socks[0].send_multipart([TAG, c.READY, pack({"worker": "w0", "queues": ["q"], "capacity": 2})])
    assert recv(socks[0])[0] == c.WELCOME
    socks[1].send_multipart([TAG, c.BYE, pack({"worker": "w1"})])
    # Another connection: its READY may overtake the BYE unless the BYE is seen first.
    wait_for(lambda: client.status()["totals"]["workers"] == 2, what="the BYE to be handled")
    extra.send_multipart([TAG, c.READY, pack({"worker": "w3", "queues": ["q"], "capacity": 1})])
    assert recv(extra)[0] == c.WELCOME
    assert client.status()["totals"]["workers"] == 3


def test_a_ready_under_another_workers_id_drops_both_registrations(make_node, client_for, dealer):
    """Fault: a connection registered as one worker says READY under the id
    of a worker registered on another connection (a buggy or hostile
    worker). Both old registrations are dropped: before, the connection's
    own stayed registered by id only, never dropped, and the task leased to
    it stayed running until its lease ran out instead of going back at once."""
    n = make_node(heartbeat=5.0)
    client = client_for(n.endpoint)
    _raw_worker(dealer, n.endpoint, "first", "other")
    second = _raw_worker(dealer, n.endpoint, "second", "rawq")
    handle = client.submit("echo", [1], queue="rawq", timeout=600, wait=True)
    command, body = recv(second)
    assert command == c.DISPATCH and body["tasks"][0][0] == handle.id
    second.send_multipart([TAG, c.READY, pack({"worker": "first", "queues": ["rawq"], "capacity": 1})])
    assert recv(second, skip=(c.HEARTBEAT, c.DISPATCH))[0] == c.WELCOME
    wait_for(lambda: client.status(handle.id)["attempt"] == 2, timeout=REPLY_WAIT,
             what="the task put back at once and leased again")
    assert client.status()["totals"]["workers"] == 1


def test_done_with_a_boolean_attempt_is_refused(make_node, client_for, dealer):
    """Fault: a worker sends DONE with ``true`` as the attempt number. A
    wrong type must be refused (invalid_field) and change nothing."""
    n = make_node(heartbeat=5.0)
    client = client_for(n.endpoint)
    worker = _raw_worker(dealer, n.endpoint, "raw-b", "rawb")
    handle = client.submit("echo", [1], queue="rawb", wait=True)
    command, body = recv(worker)
    assert command == c.DISPATCH
    worker.send_multipart([TAG, c.DONE, pack({"done": [[handle.id, True, None]]})])
    # A request right behind it: its REPLY comes after the DONE was handled
    # (one peer's messages are handled in order), so nothing needs a timeout.
    worker.send_multipart([TAG, c.STATUS, pack({"req": 9})])
    expect_error(worker, "invalid_field")
    assert client.status(handle.id)["state"] == "running"


def test_node_keeps_serving_after_a_storm_of_garbage(node, client, dealer):
    """Fault: many peers send every kind of garbage at once, interleaved with
    a good producer. Every bad message is answered and counted; every good
    submit is accepted and can be queried."""
    socks = [dealer(node.endpoint) for _ in range(5)]
    bad = [p.values[0] for p in FRAME_FAULTS]
    before = snapshot(client)
    handles = []
    for round_ in range(4):
        for sock in socks:
            for frames in bad:
                sock.send_multipart(frames)
        handles.append(client.submit("echo", [round_], countdown=60))
    client.flush()
    for sock in socks:
        for _ in range(4 * len(bad)):
            command, _body = recv(sock)
            assert command == c.ERROR
    errors, totals = snapshot(client)
    assert sum(errors.values()) - sum(before[0].values()) == 4 * len(socks) * len(bad)
    assert totals["live"] == before[1]["live"] + 4
    for h in handles:
        assert client.status(h.id)["state"] == "scheduled"
    wait_for(lambda: client.status()["totals"]["live"] == 4, what="four live tasks")


# -- a seeded fuzz -------------------------------------------------------------------

_VALUES = [None, True, False, 0, -1, 1, 2**40, -2**63, 2**64 - 1, 1.5, float("nan"), float("inf"), "", "x",
           "default", "has space", "a" * 300, b"", b"\x00" * 10, [], [1], ["a"], [[]], [["id", 1, None]],
           [["id", 1, {}]], {}, {"a": 1}, {"type": 5}, {1: 2}, [None]]
_FIELDS = ["id", "tasks", "queue", "queues", "state", "limit", "op", "ids", "timeout", "attempt", "result",
           "error", "retry", "delay", "worker", "names", "capacity", "credit", "n", "done", "failed", "side"]
_TASK_FIELDS = ["id", "queue", "name", "url", "method", "body", "eta", "countdown", "ttl", "headers",
                "priority", "max_retries", "backoff", "backoff_max", "timeout", "key", "replicas", "at_most_once"]


def test_seeded_fuzz_never_gets_an_internal_error(node, client, dealer):
    """Fault: 1,500 messages with random commands and random values of random
    types in every field (a seeded fuzz, no hypothesis). No message makes a
    handler fail with an unexpected exception (code "internal"), every ERROR
    and every rejected task is counted, and the node keeps serving."""
    rng = random.Random(5)
    commands = sorted(c.NODE_COMMANDS)
    socks = [dealer(node.endpoint) for _ in range(3)]
    before = snapshot(client)
    for i in range(1500):
        command = rng.choice(commands)
        body = {f: rng.choice(_VALUES) for f in rng.sample(_FIELDS, rng.randrange(0, 5))}
        body["req"] = rng.choice([i, None, "r", [1]])
        if command == c.SUBMIT and rng.random() < 0.7:
            body["tasks"] = [{**{f: rng.choice(_VALUES) for f in rng.sample(_TASK_FIELDS, rng.randrange(0, 8))},
                              "id": f"fz{i}-{k}", "name": "echo"} if rng.random() < 0.5 else
                             {f: rng.choice(_VALUES) for f in rng.sample(_TASK_FIELDS, rng.randrange(0, 8))}
                             for k in range(rng.randrange(0, 3))]
        rng.choice(socks).send_multipart([TAG, command, pack(body)])
    codes: Counter[str] = Counter()
    rejected = 0
    for k, sock in enumerate(socks):
        # Errors and replies go out as each message is handled, SUBMITTED
        # results at the end of each burst, in order per peer: once the
        # answers to this STATUS and this SUBMIT are in, every answer to the
        # peer's fuzz messages has arrived.
        sock.send_multipart([TAG, c.STATUS, pack({"req": "end-of-fuzz"})])
        sock.send_multipart([TAG, c.SUBMIT, pack({"tasks": [{"id": f"end-{k}", "name": "echo",
                                                             "countdown": 60}]})])
        replied = acked = False
        while not (replied and acked):
            command, body = recv(sock, skip=(c.HEARTBEAT, c.DISPATCH, c.WELCOME, c.RECONNECT))
            if command == c.ERROR:
                codes[body["code"]] += 1
            elif command == c.SUBMITTED:
                rejected += sum(1 for r in body["results"] if r[1] == c.REJECTED)
                acked = any(r[0] == f"end-{k}" for r in body["results"])
            elif command == c.REPLY and body.get("req") == "end-of-fuzz":
                replied = True
    assert codes["internal"] == 0, codes
    assert codes["invalid_field"] > 100
    errors, _ = snapshot(client)
    assert sum(errors.values()) - sum(before[0].values()) == sum(codes.values()) + rejected
    assert node.node.crashed is None
    assert_still_serving(client)


def test_webhook_task_refused_by_a_node_without_gateway(client):
    """The `node` fixture runs with --http-port 0: a webhook task would never
    be delivered, so it is refused with a clear error and nothing is stored."""
    import miyaq
    with pytest.raises(miyaq.ProtocolError) as info:
        client.submit_url("http://127.0.0.1:9/hook", b"x=1", wait=True)
    assert info.value.code == "invalid_field" and "gateway" in str(info.value)
    assert client.status()["totals"]["live"] == 0
