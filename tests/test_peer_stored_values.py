"""What a peer sends and a node accepts must never later make a request, a
reader or the node's own log replay fail (docs/cluster.md, "What a node
accepts from another"): a copy moved by a peer's skewed clock, a copy sent at
the largest attempt count, an error map whose ``retry_at`` is no time.

Each test stores through a fake peer (``tests/peer_fixtures.py``), reads the
node back as operators do, and where the log is involved restarts the node
on its data dir.
"""
from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
import zmq
from gateway_harness import Http
from peer_fixtures import FakePeer, FixedRing, PeerDealer, ServiceDealer, pack

from miyaq.cli import status_view
from miyaq.cluster.peer_requests import REPLICATE
from miyaq.cluster.ring_view import local_member
from miyaq.gateway.console import render
from miyaq.protocol.commands import TAG
from miyaq.protocol.recordspec import MAX_ATTEMPT, MAX_TIME, invalid_stored
from miyaq.store.records import task_record
from miyaq.store.task import Task
from miyaq.testing.harness import ThreadNode, free_port, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def peer():
    fake = FakePeer()
    yield fake
    fake.close()


def node_settings(tmp_path: Any) -> dict[str, Any]:
    """One node id, ports and data dir, so the node can be started again on its log."""
    port = free_port()
    return dict(port=port, peer_port=free_port(), pub_port=free_port(), node_id=f"n{port}",
                data_dir=str(tmp_path / "data"), replicas=2, min_acks=1, replica_offset=3600.0, heartbeat=0.25)


def start(peer: FakePeer, settings: dict[str, Any]) -> ThreadNode:
    return ThreadNode(coordinator=lambda config: FixedRing(local_member(config), [peer.member]),
                      **settings).start()


def record(task_id: str, node_id: str, **fields: Any) -> dict[str, Any]:
    """A copy's record as a peer holding the task with this node would send it."""
    now = time.time()
    task = Task(task_id, "emails", "send", b"\x92\x90\x80", eta=now + 600, created=now, replicas=2)
    task.holders = (node_id, "p1")
    r = task_record(task)
    r.update(fields)
    return r


def replicate(dealer: PeerDealer, records: list[dict[str, Any]], clock: Any) -> dict[str, Any]:
    """REPLICATE ``records`` stamped with the sender's wall ``clock``; its answer."""
    dealer.req += 1
    dealer.sock.send_multipart([TAG, REPLICATE, pack({"tasks": records, "req": dealer.req, "from": "p1",
                                                      "clock": clock})])
    assert dealer.sock.poll(10_000), "no answer to REPLICATE"
    return msgpack.unpackb(dealer.sock.recv_multipart()[2], raw=False)


def replayed(peer: FakePeer, settings: dict[str, Any], task_id: str) -> dict[str, Any] | None:
    """Start the node again on its log: ``task_id`` as the replay left it,
    once the replay refused no record."""
    node = start(peer, settings)
    try:
        service = ServiceDealer(node.endpoint)
        try:
            assert service.status()["records_refused"] == {}
            return service.task(task_id)
        finally:
            service.close()
    finally:
        node.stop()


def held_by(node: ThreadNode) -> list[str]:
    """The node's stored tasks that break the invariant every stored task
    keeps (read from the test's thread: the node is idle when asked)."""
    assert node.node is not None
    return invalid_stored(node.node.core.engine.table, node.config)


@pytest.mark.parametrize("clock", [-1e17, 1e17, 1.7e12, 1.0, MAX_TIME - 1.0],
                         ids=["far-behind", "far-ahead", "milliseconds", "the-epoch", "max-time"])
def test_a_copy_moved_by_a_peers_far_off_clock_keeps_times_every_reader_and_the_replay_take(peer, tmp_path,
                                                                                            clock):
    """Fault: a peer stamps its REPLICATE with a wall clock far from this
    node's -- one that sends milliseconds, a clock years off, a hostile
    value. The copy was checked as sent, then its times moved by the
    difference unchecked: ``eta`` 1e17 or ``created`` -1e17 were stored,
    ``miyaq tasks`` ended with a traceback, the console's task page was a
    500, and the next start refused the logged record (the copy lost). Now
    a ``clock`` that is no time moves nothing, and a moved time stays in
    0..MAX_TIME: stored copies pass the node's own checks, are printed, and
    come back after a restart."""
    settings = node_settings(tmp_path)
    node = start(peer, settings)
    try:
        dealer = PeerDealer(f"tcp://127.0.0.1:{settings['peer_port']}")
        try:
            answer = replicate(dealer, [record("skewed", settings["node_id"])], clock)
        finally:
            dealer.close()
        assert answer["ids"] == ["skewed"], answer
        assert held_by(node) == []
        service = ServiceDealer(node.endpoint)
        try:
            stored = service.task("skewed")
        finally:
            service.close()
        assert stored is not None
        for name in ("eta", "created"):
            assert 0 <= stored[name] <= MAX_TIME, (name, stored)
            assert render._when(stored[name]) and render._ago(stored[name])
            assert status_view.clock_time(stored[name])
    finally:
        node.stop()
    assert replayed(peer, settings, "skewed") is not None, "the copy was refused by the replay"


def test_a_copy_sent_at_the_largest_attempt_runs_and_its_outcome_survives_a_restart(peer, tmp_path, ctx):
    """Fault: a peer sends a ready copy whose ``attempt`` is the largest a
    node accepts (2**31 - 1). This node runs it: the count went one past
    (2**31), so its own log's records of that run were refused at the next
    start -- the finished task came back live, its result gone, and would
    have run again. The count now stops at ``MAX_ATTEMPT``: after a restart
    the task is still done."""
    settings = node_settings(tmp_path)
    node = start(peer, settings)
    try:
        role = node.node.role
        wait_for(lambda: len(role.holders("any", 2)) == 2, what="the ring of this node and the peer")
        task_id = next(t for t in (f"big-{i}" for i in range(1000))
                       if role.holders(t, 2)[0] == settings["node_id"])     # this node its first holder
        now = time.time()
        dealer = PeerDealer(f"tcp://127.0.0.1:{settings['peer_port']}")
        try:
            answer = dealer.replicate([record(task_id, settings["node_id"], attempt=MAX_ATTEMPT, max_retries=3,
                                              eta=now, created=now)])
        finally:
            dealer.close()
        assert answer["ids"] == [task_id], answer
        worker = ctx.socket(zmq.DEALER)
        worker.setsockopt(zmq.LINGER, 0)
        worker.connect(node.endpoint)
        try:
            worker.send_multipart([TAG, b"READY", pack({"worker": "w1", "queues": ["emails"], "names": ["send"],
                                                        "capacity": 1})])
            delivered = None
            while delivered is None:
                assert worker.poll(10_000), "the copy was never delivered"
                _, command, body = worker.recv_multipart()
                if command == b"DISPATCH":
                    delivered = msgpack.unpackb(body, raw=False)["tasks"][0]
            assert (delivered[0], delivered[4]) == (task_id, MAX_ATTEMPT)
            worker.send_multipart([TAG, b"DONE", pack({"done": [[task_id, delivered[4], pack("ok")]]})])
            service = ServiceDealer(node.endpoint)
            try:
                wait_for(lambda: (service.task(task_id) or {}).get("state") == "done", what="the task done")
            finally:
                service.close()
        finally:
            worker.close()
        assert held_by(node) == []
    finally:
        node.stop()
    task = replayed(peer, settings, task_id)
    assert task is not None and task["state"] == "done", task


@pytest.mark.parametrize("value", ["soon", 1e17, -5.0, True, float("nan")])
def test_the_console_prints_a_time_that_is_none_as_a_dash(value):
    """Fault: a peer's (or a handler's) error map carries ``retry_at`` that is
    no time -- text, a moment past year 9999, a negative number --
    which the record checks let through (an error map holds any scalars).
    The console's task page rendered it through ``ago`` and answered 500
    (``TypeError``, ``OverflowError``). A value that is no time prints as
    ``-``."""
    assert render._ago(value) == "-"
    assert render._when(value) == "-"


@pytest.mark.parametrize("value", ["soon", 1e17, True, float("nan"), None])
def test_miyaq_tasks_prints_an_eta_that_is_no_time_as_a_dash(value):
    """Fault: ``miyaq tasks`` printed each row's eta through ``localtime``,
    and one that was no time the machine could show (1e17: a copy moved by
    a peer's skewed clock) ended the whole listing with a traceback
    (``OSError: Value too large``). Such an eta prints as ``-``."""
    assert status_view.clock_time(value) == "-"
    assert status_view.clock_time(1_700_000_000.0) != "-"


def test_the_console_task_page_of_a_peers_copy_with_a_text_retry_at_is_shown(peer, tmp_path, ctx):
    """Fault: the same through the whole page -- a peer's dead copy whose
    error map says ``retry_at: "soon"``: ``GET /ui/tasks/ID`` answered 500.
    It is shown, with its error's type and message."""
    settings = node_settings(tmp_path)
    settings.update(http_port=free_port())
    node = start(peer, settings)
    try:
        dealer = PeerDealer(f"tcp://127.0.0.1:{settings['peer_port']}")
        try:
            error = {"type": "Boom", "message": "it broke", "retry_at": "soon"}
            answer = dealer.replicate([record("odd-error", settings["node_id"], state="dead", attempt=1,
                                              error=error)])
        finally:
            dealer.close()
        assert answer["ids"] == ["odd-error"], answer
        api = Http(f"http://127.0.0.1:{settings['http_port']}")
        try:
            status, body, _ = api.get("/ui/tasks/odd-error")
        finally:
            api.conn.close()
        html = body.decode() if isinstance(body, bytes) else str(body)
        assert status == 200, html[:300]
        assert "it broke" in html
    finally:
        node.stop()
