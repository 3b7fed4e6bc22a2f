"""A keyed resubmit during a rolling restart, in process
(miyaq.testing.inprocess): a task with key K ran and finished on its two
holders (h0, h1); h0 stops, and the ring without it reaches h1, whose rank
for K is now 0, but not yet the node ``c`` a second task of K is submitted
through. ``c`` places it by its older ring: first holder h0 (stopped), then
h1. h1, the key's first holder by the newer ring, ends the copy as a
duplicate of the first task and says so (REPLICATE answer ``duplicates``).

Before 2026-12-06 ``c`` heard only that h1 did not store it: the submit was
rejected ``not_enough_replicas``, and the client's resend of the same id met
the id's tombstone (cancelled, a duplicate) and was answered ``duplicate``
of its own id -- to the client, ``accepted`` -- for a task that never runs:
its ``result()`` raised TaskCancelled instead of giving the first task's
result (/tmp/upgrade r1, r3: 12 and 10 keys in a rolling restart under
load, resubmitted 1.2 to 18.7 s after their first task finished). Now the
submit, and any resend of it, is answered ``duplicate`` of the first task
(docs/cluster.md, "Dedup by key")."""
from __future__ import annotations

import pytest

from miyaq.cluster.peer_requests import QUERY
from miyaq.core.gate import RECONCILING
from miyaq.core.replicas import key_winner
from miyaq.protocol.commands import ACCEPTED, DUPLICATE

ALL = ["n1", "n2", "n3", "n4"]


def _key(cluster, members: list[str]) -> tuple[str, str, str]:
    """A key of holders (h0, h1) on ``members`` whose first holder once h0
    left is h1. Returns (key, h0, h1)."""
    for i in range(10_000):
        key = f"k{i}"
        h0, h1 = cluster.holders("x", key=key, replicas=2)
        rest = [n for n in members if n != h0]
        if cluster.script.view(rest).holders(key, 2)[0].node_id == h1:
            return key, h0, h1
    raise AssertionError("no such key in 10,000")


def _first_ran_then_h0_stopped(inproc, nodes: int, tmp_path=None) -> tuple[object, str, str, str, str]:
    """``ida`` of key K submitted, run on h0 and finished; h0 stopped; the
    ring without h0 delivered to every node but ``c`` (a node other than h1
    that stays: a holder of K on the new ring with three nodes, not one with
    four). Returns (cluster, key, h0, h1, c)."""
    extra = {"data_dir": str(tmp_path), "fsync": "never"} if tmp_path is not None else {}
    cluster = inproc(nodes, replicas=2, **extra)
    members = ALL[:nodes]
    key, h0, h1 = _key(cluster, members)
    rest = [n for n in members if n != h0]
    c = next(n for n in rest if n != h1 and (nodes == 3 or n not in
                                              [m.node_id for m in cluster.script.view(rest).holders(key, 2)]))
    worker = cluster.worker(h0)
    first = cluster.submit(h0, "ida", key=key)
    cluster.wait_until(lambda: first.result, what="the first submit answered")
    assert first.status == ACCEPTED
    cluster.wait_until(lambda: worker.runs("ida"), what="ida running on h0")
    worker.complete("ida", b"first")
    cluster.wait_until(lambda: cluster[h1].tombstone("ida") is not None, what="h1 hears ida ended")
    cluster.stop_node(h0)
    cluster.script.publish(rest, withhold=[c])
    epoch = cluster.script.current.epoch
    cluster.wait_until(lambda: all(cluster[n].role.view.epoch == epoch for n in rest if n != c),
                       what="the ring without h0 everywhere but c")
    assert cluster[c].role.view.epoch < epoch
    return cluster, key, h0, h1, c


@pytest.mark.parametrize("nodes", [3, 4], ids=["c-a-holder-on-the-new-ring", "c-no-holder-on-the-new-ring"])
def test_a_coordinator_whose_ring_lags_answers_duplicate_as_the_newer_rings_first_holder_says(inproc, nodes):
    """Fault: the coordinator's ring lags the key's holders' (a rolling
    restart: one node stopped, the ring without it not yet there); the key's
    first holder by the newer ring ends the copy as a duplicate. Before, the
    submit was rejected ``not_enough_replicas`` (the client resent it: see
    the next test); now it is answered ``duplicate`` of the task that holds
    the key, and nothing of the second task runs."""
    cluster, key, _h0, h1, c = _first_ran_then_h0_stopped(inproc, nodes)
    workers = {n: cluster.worker(n) for n in cluster.nodes}
    second = cluster.submit(c, "idb", key=key)
    cluster.wait_until(lambda: second.result, what="the second submit answered")
    assert second.result == ["idb", DUPLICATE, "ida"], second.result
    cluster.script.deliver(c)
    cluster.advance(3.0)             # past every copy's offset
    cluster.settle(0.2)
    assert not any(w.times("idb") for w in workers.values())
    stone = cluster[h1].tombstone("idb")
    assert stone is not None and stone.state == "cancelled" and stone.error["held_by"] == "ida"
    assert not cluster.crashes()


@pytest.mark.parametrize("nodes", [3, 4], ids=["three-nodes", "four-nodes"])
def test_a_resend_of_an_id_ended_as_a_duplicate_is_answered_with_the_task_holding_the_key(inproc, nodes):
    """Fault: the client resends a keyed submit (same id, ``resent``) that
    was rejected while its copy ended as a duplicate on the key's first
    holder -- through every node that stays: the first holder (its own
    tombstone), the other holder (the first holder's F event made one),
    and, with four nodes, one that holds no copy (the holders' REPLICATE
    answers ``finished``). Before, every one answered ``duplicate`` of the
    resent id itself (``accepted`` to the client, whose ``result()`` then
    raised TaskCancelled); now ``duplicate`` of the task holding the key."""
    cluster, key, h0, _h1, c = _first_ran_then_h0_stopped(inproc, nodes)
    # The submit, as the old coordinator handled it: rejected, the copy ended.
    cluster.net.drop("ANSWER", dst=c, answering="REPLICATE")
    second = cluster.submit(c, "idb", key=key)
    cluster.wait_until(lambda: second.result, what="the second submit answered")
    assert second.status == "rejected"
    cluster.net.clear()
    cluster.script.deliver(c)
    cluster.wait_until(lambda: cluster.settled(cluster.script.current.epoch), what="every node on the new ring")
    for via in sorted(cluster.nodes):
        resend = cluster.submit(via, "idb", key=key, resent=True)
        cluster.wait_until(lambda: resend.result, what=f"the resend through {via} answered")
        assert resend.result == ["idb", DUPLICATE, "ida"], (via, resend.result)
    assert not cluster.crashes()


def test_the_task_holding_the_key_survives_the_first_holders_restart(inproc, tmp_path):
    """The name of the task holding the key is part of the ended copy's
    error, so it is in the log: the key's first holder, restarted from its
    log, still answers a resend with it (once it reconciled: until then it
    coordinates no submit, docs/cluster.md)."""
    cluster, key, _h0, h1, c = _first_ran_then_h0_stopped(inproc, 3, tmp_path)
    second = cluster.submit(c, "idb", key=key)
    cluster.wait_until(lambda: second.result, what="the second submit answered")
    cluster.script.deliver(c)
    cluster.stop_node(h1)
    back = cluster.start_node(h1)
    cluster.wait_until(lambda: back.tombstone("idb") is not None, what="h1 replayed its log")
    assert key_winner("idb", back.tombstone("idb").error) == "ida", "the log names the task holding the key"
    cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="h1's reconcile to end")
    resend = cluster.submit(h1, "idb", key=key, resent=True)
    cluster.wait_until(lambda: resend.result, what="the resend answered")
    assert resend.result == ["idb", DUPLICATE, "ida"], resend.result


def test_a_keyed_duplicate_whose_second_holder_answers_first_is_answered_duplicate(inproc):
    """Fault: no ring change; a second task of a key is submitted through a
    node that holds no copy of it (a client without the ring yet sends round
    robin), and the key's second holder answers before the first: it did not
    store the copy (the key is held there), and with ``min_acks`` all that
    alone left too few holders. Before, the submit was rejected at once,
    before the first holder's ``duplicates`` came, and the client's resend
    was answered ``duplicate`` of its own id (``accepted``: /tmp/rollkeys
    a2-dev, k-A-1 and k-C-28, each in a producer's first second). Now a
    keyed submit waits for the key's first holder's answer before a later
    holder's refusal rejects it: ``duplicate`` of the task holding the key."""
    cluster = inproc(3, replicas=2)
    key = "k1"
    h0, h1 = cluster.holders("x", key=key, replicas=2)
    c = next(n for n in cluster.ids if n not in (h0, h1))
    worker = cluster.worker(h0)
    first = cluster.submit(h0, "ida", key=key)
    cluster.wait_until(lambda: first.result, what="the first submit answered")
    cluster.wait_until(lambda: worker.runs("ida"), what="ida running")
    worker.complete("ida", b"first")
    cluster.wait_until(lambda: cluster[h1].tombstone("ida") is not None, what="h1 hears ida ended")
    cluster.net.delay(0.3, "ANSWER", src=h0, dst=c, answering="REPLICATE")
    second = cluster.submit(c, "idb", key=key)
    cluster.wait_until(lambda: second.result, what="the second submit answered")
    assert second.result == ["idb", DUPLICATE, "ida"], second.result
    assert not cluster.crashes()


@pytest.mark.parametrize("first", ["stores", "unreachable", "silent"])
def test_a_keyed_submit_refused_by_a_later_holder_is_rejected_once_the_first_holder_answered(inproc, first):
    """What must not change: a keyed submit that a later holder refuses for
    another reason (full here) is still rejected ``not_enough_replicas`` --
    once the key's first holder stored it, or at once when the first holder
    is out of reach (stopped, the ring still listing it): not at the
    deadline (``replication_timeout`` 30 s, the answer within 10); with the
    first holder silent, at the deadline (1 s)."""
    cluster = inproc(3, replicas=2, replication_timeout=1.0 if first == "silent" else 30.0)
    key = "k1"
    h0, h1 = cluster.holders("x", key=key, replicas=2)
    c = next(n for n in cluster.ids if n not in (h0, h1))
    cluster[h1].engine.config.max_tasks = 0          # h1 refuses every copy: full
    if first == "stores":
        cluster.net.delay(0.3, "ANSWER", src=h0, dst=c, answering="REPLICATE")
    elif first == "unreachable":
        cluster.stop_node(h0)
        cluster.wait_until(lambda: not cluster[c].role.peer.request(h0, QUERY, {"ids": []}, 1.0, lambda a: None),
                           what=f"{h0} out of reach from {c}")
    else:
        cluster.net.drop("ANSWER", src=h0, dst=c, answering="REPLICATE")
    sub = cluster.submit(c, "ida", key=key)
    cluster.wait_until(lambda: sub.result, timeout=10, what="the submit answered")
    assert sub.status == "rejected" and sub.error_code == "not_enough_replicas", sub.result
    if first != "silent":
        assert f"{h1} did not store it" in sub.result[2]["message"], sub.result
    assert not cluster.crashes()
