"""A keyed submit on a restarted first holder whose knowledge of the key
lags, in process (miyaq.testing.inprocess).

Key K's holders are (h0, h1) on the ring of three nodes and (h1, h2) on
the ring without h0. h0 stops; the ring goes on without it, and task
``ida`` of K runs and finishes on h1 (its tombstone, with the key, on h1
and h2). h0 restarts from its log (seeing the ring without itself, it
reconciles with nobody to hold it back), the ring with h0 again reaches
the others and then h0: h0 is K's first holder once more -- but the old
holders' handoff of ``ida``'s outcome (REPLICATE ``stones``) has not
reached it yet (here held on the network; live, a send refused while the
link to the restarted node is not up, retried 0.5 s later, or a long
pass), and its resync from them brings only their newest
``RESYNC_STONES`` tombstones (5,000: 25 s of a node finishing 200 tasks a
second; here none, as for a task that ended longer ago). A second task
``idb`` of K then comes to h0, which has no record of the key.

Before 2026-12-07 h0 stored ``idb`` as rank 0 and ran it at once, as if
it were the key's only holder; h1 refused its copy as a duplicate of
``ida`` too late: the key's task ran twice (the rollkeys audit read it
in a live rolling restart's logs). Now a keyed copy of rank 0 on a node
that became a holder of its key by a ring change less than
``HANDOFF_SWEEP_AFTER_CHANGE`` ago asks the other members about its key
before it runs (docs/cluster.md, "Dedup by key while the ring changes")."""
from __future__ import annotations

import pytest

from miyaq.cluster.key_verdicts import held_elsewhere
from miyaq.constants import HANDOFF_SWEEP_AFTER_CHANGE
from miyaq.core.gate import RECONCILING
from miyaq.protocol.commands import ACCEPTED, DUPLICATE, REJECTED
from miyaq.runtime import monotonic, wall
from miyaq.store.table import TaskTable
from miyaq.store.task import Task

ALL = ["n1", "n2", "n3"]


def _key(cluster, larger_first: bool = False) -> tuple[str, str, str, str]:
    """A key whose holders are (h0, h1) on ALL and (h1, h2) without h0
    (``larger_first``: h0's node id larger than h1's). Returns (key, h0, h1, h2)."""
    for i in range(10_000):
        key = f"k{i}"
        h0, h1 = cluster.holders("x", key=key, replicas=2)
        if larger_first and h0 < h1:
            continue
        rest = [n for n in ALL if n != h0]
        if [m.node_id for m in cluster.script.view(rest).holders(key, 2)][0] == h1:
            h2 = next(n for n in ALL if n not in (h0, h1))
            return key, h0, h1, h2
    raise AssertionError("no such key in 10,000")


def _restarted_first_holder_without_the_keys_outcome(inproc, tmp_path, monkeypatch, larger_first=False, **settings):
    """``ida`` of K run and finished while h0 was down; h0 restarted and
    back on the ring with itself, every node on that ring, the old holders'
    handoff of ``ida``'s outcome to h0 held. Returns (cluster, key, h0, h1,
    h2, the held rule). h0, restarted outside the ring, reconciles until its
    ``reconcile_timeout``: 1 s here instead of the in-process cluster's 3 s,
    waited out for nothing."""
    monkeypatch.setattr("miyaq.cluster.sync.RESYNC_STONES", 0)     # ida is older than the resync's newest
    cluster = inproc(3, replicas=2, data_dir=str(tmp_path), fsync="never", reconcile_timeout=1.0, **settings)
    key, h0, h1, h2 = _key(cluster, larger_first)
    kept = cluster.submit(h0, cluster.task_led_by(h0, replicas=2), countdown=3600)
    cluster.wait_until(lambda: kept.result, what="a delayed task in h0's log")
    cluster.stop_node(h0)
    rest = [n for n in ALL if n != h0]
    cluster.publish(rest)
    worker = cluster.worker(h1)
    first = cluster.submit(h1, "ida", key=key)
    cluster.wait_until(lambda: first.result, what="ida answered")
    assert first.status == ACCEPTED, first.result
    cluster.wait_until(lambda: worker.runs("ida"), what="ida running on h1")
    worker.complete("ida", b"first")
    cluster.wait_until(lambda: all(cluster[n].tombstone("ida") is not None for n in rest), what="ida ended")
    back = cluster.start_node(h0)                     # sees the ring without itself
    cluster.wait_until(lambda: back.role.view.epoch == cluster.script.current.epoch
                       and not back.node.core.gate.holds(RECONCILING), what="h0 restarted and reconciled")
    outcomes = cluster.net.hold("REPLICATE", dst=h0, where=lambda m: bool(m.body.get("stones")))
    cluster.script.publish(ALL, withhold=[h0])        # the others have h0 back first
    epoch = cluster.script.current.epoch
    cluster.wait_until(lambda: all(cluster[n].role.view.epoch == epoch for n in rest), what="the others' ring")
    cluster.script.deliver(h0)
    cluster.wait_until(lambda: cluster.settled(epoch), what=f"every node on epoch {epoch}")
    assert back.tombstone("ida") is None, "the outcome's handoff has not reached h0"
    return cluster, key, h0, h1, h2, outcomes


@pytest.mark.parametrize("via", ["h0", "h2"], ids=["through-the-first-holder", "through-a-node-with-no-copy"])
def test_a_first_holder_new_to_a_key_asks_before_it_runs_a_task_of_it(inproc, tmp_path, monkeypatch, via):
    """Fault: the restarted first holder h0 lacks the outcome of ``ida``,
    the task holding K (its handoff held); ``idb`` of K comes through h0
    itself (a client with the ring sends a keyed task to its first holder)
    or through h2 (its REPLICATE to h0 and h1). Before, h0 ran ``idb`` at
    once: K's task ran twice. Now h0's copy asks first, h1 and h2 answer
    that ``ida`` holds K, and ``idb`` ends cancelled, a duplicate of
    ``ida``, without running; the client's resend of ``idb`` (its submit
    was rejected: h1 did not store it) is answered ``duplicate`` of
    ``ida``, through any node."""
    cluster, key, h0, h1, h2, outcomes = _restarted_first_holder_without_the_keys_outcome(inproc, tmp_path,
                                                                                               monkeypatch)
    workers = {n: cluster.worker(n) for n in ALL}
    coordinator = {"h0": h0, "h2": h2}[via]
    second = cluster.submit(coordinator, "idb", key=key)
    cluster.wait_until(lambda: second.result, what="idb answered")
    assert second.result[1] in (REJECTED, DUPLICATE), second.result
    cluster.wait_until(lambda: cluster[h0].state("idb") == "cancelled" or workers[h0].times("idb"),
                       what="h0's copy of idb ended or running")
    assert not workers[h0].times("idb"), "h0 ran K's second task at once"
    stone = cluster[h0].tombstone("idb")
    assert stone.error["held_by"] == "ida", stone.error
    outcomes.release()
    cluster.advance(3.0)             # past every copy's offset
    cluster.settle(0.2)
    assert not any(w.times("idb") for w in workers.values()), "K's second task must not run"
    for node in (h0, h1, h2):
        resend = cluster.submit(cluster[node].id, "idb", key=key, resent=True)
        cluster.wait_until(lambda: resend.result, what=f"the resend through {node} answered")
        assert resend.result == ["idb", DUPLICATE, "ida"], (node, resend.result)
    assert not cluster.crashes()


def test_a_task_of_a_key_no_one_holds_runs_on_the_new_first_holder_without_waiting_an_offset(inproc, tmp_path,
                                                                                             monkeypatch):
    """What must not change: a task of a key no other member holds, on the
    same restarted first holder, runs there once the others answered its
    key check -- not an offset later on the second holder (its standby
    copy waits for h0's). ``replica_offset`` is 30 s and the run comes
    within the wait's 10 s."""
    cluster, _key_k, h0, h1, _h2, outcomes = _restarted_first_holder_without_the_keys_outcome(
        inproc, tmp_path, monkeypatch, larger_first=True, replica_offset=30.0)
    other = next(f"j{i}" for i in range(10_000)
                 if cluster.holders("x", key=f"j{i}", replicas=2) == [h0, h1])
    workers = {n: cluster.worker(n) for n in ALL}
    cluster.advance(31.0)       # h1's standby copy may ask early when asked (StandbyChecker.asked_about)
    sub = cluster.submit(h0, "idc", key=other)
    cluster.wait_until(lambda: sub.result, what="idc answered")
    assert sub.status == ACCEPTED, sub.result
    cluster.wait_until(lambda: workers[h0].runs("idc"), what="idc running on h0")
    asked = [m for m in cluster.net.messages("QUERY", src=h0, task="idc")]
    assert asked and all(m.body.get("keys") == {"idc": other} for m in asked), asked
    cluster.settle(0.3)
    assert not workers[h1].times("idc"), "h1's standby copy must not run it too"
    outcomes.release()
    assert not cluster.crashes()


def test_a_first_holder_asks_about_no_key_once_the_ring_change_is_old(inproc):
    """The cost is bounded: a keyed task whose first holder has held its
    ring for longer than ``HANDOFF_SWEEP_AFTER_CHANGE`` runs at once, no
    QUERY asked."""
    cluster = inproc(3, replicas=2)
    h0, _h1 = cluster.holders("x", key="k1", replicas=2)
    worker = cluster.worker(h0)
    cluster.advance(HANDOFF_SWEEP_AFTER_CHANGE + 1)
    sub = cluster.submit(h0, "ida", key="k1")
    cluster.wait_until(lambda: sub.result and worker.runs("ida"), what="ida accepted and running")
    assert sub.status == ACCEPTED
    assert not cluster.net.messages("QUERY", src=h0, task="ida")
    assert not cluster.crashes()


def test_a_handed_off_task_of_the_key_wins_over_a_copy_still_asking_about_it(inproc, tmp_path, monkeypatch):
    """Fault: as above, but the key's first task ``ida`` still runs on h1
    when h0 comes back; the old holders' handoff of its copy (and their
    resync) reaches h0 after ``idb`` of K came there, while ``idb``'s copy
    asks about its key (the answers held). Before, h0 ran ``idb`` at once
    (see the first test), and with that fixed the handed-off copy of
    ``ida`` still met ``idb`` holding K: h0, K's first holder, ended
    ``ida`` as a duplicate, on every holder -- its run on h1 aborted, and
    ``idb`` ran. Now ``idb``'s copy, still asking, gives way: it ends a
    duplicate of ``ida``, which keeps running on h1."""
    monkeypatch.setattr("miyaq.cluster.sync.RESYNC_STONES", 0)
    cluster = inproc(3, replicas=2, data_dir=str(tmp_path), fsync="never", default_timeout=60.0,
                     reconcile_timeout=1.0)           # as above: h0's reconcile ends at its timeout
    key, h0, h1, _h2 = _key(cluster)
    kept = cluster.submit(h0, cluster.task_led_by(h0, replicas=2), countdown=3600)
    cluster.wait_until(lambda: kept.result, what="a delayed task in h0's log")
    cluster.stop_node(h0)
    rest = [n for n in ALL if n != h0]
    cluster.publish(rest)
    w1 = cluster.worker(h1)
    first = cluster.submit(h1, "ida", key=key)
    cluster.wait_until(lambda: first.result and w1.runs("ida"), what="ida accepted and running on h1")
    back = cluster.start_node(h0)
    cluster.wait_until(lambda: back.role.view.epoch == cluster.script.current.epoch
                       and not back.node.core.gate.holds(RECONCILING), what="h0 restarted and reconciled")
    handoff = cluster.net.hold("REPLICATE", dst=h0)
    resync = cluster.net.hold("ANSWER", dst=h0, answering="SYNC")
    cluster.script.publish(ALL, withhold=[h0])
    epoch = cluster.script.current.epoch
    cluster.wait_until(lambda: all(cluster[n].role.view.epoch == epoch for n in rest), what="the others' ring")
    cluster.script.deliver(h0)
    cluster.wait_until(lambda: back.role.view.epoch == epoch, what="h0's ring")
    w0 = cluster.worker(h0)
    answers = cluster.net.hold("ANSWER", dst=h0, answering="QUERY")
    second = cluster.submit(h0, "idb", key=key)
    cluster.wait_until(lambda: second.result and (answers.held or w0.runs("idb")),
                       what="idb answered, its key check asking")
    handoff.release()
    resync.release()
    cluster.wait_until(lambda: back.state("ida") is not None, what="ida's copy handed off to h0")
    answers.release()
    cluster.settle(0.3)
    assert not w0.times("idb"), "K's second task must not run"
    assert w1.runs("ida") and cluster[h1].state("ida") == "running", "ida must keep running"
    assert back.state("idb") == "cancelled" and back.tombstone("idb").error["held_by"] == "ida"
    assert not cluster.crashes()


def test_two_copies_asking_about_one_key_do_not_both_end():
    """Fault: two submits of one key through two nodes whose rings disagree,
    each node new to the key, each copy asking the other node about it
    (``held_elsewhere`` answers a QUERY's ``keys``). Without a rule each
    would answer that its own task holds the key and both copies would
    end, the key's task never run; a task still asking counts only if its
    id sorts first, so exactly one of the two ends. Also: a malformed key
    from a peer is ignored, and a key nobody holds, or held by the asked
    id itself, is no answer."""
    table = TaskTable(100, 3600.0, 10)
    table.add(Task("idy", "default", None, b"", key="K"))
    asking = {"idy"}
    assert held_elsewhere(table, "idx", "K", 0.0, 3600.0, asking) is None, "idy, asking, sorts after idx"
    answer = held_elsewhere(table, "idz", "K", 0.0, 3600.0, asking)
    assert answer is not None and answer[0] == "cancelled" and answer[2]["held_by"] == "idy", answer
    decided = held_elsewhere(table, "idx", "K", 0.0, 3600.0, ())
    assert decided is not None and decided[2]["held_by"] == "idy", "a task no longer asking holds the key"
    assert held_elsewhere(table, "idy", "K", 0.0, 3600.0) is None
    assert held_elsewhere(table, "idx", "other", 0.0, 3600.0) is None
    assert held_elsewhere(table, "idx", 7, 0.0, 3600.0) is None
    assert held_elsewhere(table, "idx", "K" * 300, 0.0, 3600.0) is None


def test_a_cancel_of_a_copy_asking_about_its_key_is_the_first_holders_word(inproc):
    """Fault: a delayed keyed task stored on its first holder in the first
    60 s of that node's ring (its copy asks about its key at the eta, a
    standby copy until then) is cancelled through its other holder, which
    asks the first holder. Before, the first holder said its copy was a
    standby one (``standby: true``), and the cancel was answered
    ``unconfirmed`` (a live rolling restart: 1 of 740 cancels,
    /tmp/keyed2/runs/f4-fix); the copy is the first holder's own, and the
    cancel is its word."""
    cluster = inproc(3, replicas=2)
    h0, h1 = cluster.holders("x", key="k1", replicas=2)
    sub = cluster.submit(h0, "ida", key="k1", countdown=3600)
    cluster.wait_until(lambda: sub.result, what="ida answered")
    assert sub.status == ACCEPTED
    assert "ida" in cluster[h0].role.standby.key_checks.ids, "a copy asking about its key at its eta"
    answers: list = []
    cluster[h1].role.cancel("ida", wall(), answers.append)
    cluster.wait_until(lambda: answers, what="the cancel answered")
    assert answers[0].get("cancelled") is True and not answers[0].get("unconfirmed"), answers[0]
    assert cluster[h0].state("ida") == "cancelled"
    assert not cluster.crashes()


def test_a_key_check_does_not_wait_for_a_node_that_left_the_ring(inproc):
    """Cost: a node that just left the ring (stopped: its link refuses
    sends) is asked by standby copies for ``DEPARTED_GRACE`` and is silent,
    a wait of ``QUERY_TIMEOUT`` (1 s) each. A key check does not ask it:
    its task is new (it runs nowhere else), and with two holders or more
    what the gone node knew of the key is on another old holder. Before,
    in live rolling restarts, the tasks of keys new to their first holder
    started 1.0-1.3 s late while a node restarted (p99 1.03-1.04 s against
    26-87 ms without the key check, /tmp/keyed2/runs)."""
    cluster = inproc(3, replicas=2)
    gone = "n3"
    key = next(f"j{i}" for i in range(10_000) if cluster.holders("x", key=f"j{i}", replicas=2)[0] == gone)
    cluster.stop_node(gone)
    cluster.publish([n for n in ALL if n != gone])
    h0 = cluster.holders("x", key=key, replicas=2)[0]
    assert cluster[h0].role.ring_follower.gained(key, 2, monotonic()), "a key new to its first holder"
    worker = cluster.worker(h0)
    sub = cluster.submit(h0, "ida", key=key)
    cluster.wait_until(lambda: sub.result and worker.runs("ida"), what="ida accepted and running")
    assert cluster.net.messages("QUERY", src=h0, task="ida"), "the key check asked the members"
    # A QUERY to the stopped node is refused at its send, and sent again until its deadline.
    assert cluster[h0].role.standby.queries_refused == 0, "the node that left is not asked"
    assert not cluster.crashes()
