"""Wall clocks that disagree or step: what a node keeps straight.

Each test names the fault it simulates. docs/semantics.md, "Clocks", says
which times move with a skew or a step and which do not.
"""
from __future__ import annotations

import time
from typing import Any

import pytest
from peer_fixtures import FakePeer, PeerDealer, ServiceDealer, clustered_node

from miyaq.cluster.peer_clock import CLOCK_SLACK, clock_shift
from miyaq.cluster.peer_requests import SYNC
from miyaq.protocol.ring import Ring
from miyaq.store.records import task_record
from miyaq.store.task import Task
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(60)

SKEW = 30.0     # seconds the accepting node's clock is behind this node's
TTL = 10.0


def accepted_behind(task_id: str, holders: list[str], *, clock_behind: float = SKEW,
                    **extra: Any) -> dict[str, Any]:
    """The record of a task with ``ttl=10`` as a node whose clock is
    ``clock_behind`` seconds behind sends it: ``created`` and ``expires``
    (``created + ttl``) stamped on that clock."""
    their_now = time.time() - clock_behind
    task = Task(task_id, "reports", "build", b"\x90", eta=their_now, created=their_now, replicas=2,
                expires=their_now + TTL)
    task.holders = tuple(holders)
    return {**task_record(task), **extra}


@pytest.fixture
def peer():
    p = FakePeer()
    yield p
    p.close()


def test_a_copy_accepted_through_a_node_whose_clock_is_behind_keeps_its_ttl(peer):
    """Fault: the node that accepted a task with ``ttl=10`` has a clock 30 s
    behind this one; its REPLICATE stamps ``expires`` on its clock, 20 s in
    this node's past. Before the fix the copy expired at once here, unrun,
    on every holder with a right clock (an audit's three-node run lost 7 of
    12 such tasks with idle workers). The REPLICATE carries the sender's
    ``clock``: the copy's deadline moves onto this node's clock, about 10 s
    ahead."""
    node = clustered_node(peer).start()
    dealer = PeerDealer(f"tcp://127.0.0.1:{node.config.peer}")
    service = ServiceDealer(node.endpoint)
    try:
        holders = [node.config.node_id, "p1"]
        sent_at = time.time() - SKEW
        answer = dealer.request(b"REPLICATE", {"tasks": [accepted_behind("ttl-skewed", holders)],
                                               "clock": sent_at})
        assert answer["ids"] == ["ttl-skewed"]
        copy = service.task("ttl-skewed")
        assert copy["state"] != "expired"
        assert copy["expires"] > time.time(), "the copy's deadline is still on the sender's clock"
        assert copy["expires"] <= time.time() + TTL
    finally:
        service.close()
        dealer.close()
        node.stop()


@pytest.mark.parametrize("accepting_clock", [-SKEW, SKEW], ids=["behind", "ahead"])
def test_a_ready_task_accepted_through_a_node_whose_clock_is_off_is_ready_at_once_on_its_first_holder(
        peer, accepting_clock):
    """Fault: the accepting node's clock is 30 s behind or ahead of this
    one, the task's first holder. Its REPLICATE stamps the task's ``eta``
    (now: a task submitted ready) on its clock. Before, the copy here was
    due 30 s early (harmless) or 30 s late: a ready task waited half a
    minute with idle workers -- and with a ttl under 30 s it expired unrun
    once its deadline moved onto this clock. Now every time of the record
    moves onto this node's clock: ready at once, the deadline ``ttl`` ahead."""
    node = clustered_node(peer).start()
    dealer = PeerDealer(f"tcp://127.0.0.1:{node.config.peer}")
    service = ServiceDealer(node.endpoint)
    try:
        me = node.config.node_id
        ring = Ring({me: 1, "p1": 1})
        task_id = next(f"ready-{i}" for i in range(1000) if ring.preference_list(f"ready-{i}", 2)[0] == me)
        record = accepted_behind(task_id, [me, "p1"], clock_behind=-accepting_clock)
        answer = dealer.request(b"REPLICATE", {"tasks": [record], "clock": time.time() + accepting_clock})
        assert answer["ids"] == [task_id]
        copy = service.task(task_id)
        assert copy["state"] == "ready", copy
        assert time.time() < copy["expires"] <= time.time() + TTL
    finally:
        service.close()
        dealer.close()
        node.stop()


def test_a_copy_a_resync_brings_from_a_node_whose_clock_is_behind_keeps_its_ttl(peer):
    """Fault: the copy comes in a SYNC answer (the resync a node asks for
    when it subscribes to a peer's stream) from a peer whose clock is 30 s
    behind: as for a REPLICATE, its deadline moves onto this node's clock."""
    node = clustered_node(peer).start()
    service = ServiceDealer(node.endpoint)
    try:
        holders = [node.config.node_id, "p1"]
        identity, body = peer.next_request(SYNC)
        record = accepted_behind("ttl-synced", holders, state="scheduled", attempt=0)
        peer.answer(identity, body["req"], {"tasks": [record], "next": None, "clock": time.time() - SKEW})
        copy = wait_for(lambda: service.task("ttl-synced"), timeout=10, what="the synced copy stored")
        assert copy["state"] != "expired"
        assert copy["expires"] > time.time()
    finally:
        service.close()
        node.stop()


@pytest.mark.parametrize("clock", [None, "noon", float("nan"), float("inf"), True, [1.0]],
                         ids=["missing", "text", "nan", "inf", "bool", "list"])
def test_a_peer_clock_that_is_not_a_number_moves_nothing(clock):
    """Fault: a peer's message carries no ``clock``, or one that is not a
    finite number (a bug or a hostile peer): the times it carries are taken
    as they are, nothing raises."""
    assert clock_shift(clock, 1_000.0) == 0.0


def test_the_shift_is_this_nodes_clock_less_the_senders():
    """The shift a ``clock`` gives: positive when the sender is behind,
    negative when it is ahead (an int is a number too); none within
    ``CLOCK_SLACK`` (a message's time on the way, NTP's error), so nodes
    whose clocks agree keep a copy's times exactly as sent."""
    assert clock_shift(970.0, 1_000.0) == 30.0
    assert clock_shift(1_030, 1_000.0) == -30.0
    assert clock_shift(1_000.0 - CLOCK_SLACK / 2, 1_000.0) == 0.0
    assert clock_shift(1_000.0 + CLOCK_SLACK / 2, 1_000.0) == 0.0


def test_a_peer_answer_over_zeromq_carries_the_senders_clock(peer):
    """Fault: the ZeroMQ peer link answered through its own ``_answer`` (to
    refuse ``busy``), which left out ``clock``: only the in-memory link's
    answers carried it, so over real sockets a SYNC answer's copies and a
    QUERY's lease end were never moved onto the asker's clock. Every
    answer now goes through the one place that stamps it."""
    node = clustered_node(peer).start()
    dealer = PeerDealer(f"tcp://127.0.0.1:{node.config.peer}")
    try:
        before = time.time()
        answer = dealer.replicate([])
        assert before - 1 <= answer["clock"] <= time.time() + 1
    finally:
        dealer.close()
        node.stop()
