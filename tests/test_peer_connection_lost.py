"""A holder that reads a REPLICATE and exits before it answers (a node
stopped, or killed, in that instant). The coordinator watches its peer
connections: when the connection closes, the copy counts as not stored at
once -- not at ``replication_timeout`` -- so the submit's client hears
``not_enough_replicas`` and resends. The node runs in a thread; the holder
is a fake member the test plays (tests/peer_fixtures.py)."""
from __future__ import annotations


import pytest
from peer_fixtures import FakePeer, ServiceDealer, clustered_node, submit_until_copied

from miyaq.cluster.peer_requests import QUERY, REPLICATE, PeerRequests
from miyaq.protocol.commands import REJECTED, SUBMITTED

pytestmark = pytest.mark.timeout(60)


def test_a_submit_whose_holder_exits_after_reading_its_copy_is_rejected_at_once():
    """Fault: the other holder reads the REPLICATE and its process exits
    (its sockets close). min_acks 2 cannot be met any more: the submit is
    rejected as soon as the connection closes. replication_timeout is 60 s,
    so only that can answer within the test's time."""
    peer = FakePeer()
    node = clustered_node(peer, min_acks=2, replication_timeout=60.0).start()
    service = ServiceDealer(node.endpoint)
    try:
        task_id, body = submit_until_copied(service, peer)
        assert [r["id"] for r in body["tasks"]] == [task_id]
        peer.close()                                    # exits without an answer
        _, reply = service._reply(lambda command, b: command == SUBMITTED)
        [(answered_id, status, detail)] = reply["results"]
        assert (answered_id, status, detail["code"]) == (task_id, REJECTED, "not_enough_replicas")
        assert f"the connection to {peer.node_id} closed before it confirmed its copy" in detail["message"]
        # The node's own copy stays, as a standby that waits and asks before it
        # runs (the client resends the task; the holder may have stored it).
        assert service.task(task_id)["state"] == "scheduled"
    finally:
        service.close()
        node.stop()
        peer.close()


def test_a_query_whose_holder_exits_still_waits_for_its_timeout():
    """Only requests that say what a closed connection means end early: the
    others (a standby's QUERY, a SYNC) keep their deadline, since an answer
    may still come on the next connection."""
    class Link(PeerRequests):
        def _send_request(self, node_id, frames):
            return True

    class Supervisor:
        def spawn(self, *a, **k):
            raise AssertionError("nothing is spawned")

        def report(self, what, exc):
            raise exc

    link = Link(Supervisor(), "n0", 1 << 20)
    answers: list = []
    lost: list[str] = []
    link.request("p1", QUERY, {"ids": ["a"]}, 60.0, answers.append)
    link.request("p1", REPLICATE, {"tasks": []}, 60.0, answers.append, lambda: lost.append("p1"))
    link.request("p2", REPLICATE, {"tasks": []}, 60.0, answers.append, lambda: lost.append("p2"))
    assert link.connection_lost("p1") == 1
    assert lost == ["p1"] and answers == []
    assert link.unanswered() == {"p1": 1, "p2": 1}      # the QUERY still waits, and p2's REPLICATE
    assert link.connection_lost("p1") == 0
