"""Nothing from a peer is trusted more than a client (issue 9, item 5).

A record that arrives by REPLICATE (a submit's copy), a handoff, SYNC, or a
replication stream event, or that the log holds, passes the checks a SUBMIT
passes (miyaq/protocol/recordspec.py). Each test plays a peer -- broken,
hostile, or of another version during a rolling upgrade -- against a
clustered node in a thread (a fixed ring of the node and a fake member the
test plays, tests/peer_fixtures.py), and shows that the bad record is
refused, counted by source in STATUS and /metrics, never stored, and that
STATUS and the queue keep answering. Before this, one record with
``queue=12345`` made every STATUS fail with ``internal``, and one with
``priority: "high"`` made every later SUBMIT to its queue fail.
"""
from __future__ import annotations

import errno
import time
import urllib.request
from typing import Any

import msgpack
import pytest
from peer_fixtures import FakePeer, PeerDealer, ServiceDealer, clustered_node

from miyaq.cluster.peer_requests import REPLICATE, SYNC
from miyaq.cluster.stream_numbering import topic
from miyaq.constants import STALL
from miyaq.config import NodeConfig
from miyaq.protocol.commands import TAG
from miyaq.protocol.recordspec import task_from_record
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import clock
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.store.log import AppendLog
from miyaq.store.records import task_record, transfer_record
from miyaq.store.task import Task
from miyaq.testing.harness import ThreadNode, free_port, wait_for

pytestmark = pytest.mark.timeout(60)

NOW = time.time()


def record(task_id: str, on: list[str], **fields: Any) -> dict[str, Any]:
    """A task record as another node sends it (holders ``on``), with
    ``fields`` put in as they are."""
    now = time.time()     # not the module's NOW: the suite may run this test long after importing it
    task = Task(task_id, "emails", "send", b"\x90", eta=now + 600, created=now, replicas=2)
    task.holders = tuple(on)
    out = task_record(task)
    out.update(fields)
    return out


POISONS = [
    pytest.param({"queue": 12345}, "queue", id="queue-an-int"),
    pytest.param({"priority": "high"}, "priority", id="priority-a-string"),
    pytest.param({"eta": float("nan")}, "eta", id="eta-nan"),
    pytest.param({"eta": "tomorrow"}, "eta", id="eta-a-string"),
    pytest.param({"body": "text, not bytes"}, "body", id="body-a-string"),
    pytest.param({"state": "exploded"}, "state", id="unknown-state"),
    pytest.param({"attempt": -1}, "attempt", id="attempt-negative"),
    pytest.param({"error": {"type": ["nested"]}}, "error", id="error-nested"),
    pytest.param({"holders": "n1,p1"}, "holders", id="holders-a-string"),
    pytest.param({"meta": {"headers": {"X": 1}}}, "headers", id="header-an-int"),
    pytest.param({"max_retries": 10**12}, "max_retries", id="max-retries-huge"),
    pytest.param({"state": "running", "attempt": 1, "lessee": "worker:w1"}, "lessee", id="lessee-not-a-pair"),
    pytest.param({"state": "running", "attempt": 1, "lessee": [-1, "w1"]}, "lessee", id="lessee-attempt-negative"),
    pytest.param({"state": "running", "attempt": 1, "lessee": [1, "w" * 513]}, "lessee", id="lessee-name-too-long"),
    pytest.param({"state": "running", "attempt": 1, "lessee": [1, ""]}, "lessee", id="lessee-name-empty"),
    pytest.param({"url": "ftp://x", "name": None}, "url", id="url-not-http"),
]


@pytest.fixture
def peer():
    p = FakePeer()
    yield p
    p.close()


@pytest.fixture
def cluster_node(peer):
    n = clustered_node(peer).start()
    yield n
    n.stop()


@pytest.fixture
def dealer(cluster_node):
    d = PeerDealer(f"tcp://127.0.0.1:{cluster_node.config.peer}")
    yield d
    d.close()


def me(node: ThreadNode) -> str:
    return node.config.node_id


@pytest.fixture
def service(cluster_node):
    s = ServiceDealer(cluster_node.endpoint)
    yield s
    s.close()


def refused(service: ServiceDealer, source: str) -> int:
    return service.status()["records_refused"].get(source, 0)


def assert_queue_still_works(service: ServiceDealer) -> None:
    """STATUS answers, and a SUBMIT to the queue the poison named is stored."""
    status = service.status()
    assert isinstance(status["queues"], dict)
    task_id = f"after-{time.monotonic_ns()}"
    result = service.submit_stored({"id": task_id, "name": "send", "queue": "emails", "countdown": 60})
    assert result[1] == "accepted", result
    assert service.task(task_id)["state"] == "scheduled"


@pytest.mark.parametrize("poison,field", POISONS)
def test_poisoned_replicate_record_is_refused_and_status_keeps_working(cluster_node, dealer, service,
                                                                        poison, field):
    """Fault: another node's REPLICATE (a submit's copy) carries a record with
    one bad field. It is refused (not among the ids stored), counted under
    ``replicate`` (``handoff`` when it carries a state), and the node's STATUS
    and the queue keep working; a good record in the same batch is stored."""
    holders = [me(cluster_node), "p1"]
    answer = dealer.replicate([record("bad-1", holders, **poison), record("good-1", holders)])
    assert answer["ids"] == ["good-1"]
    assert refused(service, "handoff" if "state" in poison else "replicate") == 1
    assert service.task("good-1")["state"] == "scheduled"
    assert service.task("bad-1") is None
    assert_queue_still_works(service)


def test_refused_records_are_in_metrics_by_source_and_field(peer):
    """Fault: two bad records (a queue that is an int, a priority that is a
    string) and one that is no task record at all. /metrics counts them by
    source and field, from fixed label sets."""
    node = clustered_node(peer, http_port=free_port()).start()
    dealer = PeerDealer(f"tcp://127.0.0.1:{node.config.peer}")
    try:
        holders = [me(node), "p1"]
        assert dealer.replicate([record("m1", holders, queue=12345), record("m2", holders, priority="high"),
                                 {"id": "m3", "surprise": 1}])["ids"] == []
        url = f"http://127.0.0.1:{node.config.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        assert 'miyaq_records_refused_total{field="queue",source="replicate"} 2.0' in text, text
        assert 'miyaq_records_refused_total{field="priority",source="replicate"} 1.0' in text, text
    finally:
        dealer.close()
        node.stop()


def test_poisoned_handoff_record_is_refused_and_status_keeps_working(cluster_node, dealer, service):
    """Fault: a handoff (a REPLICATE of a task under way elsewhere: the record
    carries its state) with ``queue=12345``, and one with ``priority: "high"``
    and a running state. Both refused under ``handoff``; STATUS and the queue work."""
    holders = [me(cluster_node), "p1"]
    answer = dealer.replicate([record("h1", holders, queue=12345, state="ready", attempt=0),
                               record("h2", holders, priority="high", state="running", attempt=1,
                                      lease_end=NOW + 30)])
    assert answer["ids"] == []
    assert refused(service, "handoff") == 2
    assert service.status()["totals"]["live"] == 0
    assert_queue_still_works(service)


def test_poisoned_handed_off_outcomes_are_refused_and_the_good_one_is_kept(cluster_node, dealer, service):
    """Fault: a handoff's outcomes (REPLICATE ``stones``: tasks that ended
    before a ring change made this node one of their holders) with a state
    that is an int, a result that is text, an id that is a list, a key of
    300 characters and a row that is no row. Each is refused under
    ``handoff``; the good outcome of the same message is kept as a
    tombstone with its result and key; STATUS and the queue work."""
    answer = dealer.request(REPLICATE, {"stones": [
        ["o-bad-state", 12345, None, None, None], ["o-bad-result", "done", "text", None, None],
        [["not", "an", "id"], "done", None, None, None], ["o-bad-key", "done", None, None, "k" * 300],
        "no row", ["o-good", "done", b"42", None, "key-1"]]})
    assert answer["ids"] == []
    assert refused(service, "handoff") == 5
    good = service.task("o-good")
    assert (good["state"], good.get("key")) == ("done", "key-1")
    assert service.task("o-bad-state") is None and service.task("o-bad-key") is None
    assert service.status()["totals"]["live"] == 0
    assert_queue_still_works(service)


def test_a_dead_record_whose_id_is_a_list_is_refused_while_the_node_holds_dead_letters(cluster_node, dealer,
                                                                                      service):
    """Fault (found by the node fuzz, seed 20261203): a REPLICATE whose
    record claims the state ``dead`` under an id that is a list, sent to a
    node that holds a dead letter. The answer's pass over the records sent
    dead hashed that id and the peer handler failed: the batch went
    unanswered. Now the record is refused like any bad one, the good record
    of the same batch is stored and answered, and the queue works."""
    holders = [me(cluster_node), "p1"]
    dead = record("dead-1", holders, state="dead", attempt=1, error={"type": "Reject", "message": "no"})
    assert dealer.replicate([dead])["ids"] == ["dead-1"]
    assert service.task("dead-1")["state"] == "dead"

    answer = dealer.replicate([record(["not", "an", "id"], holders, state="dead", attempt=1),
                               record("good-2", holders)])
    assert answer["ids"] == ["good-2"]
    assert refused(service, "handoff") == 1
    assert service.task("good-2")["state"] == "scheduled"
    assert_queue_still_works(service)


def test_poisoned_sync_answer_is_refused_and_status_keeps_working(peer):
    """Fault: the peer answers the node's resync (SYNC, asked when the node
    subscribes to its stream) with a task whose queue is an int, one whose
    priority is a string, and tombstones whose state and result are wrong
    types. Each is refused under ``sync``; the good task and tombstone of the
    same answer are applied; STATUS and the queue work."""
    node = clustered_node(peer).start()
    service = ServiceDealer(node.endpoint)
    try:
        holders = [me(node), "p1"]
        identity, body = peer.next_request(SYNC)
        peer.answer(identity, body["req"], {
            "tasks": [sync_record(record("s-bad-queue", holders, queue=12345)),
                      sync_record(record("s-bad-prio", holders, priority="high")),
                      sync_record(record("s-good", holders))],
            "stones": [["st-bad-state", 12345, None, None, None], ["st-bad-result", "done", "text", None, None],
                       ["st-good", "cancelled", None, None, None]],
            "next": None})
        wait_for(lambda: refused(service, "sync") == 4, timeout=10, what="4 sync records refused")
        assert service.status()["totals"]["live"] == 1
        assert service.task("s-good")["state"] == "scheduled"
        assert service.task("s-bad-queue") is None and service.task("st-bad-state") is None
        assert_queue_still_works(service)
    finally:
        service.close()
        node.stop()


def sync_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as SYNC sends it (transfer_record): with its state and attempt."""
    return {**rec, "state": rec.get("state", "scheduled"), "attempt": rec.get("attempt", 0)}


def test_poisoned_stream_events_are_refused_and_the_copy_is_untouched(cluster_node, peer, dealer, service):
    """Fault: the peer's replication stream carries events for a task both
    hold with wrong types: a finish whose state is an int, one whose result
    is text, a retry whose eta is a string, a start whose lease end is NaN,
    an unknown op, a finish whose key is an int or 300 characters long, and
    a revival whose count is negative or a string. Each is refused under
    ``stream``; the copy stays as it was; STATUS and the queue work; a good
    finish then finishes it."""
    holders = [me(cluster_node), "p1"]
    assert dealer.replicate([record("ev-1", holders)])["ids"] == ["ev-1"]
    bad = [["F", "ev-1", 12345, None, None], ["F", "ev-1", "done", "text", None],
           ["R", "ev-1", 1, "soon", None], ["S", "ev-1", 1, float("nan"), False], ["Z", "ev-1"],
           ["F", "ev-1", "done", None, None, 7], ["F", "ev-1", "done", None, None, "k" * 300],
           ["V", "ev-1", -1], ["V", "ev-1", "twice"]]

    def published() -> bool:
        peer.publish(me(cluster_node), bad)        # the first ones may be lost (slow joiner)
        return refused(service, "stream") >= len(bad)

    wait_for(published, timeout=15, interval=0.2, what="the bad events refused")
    assert service.task("ev-1")["state"] == "scheduled"
    assert_queue_still_works(service)

    def finished() -> bool:
        peer.publish(me(cluster_node), [["F", "ev-1", "done", b"\x01", None]])
        return service.task("ev-1")["state"] == "done"

    wait_for(finished, timeout=15, interval=0.2, what="the good finish applied")


def test_poisoned_record_in_the_log_is_skipped_at_replay(tmp_path):
    """Fault: the log holds records that are whole (their checksum holds) but
    wrong -- written by another version: a task whose queue is an int, one
    whose priority is a string, a tombstone whose state is an int and a retry
    whose eta is a string. The node starts, skips and counts each (source
    ``log``), restores the good task, and STATUS and the queue work."""
    log = AppendLog(tmp_path)
    list(log.replay())
    log.append_many([record("log-queue", [], queue=12345), record("log-prio", [], priority="high"),
                     record("log-good", []),
                     {"o": "F", "id": "log-stone", "state": 7, "at": NOW, "queue": "emails", "attempt": 1},
                     {"o": "R", "id": "log-good", "attempt": 1, "eta": "soon"}])
    log.close()
    with ThreadNode(data_dir=str(tmp_path)) as node:
        service = ServiceDealer(node.endpoint)
        try:
            status = service.status()
            assert status["records_refused"] == {"log": 4}
            assert (status["totals"]["live"], status["totals"]["tombstones"]) == (1, 0)
            assert service.task("log-good")["state"] in ("scheduled", "ready")
            assert_queue_still_works(service)
        finally:
            service.close()


def test_transfer_records_of_the_node_own_tasks_pass_validation():
    """The records a node sends (transfer_record of every state it holds)
    pass the checks the receiver applies: validation never refuses an honest peer."""
    config = NodeConfig()
    wire = {"id": "w1", "url": "https://example.com/hook", "headers": {"X-A": "b"}, "offset": 2.0,
            "resent": True, "ttl": 60, "key": "k", "priority": -5, "at_most_once": True, "countdown": 10}
    task = task_from_wire(wire, NOW, config)
    task.holders = ("n1", "n2", "n3")
    for state, attempt in (("scheduled", 0), ("ready", 0), ("running", 1), ("retrying", 2), ("dead", 4)):
        task.state, task.attempt = state, attempt
        task.error = {"type": "HTTPError", "status": 503, "failed_at": NOW, "message": "m"} if attempt else None
        task.lease_end = NOW + 30
        task.lessees = [(attempt, "worker:key/w1")] if attempt else None
        rebuilt = task_from_record(transfer_record(task), config)
        assert (rebuilt.id, rebuilt.state, rebuilt.meta, rebuilt.url) == (task.id, state, task.meta, task.url)
        assert rebuilt.lessees == task.lessees
    task.lessees = [(4, "pull:" + "ab" * 255)]      # a client's own routing id, 255 bytes: too long to send
    record = transfer_record(task)
    assert "lessee" not in record and task_from_record(record, config).lessees is None


def test_a_stream_message_of_too_many_frames_is_dropped_and_the_stream_goes_on(cluster_node, peer, dealer, service):
    """Fault: the peer's replication PUB sends a message of three frames (a
    stream message is [topic, body]). The node's subscriber reads it to its
    end, drops it and counts it; the stream is not stuck: a good finish
    published after it is applied."""
    holders = [me(cluster_node), "p1"]
    assert dealer.replicate([record("fr-1", holders)])["ids"] == ["fr-1"]
    subscriber = cluster_node.node.role.subscriber

    def dropped() -> bool:
        peer.pub.send_multipart([topic(me(cluster_node)), b"one frame too many", b"x"])
        return subscriber.refused >= 1

    wait_for(dropped, timeout=15, interval=0.2, what="the three-frame message dropped")
    assert service.task("fr-1")["state"] == "scheduled"

    def finished() -> bool:
        peer.publish(me(cluster_node), [["F", "fr-1", "done", b"\x01", None]])
        return service.task("fr-1")["state"] == "done"

    wait_for(finished, timeout=15, interval=0.2, what="the good finish applied")


def test_a_peer_request_of_too_many_frames_is_answered_bad_frame_and_the_port_goes_on(cluster_node, dealer):
    """Fault: a message of five frames on the peer port (a request is [tag,
    command, body]). The node reads it to its end without keeping it,
    answers ``bad_frame``, and the next request on the same connection is
    answered as usual."""
    dealer.sock.send_multipart([TAG, REPLICATE, b"x", b"y", b"z"])
    assert dealer.sock.poll(10_000), "no answer to the five-frame message"
    _, _, raw = dealer.sock.recv_multipart()
    assert msgpack.unpackb(raw, raw=False)["code"] == "bad_frame"
    assert dealer.replicate([record("pf-1", [me(cluster_node), "p1"])])["ids"] == ["pf-1"]


def test_a_lessee_name_too_long_to_pass_the_peers_checks_is_not_sent_in_the_started_event():
    """Bad input: a pull consumer set its own routing id of 255 bytes, so its
    principal is longer than ``MAX_LESSEE``. The STARTED event leaves without
    a lessee (the other holders then refuse that consumer's reports, as
    before this field) instead of with one that makes every other holder
    refuse the whole event."""
    from miyaq.cluster.holder_events import EventPublisher
    from miyaq.protocol.eventspec import check_event

    publisher = EventPublisher("n1", stream=None, max_message=1 << 20)    # type: ignore[arg-type]
    task = Task("t1", "emails", "send", b"", replicas=2)
    task.holders, task.attempt, task.lease_end = ("n1", "n2"), 1, NOW + 30
    for principal, sent in (("pull:" + "ab" * 255, None), ("worker:key/w1", "worker:key/w1")):
        task.lessees = [(1, principal)]
        publisher.task_started(task)
        event = publisher.outbox.pop("n2")[-1]
        assert event[0] == "S" and event[5] == sent
        check_event(event, NodeConfig())


def test_a_peer_link_that_cannot_be_made_for_want_of_descriptors_is_made_a_second_later(peer, monkeypatch,
                                                                                       caplog):
    """Fault: the node's process has no file descriptor left (simulated:
    libzmq's EMFILE for the peer link's DEALERs) when the ring names a
    member. The ring change goes on without that link (logged); once
    descriptors are free again the node links to the member by itself,
    within a second, with no ring change (before, the error raised out of
    the ring change, and a skipped link waited for the next change, which
    may never come)."""
    real = SocketFactory.watched_dealer
    out_of_files = [True]
    failures: list[str] = []

    def without_descriptors(self, connect, **options):
        if options.get("bounded") and out_of_files[0]:      # the peer link's DEALERs
            failures.append(connect)
            raise zmq.ZMQError(errno.EMFILE)
        return real(self, connect, **options)

    monkeypatch.setattr(SocketFactory, "watched_dealer", without_descriptors)
    node = clustered_node(peer).start()
    try:
        link = node.node.role.peer
        wait_for(lambda: failures and "p1" in link.unlinked, what="the failed link")
        assert "p1" not in link.dealers
        tried = len(failures)
        wait_for(lambda: len(failures) > tried, what="the node to try the link again")
        out_of_files[0] = False
        wait_for(lambda: "p1" in link.dealers, timeout=20, what="the link made again")
        assert not link.unlinked
        assert "peer link: no socket to member p1 now: Too many open files" in caplog.text
    finally:
        node.stop()


def test_the_queue_still_works_after_the_test_process_stalled(cluster_node, service):
    """Fault: the whole test process (the node is a thread of it) stalls
    past ``STALL`` on a loaded machine just before
    ``assert_queue_still_works`` submits; the node takes it for a freeze
    and refuses submits ``unavailable`` for ``SUSPECT_AFTER_FREEZE``.
    Before 2026-12-07 the helper asserted the first answer was
    ``accepted``; now it sends a refused submit again, as a client does.
    The clock moves only once the cluster ticker has run a round: a node
    whose ticker never ran has no stamp to find a freeze by until its
    housekeeping's next pass, and took that submit (CI, 2026-12-07)."""
    wait_for(lambda: service.status() is not None and cluster_node.node.role.ticker.rounds > 0,
             what="the node serving, its ticker past its first round")
    try:
        clock.advance(STALL + 0.5)
        task_id = f"stalled-{time.monotonic_ns()}"
        first = service.submit({"id": task_id, "name": "send", "queue": "emails", "countdown": 60})
        assert first[1] == "rejected" and first[2]["code"] == "unavailable", first   # the stall did refuse
        assert_queue_still_works(service)
    finally:
        clock.reset()
