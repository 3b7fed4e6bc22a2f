"""The client's sans-I/O core (miyaq.client.core) driven by hand: a fake
transport records what would be sent, the test plays the nodes and the clock.
Every rule the threaded and the asyncio clients share is checked here once."""
from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest

from miyaq.client import operations as ops
from miyaq.client import submits
from miyaq.client.core import ClientCore
from miyaq.client.handle import MAX_FAILURES_KEPT, Unflushed, flush_error
from miyaq.client.nodes import Nodes
from miyaq.client.pending import Pending
from miyaq.client.submits import FIRST_CONTACT
from miyaq.errors import Busy, InvalidField, MiyaqError, NotFound, Timeout, Unavailable
from miyaq.logs import LogLimiter
from miyaq.protocol import codec
from miyaq.protocol import commands as c


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, dict[str, Any]]] = []
        self.connected: set[int] = {0, 1, 2, 3}
        self.new: list[str] = []

    def send(self, node: int, frames: list[bytes]) -> bool:
        if node not in self.connected:
            return False
        self.sent.append((node, frames[1], msgpack.unpackb(frames[2], raw=False)))
        return True

    def connect(self, endpoint: str) -> bool:
        self.new.append(endpoint)
        return True

    def take(self) -> list[tuple[int, bytes, dict[str, Any]]]:
        sent, self.sent = self.sent, []
        return sent


class Waiter:
    def __init__(self) -> None:
        self.value: Any = None
        self.error: MiyaqError | None = None
        self.done = False

    def set(self, value: Any) -> None:
        assert not self.done, "resolved twice"
        self.value, self.done = value, True

    def fail(self, error: MiyaqError) -> None:
        assert not self.done, "resolved twice"
        self.error, self.done = error, True


def make(endpoints: int = 2, *, secure: bool = False, ack_timeout: float = 5.0,
         max_batch: int = 512) -> tuple[ClientCore, FakeTransport]:
    transport = FakeTransport()
    nodes = Nodes([f"tcp://127.0.0.1:{7450 + i}" for i in range(endpoints)], secure=secure, discover=False)
    return ClientCore(transport, nodes, max_batch=max_batch, ack_timeout=ack_timeout, max_message=1 << 24), transport


def pending(task_id: str, now: float = 0.0, timeout: float = 30.0) -> tuple[Pending, Waiter]:
    waiter = Waiter()
    return Pending({"id": task_id, "name": "echo", "body": b""}, waiter, now, now + timeout), waiter


def submitted(results: list[list[Any]]) -> list[bytes]:
    return codec.encode(c.SUBMITTED, {"results": results})


def test_a_lone_submit_leaves_at_once_and_a_burst_is_batched() -> None:
    core, transport = make(1)
    p, w = pending("a")
    assert core.submit(p, now=0.0)            # idle: the short path sends it from the caller
    assert [(n, cmd, [t["id"] for t in b["tasks"]]) for n, cmd, b in transport.take()] == [(0, c.SUBMIT, ["a"])]
    for i in range(5):                        # "a" is unacknowledged: no short path, the burst is queued
        assert not core.submit(pending(f"b{i}")[0], now=0.0)
    core.on_timer(0.0)
    batches = transport.take()
    assert len(batches) == 1 and [t["id"] for t in batches[0][2]["tasks"]] == [f"b{i}" for i in range(5)]
    core.on_frames(0, submitted([["a", "accepted", None]]), 0.001)
    assert w.value == ("tcp://127.0.0.1:7450", "accepted", None)


def test_batches_are_bounded_by_max_batch() -> None:
    core, transport = make(1, max_batch=3)
    for i in range(7):
        core.submit(pending(f"t{i}")[0])
    core.on_timer(0.0)
    assert [len(b["tasks"]) for _, _, b in transport.take()] == [3, 3, 1]


def test_a_submit_carries_at_most_a_mebibyte_of_payloads_so_it_crosses_a_slow_link_whole() -> None:
    """Fault: a slow link between client and node. A SUBMIT must arrive
    whole within the node's wait for a ZMTP heartbeat's answer (30 s; libzmq
    hears it only behind the message) and, better, within ack_timeout: 4 MiB
    of payloads in one SUBMIT (before 2026-12-07) take 34 s at 1 Mbit/s, the
    node drops the connection, and the client sends the same 4 MiB again.
    A SUBMIT now carries at most 1 MiB of payloads (one larger task goes
    alone), as a message between nodes does; small tasks still batch."""
    core, transport = make(1)
    body = b"x" * 60_000
    for i in range(40):
        core.submit(Pending({"id": f"t{i}", "name": "echo", "body": body}, Waiter(), 0.0, 30.0))
    core.on_timer(0.0)
    sent = [b["tasks"] for _, _, b in transport.take()]
    assert [t["id"] for tasks in sent for t in tasks] == [f"t{i}" for i in range(40)]   # in order, each once
    assert len(sent) > 1 and all(sum(len(t["body"]) for t in tasks) <= 1 << 20 for tasks in sent)
    for i in range(600):
        core.submit(pending(f"s{i}")[0])
    core.on_timer(0.0)
    assert [len(b["tasks"]) for _, _, b in transport.take()] == [512, 88]


@pytest.mark.parametrize("size, batches", [(1920, [512]), (1921, [511, 1])])
def test_max_batch_small_tasks_go_as_one_submit_up_to_the_byte_limit_exactly(size, batches) -> None:
    """What BATCH_BYTES (1 MiB) leaves to ``max_batch``: each task counts its
    payload and 128 bytes, so 512 tasks of up to 1,920 bytes still go as one
    SUBMIT, and one byte more splits the batch (the docstring said "2 KB
    tasks", which made 481 and 31; review29)."""
    core, transport = make(1)
    for i in range(512):
        core.submit(Pending({"id": f"t{i}", "name": "echo", "body": b"x" * size}, Waiter(), 0.0, 30.0))
    core.on_timer(0.0)
    assert [len(b["tasks"]) for _, _, b in transport.take()] == batches


def test_busy_node_is_retried_with_backoff_on_another_node() -> None:
    """Fault: a BUSY node. The submit goes to the other node after a backoff,
    not marked as a resend (a node refuses BUSY before it stores anything:
    in a cluster a resent task's copies would all ask first, and start an
    offset late); the caller never sees BUSY."""
    core, transport = make(2)
    p, w = pending("t1")
    core.submit(p)
    core.on_timer(0.0)
    (node, _, _), = transport.take()
    busy = {"code": "busy", "message": "full"}
    core.on_frames(node, submitted([["t1", "rejected", busy]]), 0.01)
    assert not w.done and core.submits.busy_replies == 1
    core.on_timer(0.01)
    assert transport.take() == []             # backing off
    due = core.submits.next_due()
    assert due is not None and due > 0.01
    core.on_timer(due)
    (again, _, body), = transport.take()
    assert again != node and "resent" not in body["tasks"][0]
    core.on_frames(again, submitted([["t1", "accepted", None]]), due + 0.01)
    assert w.done and w.error is None


@pytest.mark.parametrize("first,second,resent", [
    ("busy", "busy", False),
    ("unavailable", "busy", False),
    ("not_enough_replicas", "busy", True),     # some holders may have stored the first try
    ("shutting_down", "busy", True),           # refused after copies were made (a stopping coordinator)
    ("timeout", "busy", True),                 # no answer: it may have been stored
])
def test_a_retry_is_marked_resent_once_an_earlier_try_may_have_been_stored(first, second, resent) -> None:
    """Faults, one after the other: the first try is refused with ``first``
    (or never answered), the second with ``second``; the third try says
    ``resent`` exactly when one of the earlier tries may have been stored."""
    core, transport = make(2, ack_timeout=1.0)
    p, w = pending("t1")
    core.submit(p)
    now = 0.0
    for outcome in (first, second):
        core.on_timer(now)
        (node, _, body), = transport.take()
        if outcome == "timeout":
            now += 1.01                        # overdue: retried
        else:
            core.on_frames(node, submitted([["t1", "rejected", {"code": outcome, "message": "no"}]]), now)
        core.on_timer(now)
        due = core.submits.next_due()
        assert due is not None
        now = due
    core.on_timer(now)
    (_, _, body), = transport.take()
    assert body["tasks"][0].get("resent", False) is resent


def test_busy_until_the_deadline_raises_one_busy_error() -> None:
    """Fault: every node stays full past submit_timeout: one Busy naming the
    task, and what the last node said (before 2026-12-06 not: an operator
    could not tell max_tasks from another refusal)."""
    core, transport = make(1)
    p, w = pending("t1", timeout=1.0)
    core.submit(p)
    now = 0.0
    while not w.done and now < 5:
        core.on_timer(now)
        for node, _, body in transport.take():
            core.on_frames(node, submitted([[t["id"], "rejected", {"code": "busy", "message": "node holds 5 "
                                                                    "live tasks, its max_tasks"}]
                                            for t in body["tasks"]]), now)
        now += 0.05
    assert isinstance(w.error, Busy)
    assert ("t1 not accepted before its deadline: every node tried was full (the last: node holds 5 live tasks, "
            "its max_tasks)") in str(w.error)


def test_node_restarting_mid_pipeline_gets_unacknowledged_submits_again_with_the_same_ids() -> None:
    """Fault: the node restarts while three submits are in flight (their acks
    never come). After ack_timeout each is resent with its own id and
    ``resent``; the late ack of a first try resolves nothing twice."""
    core, transport = make(1, ack_timeout=1.0)
    waiters = []
    for i in range(3):
        p, w = pending(f"t{i}")
        core.submit(p)
        waiters.append(w)
    core.on_timer(0.0)
    transport.take()                          # lost with the node
    core.on_timer(0.9)
    assert transport.take() == []
    core.on_timer(1.01)                       # overdue: back to waiting, resent on the next pass
    core.on_timer(2.0)
    resent = [t for _, _, b in transport.take() for t in b["tasks"]]
    assert [t["id"] for t in resent] == ["t0", "t1", "t2"] and all(t["resent"] for t in resent)
    assert core.submits.resends == 3
    core.on_frames(0, submitted([[f"t{i}", "accepted", None] for i in range(3)]), 2.1)
    core.on_frames(0, submitted([["t0", "duplicate", "t0"]]), 2.2)   # the first try's late ack
    assert all(w.done and w.error is None for w in waiters)
    assert core.in_flight == -3               # submitted is the driver's count; three resolved


@pytest.mark.parametrize("status", ["stored", "ACCEPTED", None, 1, ["accepted"], {"accepted": 1}])
def test_an_acknowledgement_with_an_unknown_status_is_not_taken_for_accepted(status, caplog, monkeypatch) -> None:
    """Fault: a buggy or hostile node acknowledges a submit with a status the
    protocol does not name. Nothing says the task was stored, so the submit
    stays unacknowledged: sent again (marked resent) when it is late, and
    accepted by a node that answers properly; one line is logged."""
    monkeypatch.setattr(submits, "_log", LogLimiter(submits.logger))   # its own rate: other tests log too
    core, transport = make(1, ack_timeout=1.0)
    p, w = pending("t1")
    core.submit(p, now=0.0)
    transport.take()
    core.on_frames(0, submitted([["t1", status, None]]), 0.1)
    assert not w.done and "t1" in core.submits.pending
    assert "unknown status" in caplog.text
    core.on_timer(1.2)                        # overdue: back to waiting
    core.on_timer(core.submits.next_due() or 1.2)
    (_, _, body), = transport.take()
    assert body["tasks"][0]["id"] == "t1" and body["tasks"][0]["resent"] is True
    core.on_frames(0, submitted([["t1", "accepted", None]]), 1.5)
    assert w.done and w.error is None and w.value[1] == "accepted"


def test_a_node_that_never_acknowledges_properly_fails_the_submit_at_its_deadline() -> None:
    """Fault: every acknowledgement a node sends names an unknown status: the
    submit fails at its deadline (a Timeout naming the task), never resolved
    as accepted."""
    core, transport = make(1, ack_timeout=0.5)
    p, w = pending("t1", timeout=2.0)
    core.submit(p, now=0.0)
    now = 0.0
    while not w.done and now < 5:
        core.on_timer(now)
        for node, _, body in transport.take():
            core.on_frames(node, submitted([[t["id"], "queued", None] for t in body["tasks"]]), now)
        now += 0.05
    assert isinstance(w.error, Timeout) and "t1 not acknowledged before its deadline" in str(w.error)


def test_a_rejected_task_fails_with_the_nodes_error() -> None:
    core, transport = make(1)
    p, w = pending("bad id")
    core.submit(p, now=0.0)
    core.on_frames(0, submitted([["bad id", "rejected", {"code": "invalid_field", "message": "id", "field": "id"}]]),
                   0.1)
    assert isinstance(w.error, InvalidField) and w.error.details["field"] == "id"


def test_a_submit_waiting_for_a_retry_is_never_overtaken() -> None:
    """Fault: the node is not connected for the first submit; a later one must
    not leave before it (FIFO per producer)."""
    core, transport = make(1)
    transport.connected = set()
    first, _ = pending("first")
    core.submit(first, now=0.0)
    core.submit(pending("second")[0])
    core.on_timer(0.0)
    assert transport.take() == []
    transport.connected = {0}
    core.on_timer(0.02)
    assert [t["id"] for _, _, b in transport.take() for t in b["tasks"]] == ["first", "second"]


@pytest.mark.parametrize("secure", [False, True])
def test_unreachable_node_fails_a_submit_after_first_contact_with_a_clear_message(secure: bool) -> None:
    """Fault: no node ever accepts a connection (nothing listens; or, with
    keys, the CURVE handshake never completes: a wrong server key or a
    revoked key look the same from here). The submit fails after
    FIRST_CONTACT seconds, not at its deadline, naming the likely cause."""
    core, transport = make(1, secure=secure)
    transport.connected = set()
    p, w = pending("t1", timeout=600.0)
    core.submit(p, now=0.0)
    now = 0.0
    while not w.done and now < FIRST_CONTACT + 1:
        now += 0.1
        core.on_timer(now)
    assert isinstance(w.error, Unavailable) and now >= FIRST_CONTACT
    if secure:
        assert ("no answer from tcp://127.0.0.1:7450: is the node's public key right (--server-key), "
                "and is this key authorized?") in str(w.error)
    else:
        assert "nothing is listening on tcp://127.0.0.1:7450" in str(w.error)


def test_requests_are_matched_by_req_in_any_order_and_time_out() -> None:
    core, transport = make(1)
    first, second, late = Waiter(), Waiter(), Waiter()
    for waiter in (first, second, late):
        core.request(0, c.STATUS, {"req": core.next_req()}, waiter, deadline=10.0, now=0.0)
    reqs = [b["req"] for _, _, b in transport.take()]
    core.on_frames(0, codec.encode(c.REPLY, {"req": reqs[1], "n": 2}), 0.1)
    core.on_frames(0, codec.encode(c.ERROR, {"req": reqs[0], "code": "not_found", "message": "no"}), 0.2)
    assert second.value["n"] == 2 and isinstance(first.error, NotFound)
    core.on_timer(10.0)
    assert isinstance(late.error, Timeout)


def test_a_request_to_an_unconnected_node_fails_after_the_connect_wait() -> None:
    """Fault: the node a request is for never connects."""
    core, transport = make(1)
    transport.connected = set()
    w = Waiter()
    core.request(0, c.STATUS, {"req": core.next_req()}, w, deadline=60.0, now=0.0)
    core.on_timer(1.0)
    assert not w.done
    core.on_timer(1.6)
    assert isinstance(w.error, Unavailable) and "cannot reach any node" in str(w.error)


def test_submits_made_before_a_request_leave_before_it() -> None:
    core, transport = make(1)
    core.submit(pending("t1")[0])
    core.request(0, c.TASK, {"req": core.next_req(), "id": "t1"}, Waiter(), deadline=5.0, now=0.0)
    assert [cmd for _, cmd, _ in transport.take()] == [c.SUBMIT, c.TASK]


def test_discovery_connects_the_nodes_the_ring_names() -> None:
    transport = FakeTransport()
    nodes = Nodes(["tcp://127.0.0.1:7450"])
    core = ClientCore(transport, nodes, max_batch=10, ack_timeout=5.0, max_message=1 << 20)
    core.on_timer(0.0)
    (_, command, body), = transport.take()
    assert command == c.RING
    members = {"n0": {"service": "tcp://127.0.0.1:7450"}, "n1": {"service": "tcp://127.0.0.1:7451"}}
    core.on_frames(0, codec.encode(c.REPLY, {"req": body["req"], "members": members}), 0.1)
    assert transport.new == ["tcp://127.0.0.1:7451"] and nodes.endpoints[1] == "tcp://127.0.0.1:7451"
    core.on_timer(0.2)
    assert transport.take() == []             # the next ask waits for the discovery gap


def test_a_ring_naming_an_endpoint_longer_than_any_node_advertises_is_not_dialled() -> None:
    """Fault: a RING reply names a member whose service endpoint is 600
    characters (a host name is at most 253): it is not even handed to the
    transport; the one beside it is dialled."""
    nodes = Nodes(["tcp://127.0.0.1:7450"])
    dialled: list[str] = []
    members = {"n1": {"service": "tcp://" + "h" * 600 + ":1"}, "n2": {"service": "tcp://127.0.0.1:7452"}}
    assert nodes.from_ring({"members": members}, dial=lambda ep: dialled.append(ep) or True) == [
        "tcp://127.0.0.1:7452"]
    assert dialled == ["tcp://127.0.0.1:7452"]


def test_a_malformed_reply_is_ignored() -> None:
    """Fault: a node (or something on its port) answers garbage."""
    core, _ = make(1)
    core.on_frames(0, [b"MQ1", b"SUBMITTED", b"\xc1"], 0.0)
    core.on_frames(0, [b"nope"], 0.0)
    core.on_frames(0, submitted([["unknown", "accepted", None], "not a list", [1, 2, 3]]), 0.0)


def test_operations_ask_the_next_node_when_one_does_not_hold_the_task() -> None:
    """status(id) asks node after node until one answers; the last error if none does."""
    nodes = Nodes(["a", "b", "c"])
    asked: list[int | None] = []

    def ask(step: ops.Ask) -> dict[str, Any]:
        asked.append(step.node)
        if step.node != 2:
            raise NotFound("not here")
        return {"task": {"id": "t", "state": "ready"}}

    assert ops.run(ops.status(nodes, "t", None), ask)["state"] == "ready"
    assert asked == [0, 1, 2]

    def never(step: ops.Ask) -> dict[str, Any]:
        raise NotFound(f"not on {step.node}")

    with pytest.raises(NotFound, match="not on 2"):
        ops.run(ops.cancel(nodes, "t"), never)


def test_resolutions_deferred_by_the_driver_wait_for_run_and_keep_their_order() -> None:
    """The threaded driver defers resolutions while it holds its lock: nothing
    is resolved before run(), then everything, in order."""
    core, _ = make(1)
    core.resolver.deferring = True
    first, w1 = pending("t1")
    second, w2 = pending("t2")
    core.submit(first, now=0.0)
    core.submit(second)
    core.on_timer(0.0)
    core.on_frames(0, submitted([["t1", "accepted", None], ["t2", "accepted", None]]), 0.1)
    assert not w1.done and not w2.done and core.in_flight == -2
    order: list[str] = []
    w1.set = lambda value: order.append("t1")    # type: ignore[method-assign]
    w2.set = lambda value: order.append("t2")    # type: ignore[method-assign]
    core.resolver.deferring = False
    core.resolver.run()
    assert order == ["t1", "t2"]


def test_task_ids_are_unique_across_threads_and_a_forked_child() -> None:
    """Ids come from a per-thread pool of os.urandom bytes: threads never share
    bytes, and a forked child forgets its parent's pool (else both would make
    the same ids)."""
    import os
    import threading

    from miyaq.client.wire import new_id
    new_id()                                   # the parent has a pool now
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.extend(new_id() for _ in range(2000))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                               # the child: its next ids, to the parent
        os.write(write, "".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode()
    os.close(read)
    os.close(write)
    parents = [new_id() for _ in range(10)]
    children = [child[i:i + 32] for i in range(0, 320, 32)]
    everything = ids + parents + children
    assert len(everything) == len(set(everything)) == 8020


def test_a_submit_fails_at_its_deadline_not_at_its_last_tries_ack_timeout() -> None:
    """Fault: the node never acknowledges. The last try is sent less than
    ack_timeout before the submit's deadline: the caller gets the one
    Timeout at the deadline (the core's clock), not ack_timeout after that
    try; an acknowledgement before the deadline still resolves it."""
    core, transport = make(1, ack_timeout=5.0)
    p, w = pending("t1", timeout=7.0)
    core.submit(p, now=0.0)
    transport.take()                           # lost
    core.on_timer(5.0)                         # overdue: back to waiting
    due = core.submits.next_due()
    assert due is not None and due < 7.0
    core.on_timer(due)
    assert [t["id"] for _, _, b in transport.take() for t in b["tasks"]] == ["t1"]
    assert core.submits.next_due() == 7.0      # the deadline, before this try's ack_timeout
    core.on_timer(6.99)
    assert not w.done
    core.on_timer(7.0)
    assert isinstance(w.error, Timeout) and "t1 not acknowledged before its deadline (2 tries)" in str(w.error)
    assert not core.submits.pending and not core.submits.capped

    q, v = pending("t2", now=10.0, timeout=1.0)   # shorter than ack_timeout from its first try
    core.submit(q, now=10.0)
    transport.take()
    core.on_frames(0, submitted([["t2", "accepted", None]]), 10.5)
    core.on_timer(11.0)
    assert v.done and v.error is None and not core.submits.capped


def test_submits_a_node_read_before_its_connection_closed_are_sent_again_at_once() -> None:
    """Fault: a node exits (or restarts) just after reading submits it never
    acknowledged. When its connection closes, those submits go again at
    once, to another node and marked resent -- not ack_timeout later -- and
    those waiting on the other node are left alone."""
    core, transport = make(2, ack_timeout=60.0)
    p0, w0 = pending("on-0")
    core.submit(p0, now=0.0)
    p1, w1 = pending("on-1")
    core.submit(p1)
    core.on_timer(0.0)
    first = {t["id"]: node for node, _, b in transport.take() for t in b["tasks"]}
    assert first == {"on-0": 0, "on-1": 1}

    core.on_disconnected(0, 1.0)
    due = core.submits.next_due()
    assert due is not None and due < 2.0          # a backoff of milliseconds, not the 60 s ack_timeout
    core.on_timer(due)
    again = [(node, t) for node, _, b in transport.take() for t in b["tasks"]]
    assert [(node, t["id"], t.get("resent")) for node, t in again] == [(1, "on-0", True)]
    assert core.submits.resends == 1

    core.on_frames(1, submitted([["on-0", "accepted", None], ["on-1", "accepted", None]]), due)
    assert w0.done and w0.error is None and w0.value[0].endswith(":7451")
    assert w1.done and w1.error is None
    core.on_disconnected(1, due + 1.0)             # nothing unacknowledged there any more
    assert not transport.take() and core.submits.resends == 1


def test_requests_sent_on_a_connection_that_closed_fail_at_once() -> None:
    """Fault: a node reads a request (a result long-poll) and exits. A node
    answers on the connection a request came on, so no answer can come: the
    request fails at once with Unavailable (the operation then asks another
    node), not at its deadline; requests to other nodes, and one still
    waiting for a connection, are left alone."""
    core, transport = make(3)
    lost, other, unsent = Waiter(), Waiter(), Waiter()
    core.request(0, c.RESULT, {"req": core.next_req(), "id": "t", "timeout": 300.0}, lost, 310.0, 0.0)
    core.request(1, c.RESULT, {"req": core.next_req(), "id": "t", "timeout": 300.0}, other, 310.0, 0.0)
    transport.connected.discard(2)
    core.request(2, c.STATUS, {"req": core.next_req()}, unsent, 10.0, 0.0)
    transport.connected.add(2)
    assert [node for node, _, _ in transport.take()] == [0, 1]

    core.on_disconnected(0, 1.0)
    assert isinstance(lost.error, Unavailable) and "closed before it answered" in str(lost.error)
    assert not other.done and not unsent.done
    core.on_disconnected(2, 1.0)                   # not sent yet: it goes once connected
    assert not unsent.done
    core.on_timer(1.0)
    assert [node for node, _, _ in transport.take()] == [2]


def test_nodes_whose_connection_closed_are_asked_last() -> None:
    nodes = Nodes([f"tcp://127.0.0.1:{7450 + i}" for i in range(3)], discover=False)
    assert nodes.order(0) == [0, 1, 2]
    nodes.mark(0, False)
    nodes.mark(2, False)
    assert nodes.order(0) == [1, 0, 2] and nodes.order(2) == [1, 2, 0]
    nodes.mark(0, True)
    assert nodes.order(None) == [0, 1, 2] and nodes.down == {2}


# -- Unflushed: the handles a flush waits for ---------------------------------------------------------
class _Acceptance:
    """A submit's acceptance the test settles; counts how often a pass asked."""

    asked = 0

    def __init__(self) -> None:
        self.state = "waiting"

    def ok(self) -> bool:
        _Acceptance.asked += 1
        return self.state == "accepted"

    def done(self) -> bool:
        return self.state != "waiting"


class _Handle:
    def __init__(self, n: int) -> None:
        self.n = n
        self._accepted = _Acceptance()
        self.told = False


def test_a_full_window_costs_each_submit_constant_pruning_work() -> None:
    """Fault: a slow node keeps the window full -- each submit finds
    ``window`` unacknowledged ones and the oldest is acknowledged just
    before it. The passes that drop accepted handles cost O(1) a submit
    (before: every submit past the window walked the whole window again,
    about 1,900 x 100 asks for these 2,000 submits), the list stays under
    twice the window, and a flush gets exactly the handles not accepted."""
    window = 100
    unflushed = Unflushed(window, threading.Lock())
    handles = [_Handle(i) for i in range(2000)]
    _Acceptance.asked = 0
    for h in handles:
        if h.n >= window:
            handles[h.n - window]._accepted.state = "accepted"
        unflushed.add(h)
        assert len(unflushed) <= 2 * window + 1
    assert _Acceptance.asked <= 3 * len(handles), _Acceptance.asked
    left, uncounted = unflushed.take()
    assert [h.n for h in left if h._accepted.state != "accepted"] == list(range(1900, 2000))
    assert uncounted == 0 and len(unflushed) == 0


def test_failed_submits_never_flushed_keep_a_bounded_number_of_handles() -> None:
    """Fault: every submit fails (the node answers busy) and the program
    never calls flush() -- a web handler submits per request. Before, every
    failed handle was kept until a flush: memory grew with each failure.
    Now the first MAX_FAILURES_KEPT are kept for the flush to raise, the
    rest counted, and the flush's error says how many failed in all."""
    window = 100
    unflushed = Unflushed(window, threading.Lock())
    for i in range(5000):
        h = _Handle(i)
        h._accepted.state = "failed"
        unflushed.add(h)
        assert len(unflushed) <= 2 * (window + MAX_FAILURES_KEPT) + 1
    left, uncounted = unflushed.take()
    assert len(left) + uncounted == 5000
    assert [h.n for h in left][:MAX_FAILURES_KEPT] == list(range(MAX_FAILURES_KEPT))
    error = flush_error([Busy("node is busy")] * 1 + [Busy("node is busy")] * (len(left) - 1), uncounted)
    assert error.message == "node is busy (and 4999 more submits failed)"


def test_threads_submitting_through_one_client_lose_no_handle_to_a_pass() -> None:
    """Fault: four threads submit through one client while passes drop the
    accepted handles. A pass replaces the list; without the lock a handle
    another thread added during a pass was lost, and flush() did not wait
    for its submit (10-20 of 80,000 lost a run with a 1 µs switch interval)."""
    import sys

    unflushed = Unflushed(50, threading.Lock())
    batches = [[_Handle(i) for i in range(20_000)] for _ in range(4)]

    def submit(handles: list[_Handle]) -> None:
        for i, h in enumerate(handles):
            unflushed.add(h)
            if i >= 10:
                handles[i - 10]._accepted.state = "accepted"

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=submit, args=(b,)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    left, _ = unflushed.take()
    kept = {id(h) for h in left}
    assert [h.n for b in batches for h in b if h._accepted.state != "accepted" and id(h) not in kept] == []


def test_a_submit_that_found_its_node_unconnected_is_retried_on_the_other_one() -> None:
    """Fault: one of two nodes the client knows was never connected (a ring
    member it discovered behind a firewall). Before 2026-12-04 a submit that
    found it unconnected was given the other node as its own and the retry
    then avoided that one -- with two nodes, the unconnected one again, at
    every try until the deadline (``Unavailable: no connection``)."""
    core, transport = make(2)
    core.nodes.reached = True
    transport.connected = {0}
    waiters = []
    for i in range(6):
        p, w = pending(f"t{i}")
        waiters.append(w)
        core.submit(p)
    now = 0.0
    for _ in range(5):
        core.on_timer(now)
        now += 0.02
    sent = {t["id"] for node, cmd, body in transport.take() if cmd == c.SUBMIT for t in body["tasks"]}
    assert sent == {f"t{i}" for i in range(6)}          # every one reached node 0
    assert not any(w.done for w in waiters)


def test_a_submit_its_node_never_acknowledges_is_resent_to_another_node_each_time() -> None:
    """Fault: a node that keeps its connection but never answers (its
    process hung, or frozen before the heartbeats give up on it). Before
    2026-12-04 a resend after ``ack_timeout`` picked round-robin among all
    the nodes, the silent one included -- a third of the resends went back
    to it, and when the resends of a pass came in a multiple of the nodes,
    a task landed on the same node at every pass until its deadline
    (measured: 13 of 4,410 submits failed ``Timeout ... (12 tries)`` with one
    node of three frozen). Now each resend avoids the node that did not
    acknowledge it."""
    core, transport = make(3, ack_timeout=1.0)
    core.nodes.reached = True
    silent = 2
    waiters = {}
    for i in range(30):
        p, w = pending(f"t{i}", timeout=60.0)
        p.node = silent
        waiters[f"t{i}"] = w
        core.submit(p)
    core.on_timer(0.0)
    first = [t["id"] for node, cmd, body in transport.take() if cmd == c.SUBMIT and node == silent
             for t in body["tasks"]]
    assert sorted(first) == sorted(waiters)
    now = 1.5
    for _ in range(20):
        core.on_timer(now)
        for node, cmd, body in transport.take():
            assert node != silent, f"resent to the node that never acknowledged: {[t['id'] for t in body['tasks']]}"
            core.on_frames(node, submitted([[t["id"], "accepted", None] for t in body["tasks"]]), now)
        now += 0.05
    assert all(w.done and w.error is None for w in waiters.values()), {k: w.error for k, w in waiters.items()}
