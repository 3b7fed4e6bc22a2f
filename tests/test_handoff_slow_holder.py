"""Handoff to a new holder that answers slowly, or not at all: what the old
holders send it and keep (in-process cluster, miyaq.testing.inprocess).

Counted on the in-memory wire (task records in REPLICATEs to the new
holder) and in the senders' own tables (``handoff.leaving``, copies kept by
nodes that are no longer holders); time passes on the cluster's clock."""
from __future__ import annotations

from collections import Counter

import pytest

from miyaq.cluster import peer_requests as peer_requests_module
from miyaq.cluster.peer_requests import ANSWER, QUERY, REPLICATE, PeerRequests
from miyaq.constants import (
    HANDOFF_CONFIRM_TIMEOUT, HANDOFF_RETRY, HANDOFF_RETRY_MAX, LATE_ANSWER_WINDOW,
)
from miyaq.protocol import codec

OLD = ["n1", "n2", "n3"]
ALL = ["n1", "n2", "n3", "n4"]


def _submit_many(cluster, count: int) -> list[str]:
    subs = cluster.accepted([cluster.submit(OLD[i % 3], countdown=3600) for i in range(count)])
    return [s.task_id for s in subs]


def _sends_to(cluster, dst: str) -> Counter[tuple[str, str]]:
    """(sender, task id) -> how many times the sender handed that task to ``dst``."""
    sent: Counter[tuple[str, str]] = Counter()
    for msg in cluster.net.messages("REPLICATE", dst=dst):
        for record in msg.body.get("tasks") or ():
            sent[(msg.src, record["id"])] += 1
    return sent


def _kept_by_non_holders(cluster) -> list[tuple[str, str]]:
    return [(n, t.id) for n in OLD for t in cluster[n].engine.table.live.values() if n not in t.holders]


def test_a_new_holder_answering_past_the_deadline_is_sent_each_copy_once(inproc):
    """Fault: every REPLICATE reaches the joining node 6 s late (it is busy
    installing the handoffs of several senders), so each answer comes after
    the 5 s HANDOFF_CONFIRM_TIMEOUT. The answer was dropped (no request
    waited for it any more): nothing was ever confirmed, the whole share was
    sent again every 5 s for ever (~3,450 records every 10 s for 1,500
    tasks), and the old holders never dropped their copies. A late answer
    now confirms what it lists, and nothing is sent again to a holder while
    its earlier chunks are unanswered: each copy goes once, and every old
    holder that is no longer a holder drops its copy."""
    cluster = inproc(4, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 150)
    slow = cluster.net.delay(HANDOFF_CONFIRM_TIMEOUT + 1.0, kind="REPLICATE", dst="n4")
    cluster.publish(ALL)
    moved = [t for t in tids if "n4" in cluster.holders(t)]
    assert moved, "some tasks must move to the joining node"
    cluster.wait_until(lambda: slow.hits, what="the first handoff to the joining node")
    for _ in range(6):      # a minute, ten seconds at a time
        cluster.advance(10.0, step=1.0)
        cluster.settle(0.1)
    cluster.wait_until(lambda: cluster.net.quiet(), what="the wire quiet")
    sent = _sends_to(cluster, "n4")
    assert sent and max(sent.values()) == 1, Counter(sent.values())
    assert {t for _, t in sent} == set(moved)
    assert all(cluster["n4"].task(t) is not None for t in moved)
    assert {n: len(cluster[n].role.handoff.leaving) for n in OLD} == {n: 0 for n in OLD}
    assert _kept_by_non_holders(cluster) == []
    assert sum(cluster[n].role.handoff.late_confirmed for n in OLD) >= len(moved)
    assert not cluster.crashes()


def test_a_new_holder_that_never_answers_is_sent_copies_ever_less_often(inproc):
    """Fault: every handoff REPLICATE to the joining node is lost (its
    process is stuck; the connection stays up). Every unconfirmed copy was
    sent again every 5 s: 60 times in 5 minutes. Resends to a holder whose
    chunks time out now wait twice as long each time, up to
    HANDOFF_RETRY_MAX; once its answers come, the handoff completes."""
    cluster = inproc(4, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 60)
    lost = cluster.net.drop("REPLICATE", dst="n4", where=lambda m: bool(m.body.get("tasks")))
    cluster.publish(ALL)
    moved = [t for t in tids if "n4" in cluster.holders(t)]
    cluster.wait_until(lambda: lost.hits, what="the first handoff to the joining node")
    minutes = 5
    for _ in range(minutes * 6):    # in the default jumps (1.6 s): a resend's time is not the point
        cluster.advance(10.0)
    sent = _sends_to(cluster, "n4")
    most = max(sent.values())
    # Sent at 0, 15, 40, 85, 170 and 255 s: six times (every 5 s made it 60).
    assert most <= 8 < minutes * 60 / HANDOFF_RETRY, Counter(sent.values())
    assert {n: len(cluster[n].role.handoff.leaving) for n in OLD} != {n: 0 for n in OLD}

    lost.remove()
    cluster.advance(HANDOFF_RETRY_MAX + HANDOFF_CONFIRM_TIMEOUT + HANDOFF_RETRY)
    cluster.wait_until(lambda: all(not cluster[n].role.handoff.leaving for n in OLD),
                       what="every copy confirmed once the holder answers")
    assert all(cluster["n4"].task(t) is not None for t in moved)
    assert _kept_by_non_holders(cluster) == []
    assert not cluster.crashes()


class _Link(PeerRequests):
    """A peer link whose requests go nowhere: the test answers them."""

    def _send_request(self, node_id, frames):
        return True


class _Supervisor:
    def spawn(self, *a, **k):
        raise AssertionError("nothing is spawned")

    def report(self, what, exc):
        raise exc


def _answer(link: _Link, req: int, **body) -> None:
    link._handle_answer(codec.encode(ANSWER, {"req": req, **body}))


def test_a_late_answer_is_handed_over_within_its_window_and_forgotten_after(monkeypatch):
    """Fault: an answer that comes after its request's deadline. It was
    always dropped; a request sent with ``late`` now has it handed to that
    handler (not to the callback, which had its None), for
    LATE_ANSWER_WINDOW past the deadline; no more than MAX_LATE_ANSWERS
    such requests are remembered, the oldest forgotten first. Requests
    without ``late``, and error answers, are dropped as before."""
    monkeypatch.setattr(peer_requests_module, "MAX_LATE_ANSWERS", 3)
    link = _Link(_Supervisor(), "n0", 1 << 20)
    called: list = []
    late: list = []
    reqs = []
    for _ in range(5):
        body: dict = {"tasks": []}
        link.request("p1", REPLICATE, body, 1.0, called.append, late=late.append)
        reqs.append(body["req"])
    query: dict = {"ids": []}
    link.request("p1", QUERY, query, 1.0, called.append)
    query_req = query["req"]
    now = peer_requests_module.monotonic()
    link._expire(now + 2.0)
    assert called == [None] * 6 and link.awaiting_late() == 3      # the first two forgotten
    _answer(link, reqs[0], ids=["a"])
    _answer(link, query_req, states={})
    _answer(link, reqs[2], code="internal", message="no")
    assert late == []
    _answer(link, reqs[3], ids=["b"])
    assert [a["ids"] for a in late] == [["b"]] and len(called) == 6
    link._expire(now + 2.0 + LATE_ANSWER_WINDOW + 1.0)
    assert link.awaiting_late() == 0
    _answer(link, reqs[4], ids=["c"])
    assert len(late) == 1
    assert link.unanswered() == {}


@pytest.mark.parametrize("answer_first", [True, False])
def test_an_answer_in_time_goes_to_the_callback_only(answer_first):
    """An answer before the deadline goes to the callback, never to ``late``;
    the request is not kept past it."""
    link = _Link(_Supervisor(), "n0", 1 << 20)
    called: list = []
    late: list = []
    body: dict = {"tasks": []}
    link.request("p1", REPLICATE, body, 1.0, called.append, late=late.append)
    req = body["req"]
    now = peer_requests_module.monotonic()
    if answer_first:
        _answer(link, req, ids=["a"])
        link._expire(now + 2.0)
    else:
        link._expire(now + 0.5)
        _answer(link, req, ids=["a"])
    assert [a["ids"] for a in called] == [["a"]] and late == []
    assert link.awaiting_late() == 0
