"""The version a node writes to a peer in, across the ring's changes of
that peer's link (miyaq/cluster/peer_versions.py, miyaq/cluster/peer.py).

Fault (review33): a member whose link the ring made anew -- it left the
ring, it came back at another endpoint, or it restarted (``fresh``) --
may come back as a build of peer protocol 1 (a rollback). The link's
connection to it closed, but through ``connect()``, which retires the old
DEALERs with their monitors unread: ``connection_lost`` never ran, and
the version its old process spoke (2) stayed. The link went on writing to
the new process in version 2, which it refuses (``bad_version``): a
submit's copy refused so is silence, and the submit waited
``replication_timeout`` and was rejected. A graceful stop leaves the ring
before its sockets close, so in a rolling rollback this was the rule, not
a race. The peer here is the raw ROUTER of test_peer_control_channel.py:
what it reads is the request as written.
"""
from __future__ import annotations

import time
from typing import Any

import pytest
from hub_waits import until
from test_peer_control_channel import RawPeer, link  # noqa: F401  (the fixture)

from miyaq.cluster.peer import PeerEndpoint
from miyaq.cluster.peer_requests import QUERY, REPLICATE
from miyaq.runtime.sockets import zmq

pytestmark = pytest.mark.timeout(60)
WAIT = 15.0          # a guard against a hang, not a timing assertion


def _speaks_2(me: PeerEndpoint, peer: RawPeer) -> None:
    """p1 answers a QUERY saying it speaks 2: the link then writes to it in 2."""
    answers: list[Any] = []
    assert me.request("p1", QUERY, {"ids": []}, WAIT, answers.append)
    identity, body = peer.read_until(QUERY)
    assert body["proto"] == 1       # nothing heard of p1 yet
    peer.answer(identity, body["req"], {"states": {}, "speaks": 2})
    until(lambda: answers, "the QUERY's answer")
    assert me.versions.version_for("p1") == 2


def _written_in(me: PeerEndpoint, peer: RawPeer) -> int:
    """The version of the next REPLICATE the link writes to p1 (once its new connection is up)."""
    peer.read.clear()
    until(lambda: me.request("p1", REPLICATE, {"tasks": []}, WAIT, lambda answer: None), "p1's new connection")
    return peer.read_until(REPLICATE)[1]["proto"]


@pytest.mark.parametrize("change", ["restarted", "left and came back", "moved"])
def test_a_peer_whose_link_the_ring_made_anew_is_written_to_in_version_1(link, change):  # noqa: F811
    me, peer = link
    _speaks_2(me, peer)
    if change == "restarted":
        me.connect({"p1": peer.endpoint}, fresh={"p1"})
    elif change == "left and came back":
        me.connect({})
        assert me.versions.version_for("p1") == 1
        me.connect({"p1": peer.endpoint})
    else:
        other = RawPeer()       # its new process, at another endpoint
        try:
            me.connect({"p1": other.endpoint})
            assert me.versions.version_for("p1") == 1
            assert _written_in(me, other) == 1
        finally:
            other.close()
        return
    assert me.versions.version_for("p1") == 1
    assert _written_in(me, peer) == 1


def test_an_answer_read_from_the_old_connection_after_the_link_was_made_anew_says_nothing_of_the_new_process(link):  # noqa: F811
    """Fault (review35): connect() forgets what a peer spoke when it makes
    its link anew, but the old DEALERs are closed by the answer reader only
    after it has read what they hold. An answer the old process sent before
    it stopped, still unread on the old connection (the reader busy with
    other answers, or not yet scheduled), was read after the forget and
    taught the link version 2 again: the new process, a rolled-back build,
    was written to in version 2 and refused it (``bad_version``), the very
    fault the forget mends. The answer still answers its request; only the
    version it says is not the new process's."""
    me, peer = link
    answers: list[Any] = []
    assert me.request("p1", QUERY, {"ids": []}, WAIT, answers.append)
    identity, body = peer.read_until(QUERY)
    assert body["proto"] == 1
    old = list(me.links["p1"].dealers.values())
    peer.answer(identity, body["req"], {"states": {}, "speaks": 2})
    # Without yielding to the hub (the answer reader cannot read it meanwhile):
    # wait until the answer is queued on the old connection.
    deadline = time.monotonic() + WAIT
    while not any(d.getsockopt(zmq.EVENTS) & zmq.POLLIN for d in old):
        assert time.monotonic() < deadline, "the answer never reached the old connection"
    me.connect({"p1": peer.endpoint}, fresh={"p1"})     # p1 restarted: its link made anew
    assert me.versions.version_for("p1") == 1
    until(lambda: answers, "the QUERY's answer, read from the old connection")
    assert answers[0] is not None and answers[0]["speaks"] == 2     # it was read, and said 2
    assert me.versions.version_for("p1") == 1       # of the old process: nothing of the new one
    assert _written_in(me, peer) == 1
