"""Handoff, in-process (miyaq.testing.inprocess): after a ring change every
task returns to N copies on its new holders, and no copy is dropped on the
word of a node whose view of the ring lags."""
from __future__ import annotations

from typing import Any

import pytest

from miyaq.cluster import handoff as handoff_pass
from miyaq.cluster import handoff_slices as handoff_module
from miyaq.cluster import sync as sync_module
from miyaq.cluster.handoff import Handoff
from miyaq.cluster.peer_requests import QUERY
from miyaq.constants import HANDOFF_CONFIRM_TIMEOUT, HANDOFF_LAG_RETRY, HANDOFF_RETRY, QUERY_TIMEOUT
from miyaq.runtime import green, monotonic
from miyaq.runtime import wall
from miyaq.store.task import DEAD, DONE, SCHEDULED

OLD = ["n1", "n2", "n3"]
ALL = ["n1", "n2", "n3", "n4"]


def _submit_many(cluster, count: int, countdown: float = 300) -> list[str]:
    subs = cluster.accepted([cluster.submit(OLD[i % 3], countdown=countdown) for i in range(count)])
    return [s.task_id for s in subs]


def _copies(cluster, tid: str) -> list[str]:
    return sorted(n for n, h in cluster.nodes.items() if h.task(tid) is not None)


def _ring_reaches_the_joining_node_last(cluster) -> tuple[list[str], int, list[str]]:
    """30 tasks on OLD, then ALL published to every node but n4 (the joining
    one), and the old nodes on it: (task ids, the new epoch, the ids that
    move to n4)."""
    tids = _submit_many(cluster, 30)
    epoch = cluster.publish(ALL, withhold=["n4"])
    moved = [t for t in tids if "n4" in cluster.holders(t)]
    assert moved, "some tasks must move to the joining node"
    cluster.wait_until(lambda: all(cluster[n].role.view.epoch == epoch for n in OLD), what="the old nodes on the ring")
    return tids, epoch, moved


def _running(cluster) -> tuple[str, str, str, Any]:
    """A task with two holders, accepted and running on the first for a test
    worker: (task id, runner, other holder, worker)."""
    tid = cluster.task_id()
    runner, other = cluster.holders(tid)
    worker = cluster.worker(runner)
    cluster.accepted([cluster.submit(runner, tid, timeout=60)])
    cluster.wait_until(lambda: worker.runs(tid), what="the task running")
    return tid, runner, other, worker


def test_handoff_racing_a_ring_change_keeps_copies_until_the_new_holder_has_the_ring(inproc):
    """Fault: a node joins and the new ring reaches the old holders before it
    reaches the joining node. The old holders hand tasks to it at once; it
    refuses them (by its own, older ring it holds nothing). No old holder
    drops a copy meanwhile. Once the joining node has the ring, the next
    retry is confirmed, the old holders that are no longer holders drop
    their copies, and every task is on exactly its new holders."""
    cluster = inproc(4, ring=OLD, replicas=2)
    tids, epoch, moved = _ring_reaches_the_joining_node_last(cluster)
    cluster.wait_until(lambda: cluster.net.messages("ANSWER", src="n4", answering="REPLICATE"),
                       what="the joining node's first refusal")
    cluster.settle(0.1)
    for tid in moved:
        assert len(_copies(cluster, tid)) == 2 and "n4" not in _copies(cluster, tid), tid
    refused = cluster.net.messages("ANSWER", src="n4", answering="REPLICATE")
    assert all(not m.body.get("ids") for m in refused)

    cluster.script.deliver("n4")
    cluster.wait_until(lambda: cluster.settled(epoch), what="the joining node on the ring")
    cluster.advance(HANDOFF_RETRY + 1.0)
    for tid in tids:
        cluster.wait_until(lambda tid=tid: _copies(cluster, tid) == sorted(cluster.holders(tid)),
                           what=f"{tid} on exactly its new holders")
        for node_id in cluster.holders(tid):
            assert cluster[node_id].task(tid).holders == tuple(cluster.holders(tid))
    assert all(cluster[n].role.handoff.pending() == 0 for n in ALL)
    assert not cluster.crashes()


def test_handoff_in_flight_when_the_ring_changes_again(inproc):
    """Fault: a node joins, the old holders' handoff to it is held on the
    wire, and the ring changes again (the node leaves) before it arrives.
    When the held copies arrive the node refuses them; the old holders, holders
    again, keep their copies, stop sending to the node that left, and every
    task still runs once."""
    cluster = inproc(4, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 30, countdown=2 * HANDOFF_RETRY + 5)
    held = cluster.net.hold("REPLICATE", dst="n4")
    cluster.publish(ALL)
    moved = [t for t in tids if "n4" in cluster.holders(t)]
    cluster.wait_until(lambda: held.held, what="a handoff to the joining node")
    back = cluster.publish(OLD)
    held.release()
    cluster.advance(2 * HANDOFF_RETRY)
    for tid in tids:
        cluster.wait_until(lambda tid=tid: _copies(cluster, tid) == sorted(cluster.holders(tid)),
                           what=f"{tid} back on its holders of epoch {back}")
    assert moved and all(cluster["n4"].task(t) is None for t in moved)
    assert all(cluster[n].role.handoff.pending() == 0 for n in OLD), \
        {n: dict(cluster[n].role.handoff.leaving) for n in OLD}

    workers = {n: cluster.worker(n) for n in OLD}
    due = max(cluster[cluster.holders(t)[0]].task(t).eta for t in tids)
    cluster.advance(due - wall() + 0.1)      # every task is due; none runs past its lease
    cluster.wait_until(lambda: sum(len(w.running) for w in workers.values()) == len(tids), what="every task running")
    for w in workers.values():
        for tid in list(w.running):
            w.complete(tid)
    cluster.wait_until(lambda: all(cluster[h].state(t) == DONE for t in tids for h in cluster.holders(t)),
                       what="every task done on its holders")
    assert sum(len(w.delivered) for w in workers.values()) == len(tids) and not cluster.crashes()


def test_a_task_a_new_holder_already_finished_is_finished_on_every_new_holder(inproc):
    """Fault: a holder misses a task's FINISHED event (it was down; here its
    stream from the runner is cut), then the ring changes and it is no
    longer a holder. It hands its copy to the new holders, and the runner,
    one of them, answers that the task is over. The leaving holder finishes
    its copy (a tombstone, not a dropped copy) and tells the other new
    holder, which stored a live copy from this same handoff: unfinished, that
    copy ran when the runner was down as it asked (a chaos run of kills
    found three such runs). Standby copies wait an hour here: none asks on its own."""
    cluster = inproc(3, ring=OLD, replicas=2, replica_offset=3600.0)
    tid = next(t for t in (cluster.task_id() for _ in range(1000)) if cluster.holders(t) == ["n1", "n2"])
    missed = cluster.net.drop("EVENTS", src="n1", dst="n2")
    cluster.submit_accepted("n1", tid)
    worker = cluster.worker("n1")
    cluster.wait_until(lambda: worker.runs(tid), what="the task running on n1")
    worker.complete(tid)
    cluster.wait_until(lambda: cluster["n1"].tombstone(tid) is not None, what="the task done on n1")
    cluster.settle(0.1)
    missed.remove()
    assert cluster["n2"].task(tid) is not None, "n2 must have missed the end"

    cluster.publish(["n1", "n3"])                 # n2 leaves the ring: it hands its copy off
    cluster.wait_until(lambda: cluster["n2"].task(tid) is None and cluster["n3"].tombstone(tid) is not None,
                       what="the task finished on n2 and on the new holder n3")
    assert cluster["n3"].task(tid) is None
    assert cluster["n3"].tombstone(tid).state == DONE and cluster["n2"].tombstone(tid).state == DONE
    assert worker.times(tid) == 1 and not cluster.crashes()


def test_a_task_dead_lettered_before_its_handed_off_copy_arrived_stays_dead_there(inproc, monkeypatch):
    """Fault: a ring change moves a running task's second copy to a joining
    node, and the handoffs to it are held on the wire. Meanwhile the task
    fails for good on its runner (``Reject``): the runner dead-letters it and
    its DEAD event reaches the joining node before any copy does. When the
    copies arrive, the joining node's copy must be dead too: before, it came
    back live as a standby and, once the runner was gone (a chaos kill run
    killed it 2.5 s later), ran the rejected task again. Standby copies wait
    an hour here: none asks on its own. n4's resync (its SYNC's answer held)
    fails at its timeout before the new ring is settled: 1 s here instead of
    ``RESYNC_TIMEOUT``'s 5 s, waited out for nothing."""
    monkeypatch.setattr(sync_module, "RESYNC_TIMEOUT", 1.0)
    cluster = inproc(4, ring=OLD, replicas=2, replica_offset=3600.0)
    for tid in (cluster.task_id() for _ in range(5000)):
        old = cluster.holders(tid)
        new = [m.node_id for m in cluster.script.view(ALL).holders(tid, 2)]
        if "n4" in new and old[0] in new and old[1] not in new:
            break
    runner = old[0]
    worker = cluster.worker(runner)
    cluster.accepted([cluster.submit(runner, tid, timeout=60)])
    cluster.wait_until(lambda: worker.runs(tid), what="the task running")
    held = cluster.net.hold("REPLICATE", dst="n4")
    synced = cluster.net.hold("ANSWER", dst="n4", answering="SYNC")   # the copies a resync would bring too
    epoch = cluster.publish(ALL)
    cluster.wait_until(lambda: cluster.settled(epoch) and held.held and synced.held, what="the handoffs to n4 held")

    worker.fail(tid, {"type": "Reject", "message": "never again"}, retry=False)
    cluster.wait_until(lambda: any(m.fate == "delivered" for m in
                                   cluster.net.messages("EVENTS", src=runner, dst="n4", event="D")),
                       what="the DEAD event delivered to n4")
    assert cluster["n4"].task(tid) is None, "the DEAD event must come before the copy"
    held.release()
    synced.release()
    cluster.wait_until(lambda: cluster["n4"].state(tid) is not None, what="n4's copy installed")

    assert cluster["n4"].state(tid) == DEAD and cluster[runner].state(tid) == DEAD
    assert tid not in cluster["n4"].role.events.early      # applied when the copy came, not left waiting
    cluster.stop_node(runner)
    assert cluster["n4"].task(tid).error["type"] == "Reject"
    assert worker.times(tid) == 1 and not cluster.crashes()


def test_a_copy_that_missed_the_dead_event_is_dead_lettered_by_the_handoff(inproc):
    """Fault: a task fails for good on its runner, and the DEAD event to the
    other holder is lost; then the runner leaves the ring. Its handoff
    carries the dead copy to the new holders: the one that had no copy
    stores it dead, and the holder whose copy still waits dead-letters it
    too. Before, a copy already there was left waiting -- and ran the
    rejected task once no other holder answered (a chaos kill run, after a
    node rejoined the ring). Standby copies wait an hour here."""
    cluster = inproc(3, ring=OLD, replicas=2, replica_offset=3600.0)
    tid, runner, other, worker = _running(cluster)
    cluster.wait_until(lambda: cluster[other].task(tid).lessees, what="the STARTED event at the other holder")
    lost = cluster.net.drop("EVENTS", src=runner, dst=other, event="D")

    worker.fail(tid, {"type": "Reject", "message": "never again"}, retry=False)
    cluster.wait_until(lambda: cluster.net.messages("EVENTS", src=runner, dst=other, event="D"),
                       what="the DEAD event lost")
    lost.remove()
    assert cluster[runner].state(tid) == DEAD and cluster[other].state(tid) == SCHEDULED

    rest = [n for n in OLD if n != runner]
    cluster.publish(rest)            # the runner leaves: it hands its (dead) copy to the new holders
    third = next(n for n in rest if n != other)
    cluster.wait_until(lambda: cluster[third].state(tid) == DEAD, what="the dead copy on the new holder")
    cluster.wait_until(lambda: cluster[other].state(tid) == DEAD, what="the waiting copy dead-lettered")
    assert cluster[other].task(tid).error["type"] == "Reject"
    assert worker.times(tid) == 1 and not cluster.crashes()


def test_a_dead_copy_handed_off_survives_its_new_holders_restart(inproc, tmp_path):
    """Fault: a dead-lettered task is handed off (its runner leaves the
    ring) to a new holder, the leaving node drops its copy once the new
    holders confirmed it, and the new holder then restarts from its log.
    The dead copy must still be there: before, a handed-off dead copy was
    kept in memory only, and a chaos kill run lost 140 of its 1,600
    rejected tasks -- every holder had restarted after taking them."""
    cluster = inproc(3, ring=OLD, replicas=2, data_dir=str(tmp_path), fsync="always")
    tid, runner, other, worker = _running(cluster)
    worker.fail(tid, {"type": "Reject", "message": "never again"}, retry=False)
    cluster.wait_until(lambda: cluster[other].state(tid) == DEAD, what="the task dead on both holders")

    rest = [n for n in OLD if n != runner]
    cluster.publish(rest)
    third = next(n for n in rest if n != other)
    cluster.wait_until(lambda: cluster[third].state(tid) == DEAD and cluster[runner].task(tid) is None,
                       what="the dead copy handed to the new holder, and dropped by the runner")
    cluster.stop_node(third)
    back = cluster.start_node(third)
    assert back.state(tid) == DEAD and back.task(tid).error["type"] == "Reject"
    assert back.task(tid).attempt == 1 and not cluster.crashes()


def test_a_copy_handed_off_while_the_task_runs_knows_whom_the_attempt_was_leased_to(inproc):
    """Fault: the runner leaves the ring while its worker runs a task, and
    hands its copy to the new holder; then the runner's node dies. The
    worker reports its DONE to the new holder (a worker whose node was lost
    does): the handed-off record named the lessee, so the DONE is taken.
    Before, the new holder had never heard who ran the attempt, refused the
    DONE and ran the task again (a chaos kill run: a node that had just
    rejoined the ring)."""
    cluster = inproc(3, ring=OLD, replicas=2, replica_offset=3600.0)
    tid, runner, other, worker = _running(cluster)
    attempt = worker.delivered[-1][1]

    rest = [n for n in OLD if n != runner]
    third = next(n for n in rest if n != other)
    cluster.publish(rest)            # the runner leaves: its copy goes to the new holder
    cluster.wait_until(lambda: cluster[third].task(tid) is not None, what="the copy on the new holder")
    assert cluster[third].task(tid).lessees == [(attempt, worker.principal)]
    cluster.stop_node(runner)

    assert worker.complete_at(cluster[third].node, tid, attempt)
    assert cluster[third].state(tid) == DONE
    cluster.wait_until(lambda: cluster[other].state(tid) == DONE, what="the other holder told")
    assert worker.times(tid) == 1 and not cluster.crashes()


@pytest.mark.parametrize("slice_size", [None, 3])
def test_copies_refused_on_an_older_ring_are_sent_again_soon_not_after_the_full_retry(inproc, monkeypatch,
                                                                                      slice_size):
    """Fault: the new ring reaches a joining node after the old holders, so
    it refuses their handoffs (by its older ring it holds nothing). Its
    answers name its older epoch: each sender plans the next try within
    HANDOFF_LAG_RETRY, not HANDOFF_RETRY, and once the joining node has
    the ring the copies land on the next try. Before, they waited the full
    5 s; a chaos run (a leader killed, the ring changed twice within a
    second) had a dead-lettered task known to one holder only for that
    long, and when that holder was killed too a late copy of the task ran
    again elsewhere. With slices of 3 tasks the refusals of the first
    slices come back while the pass is still under way: the end of the
    pass must not push the quick retry they asked for back to the full one."""
    if slice_size is not None:
        monkeypatch.setattr(handoff_module, "HANDOFF_SLICE", slice_size)
        # Each yield lets the wire deliver: answers to the first slices come back mid-pass.
        monkeypatch.setattr(handoff_module, "_let_others_run", lambda: green.sleep(0.02))
    cluster = inproc(4, ring=OLD, replicas=2)
    tids, epoch, moved = _ring_reaches_the_joining_node_last(cluster)
    senders = {m.src for m in cluster.net.messages("REPLICATE", dst="n4")}
    cluster.wait_until(lambda: {m.dst for m in cluster.net.messages("ANSWER", src="n4", answering="REPLICATE")
                                if m.fate == "delivered"} >= senders and cluster.net.quiet(),
                       what="every sender's refusal back")
    refused = cluster.net.messages("ANSWER", src="n4", answering="REPLICATE")
    assert all(not m.body.get("ids") and m.body.get("epoch") < epoch for m in refused)
    for node_id in senders:
        handoff = cluster[node_id].role.handoff
        assert handoff.pending() and handoff.next_retry <= monotonic() + HANDOFF_LAG_RETRY, node_id

    cluster.script.deliver("n4")
    cluster.wait_until(lambda: cluster.settled(epoch), what="the joining node on the ring")
    cluster.advance(HANDOFF_LAG_RETRY)
    for tid in moved:
        cluster.wait_until(lambda tid=tid: _copies(cluster, tid) == sorted(cluster.holders(tid)),
                           what=f"{tid} on exactly its new holders")
    # A copy can be placed before its sender has read the answer confirming it.
    cluster.wait_until(lambda: all(cluster[n].role.handoff.pending() == 0 for n in ALL),
                       what="every sender's handoff confirmed")
    assert not cluster.crashes()


@pytest.mark.parametrize("slice_size", [None, 3])
def test_copies_that_could_not_be_sent_to_a_joining_node_go_again_soon_not_after_a_timeout(inproc, monkeypatch,
                                                                                           slice_size):
    """Fault: the handoff pass that follows a node's joining sends before
    the old nodes' links to it are connected (their DEALERs are IMMEDIATE:
    until the handshake ends, a few ms after the ring change, a send fails
    at once). Every chunk to it fails to go. Once the links are up the
    copies land at the next quick retry (HANDOFF_LAG_RETRY), within a
    second. Before, a chunk that could not go counted as one that timed
    out: the next try waited the doubled 10 s, and a sweep pass at +10 s
    pushed it to +15 s (tests/test_whole_cluster_restart.py waited 15 s
    for "handed off by n0" in 4 of 6 runs). With slices of 3 tasks the
    failed sends' callbacks run while the pass is still under way: the
    pass must not push the quick retry back.

    While the links are down the quick retries go on every 0.5 s of real
    time, each failing again. The test assumes neither when they fall nor
    how many pass before the links come up: it looks at the senders, and
    brings the links up, at a moment none has a retry under way or a chunk
    on its way (it no longer assumes that none starts in the 0.1 s after
    their passes ended), and it lifts the limit of six quick retries per
    ring change (it no longer assumes the links come up within 3 s of real
    time; the ~1 s until every node hears the others' streams takes two.
    The limit has its own test:
    test_handoff_departed_holder.py::test_the_quick_retries_to_an_unreachable_joiner_are_used_once_per_ring_change)."""
    if slice_size is not None:
        monkeypatch.setattr(handoff_module, "HANDOFF_SLICE", slice_size)
        monkeypatch.setattr(handoff_module, "_let_others_run", lambda: green.sleep(0.02))
    monkeypatch.setattr(handoff_pass, "HANDOFF_LAG_RETRIES", 10**6)
    cluster = inproc(4, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 30)
    unlinked = {"n4"}
    failed: dict[str, int] = {}
    for node_id in OLD:
        link = cluster[node_id].role.peer
        send = link._send_request

        def not_connected_yet(dst: str, frames: list[bytes], send=send, src=node_id) -> bool:
            if dst in unlinked:
                failed[src] = failed.get(src, 0) + 1
                return False
            return send(dst, frames)
        monkeypatch.setattr(link, "_send_request", not_connected_yet)
    epoch = cluster.publish(ALL)
    moved = [t for t in tids if "n4" in cluster.holders(t)]
    assert moved, "some tasks must move to the joining node"
    cluster.wait_until(lambda: cluster.settled(epoch), what="every node on the new ring")
    senders = {n for n in OLD if any("n4" in cluster[n].role.handoff.leaving.get(t, ()) for t in moved)}
    assert senders, "some old node must hand tasks to the joining node"

    def between_tries() -> bool:
        # Every sender's pass over, its sends to the joining node failed, and
        # no retry under way nor a chunk on its way (its callback not run yet).
        return all(n in failed and not cluster[n].role.handoff.busy
                   and not cluster[n].role.handoff.retries["n4"].awaiting for n in senders)
    cluster.wait_until(between_tries, what="every sender between two tries, its sends to the joining node failed")
    # No yield from here to the links coming up: no retry starts meanwhile.
    for node_id in senders:
        handoff = cluster[node_id].role.handoff
        # A send that could not go did not double the wait, and a quick retry is planned.
        assert handoff.retries["n4"].wait == HANDOFF_RETRY, node_id
        assert handoff.next_retry <= monotonic() + HANDOFF_LAG_RETRY, node_id
    assert not cluster.net.messages("REPLICATE", dst="n4")
    unlinked.clear()        # the links are up

    _moved_within_a_quick_retry(cluster, moved)


def _moved_within_a_quick_retry(cluster: Any, moved: list[str]) -> None:
    """One quick retry later (``HANDOFF_LAG_RETRY``): every task in ``moved``
    is on exactly its new holders, every sender's handoff confirmed, and
    nothing crashed."""
    cluster.advance(HANDOFF_LAG_RETRY)
    for tid in moved:
        cluster.wait_until(lambda tid=tid: _copies(cluster, tid) == sorted(cluster.holders(tid)), timeout=3,
                           what=f"{tid} on exactly its new holders within a quick retry")
    cluster.wait_until(lambda: all(cluster[n].role.handoff.pending() == 0 for n in ALL), timeout=3,
                       what="every sender's handoff confirmed")
    assert not cluster.crashes()


@pytest.mark.parametrize("quick_retries", [None, 1])
def test_a_pass_whose_last_slices_send_the_joining_node_nothing_keeps_the_quick_retry_its_failed_sends_asked_for(
        inproc, monkeypatch, quick_retries):
    """Fault: the pass that follows a node's joining sends before the old
    nodes' links to it are connected; with slices of 3 tasks, the callbacks
    of the failed sends run while the pass is still under way and plan a
    quick retry (``Handoff._soon``: ``next_retry``, and the joining node's
    own ``not_before``). The last slices of each sender's pass hold only
    tasks the ring change did not move, so nothing sets the quick retry
    again after the pass: a pass that pushed it back (planning the next try
    ``HANDOFF_RETRY`` after its end, or starting the joining node's wait at
    its end) would leave the copies where they are for 5 s.
    (test_copies_that_could_not_be_sent_to_a_joining_node_go_again_soon_not_after_a_timeout
    could not tell: there the last slice's failed sends ask for the quick
    retry again once the pass ended.) The links come up when a sender's
    pass ends: the quick retry lands the copies.

    With the quick retries limited to one (``quick_retries``), the first
    failed chunk takes the last quick retry. Before 2026-12-07 the pass's
    later failed chunks then found them used up and took the joining node
    for one that is down: its ``not_before`` went to ``HANDOFF_RETRY`` after
    their failure, and the quick retry came and sent it nothing (with the
    usual six, the sixth was lost so whenever a round sent a holder more
    than one chunk)."""
    monkeypatch.setattr(handoff_module, "HANDOFF_SLICE", 3)
    monkeypatch.setattr(handoff_module, "_let_others_run", lambda: green.sleep(0.02))
    if quick_retries is not None:
        monkeypatch.setattr(handoff_pass, "HANDOFF_LAG_RETRIES", quick_retries)
    cluster = inproc(4, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 30)
    cluster.wait_until(lambda: all(_copies(cluster, t) == sorted(cluster.holders(t)) for t in tids),
                       what="every task on both its holders")
    joined = cluster.script.view(ALL)
    moved = [t for t in tids if "n4" in [m.node_id for m in joined.holders(t, 2)]]
    assert moved, "some tasks must move to the joining node"
    # Then, last in every old node's table, tasks the ring change leaves where they are.
    unmoved: list[str] = []
    for _ in range(1000):
        if all(sum(n in cluster.holders(t) for t in unmoved) >= 6 for n in OLD):
            break
        tid = cluster.task_id()
        if [m.node_id for m in joined.holders(tid, 2)] == cluster.holders(tid):
            unmoved.append(tid)
    cluster.accepted([cluster.submit(cluster.holders(t)[0], t, countdown=300) for t in unmoved])
    cluster.wait_until(lambda: all(_copies(cluster, t) == sorted(cluster.holders(t)) for t in unmoved),
                       what="the unmoved tasks on both their holders")
    for node_id in OLD:     # the unmoved tasks fill at least two slices at the end of each table
        assert set(list(cluster[node_id].engine.table.live)[-6:]) <= set(unmoved), node_id

    in_pass: set[str] = set()
    failed: dict[str, int] = {}
    after_pass: dict[str, dict[str, Any]] = {}
    for node_id in OLD:
        link = cluster[node_id].role.peer
        send = link._send_request

        def not_connected_yet(dst: str, frames: list[bytes], send=send, src=node_id) -> bool:
            if dst == "n4" and src in in_pass:
                failed[src] = failed.get(src, 0) + 1
                return False
            return send(dst, frames)
        monkeypatch.setattr(link, "_send_request", not_connected_yet)
        handoff = cluster[node_id].role.handoff
        run = handoff.run

        def first_pass_unlinked(run=run, handoff=handoff, src=node_id) -> int:
            # The links to the joining node are down for the sender's first pass only.
            first = src not in after_pass
            if first:
                in_pass.add(src)
            try:
                return run()
            finally:
                if first:
                    in_pass.discard(src)
                    retry = handoff.retries.get("n4")
                    after_pass[src] = {"next_retry": handoff.next_retry, "last_run": handoff.last_run,
                                       "not_before": retry and retry.not_before,
                                       "awaiting": retry and retry.awaiting, "failed": failed.get(src, 0)}
        monkeypatch.setattr(handoff, "run", first_pass_unlinked)

    epoch = cluster.publish(ALL)
    cluster.wait_until(lambda: set(after_pass) >= set(OLD), what="every old node's first pass over")
    senders = {n for n, seen in after_pass.items() if seen["failed"]}
    assert senders, "some old node must hand tasks to the joining node"
    for node_id in senders:
        seen = after_pass[node_id]
        # Every failed send's callback ran within the pass (none after it to plan the retry again) ...
        assert seen["awaiting"] == 0, (node_id, seen)
        # ... and the pass kept the quick retry they asked for, for the joining node too.
        assert seen["next_retry"] <= seen["last_run"] + HANDOFF_LAG_RETRY, (node_id, seen)
        assert seen["not_before"] <= seen["last_run"] + HANDOFF_LAG_RETRY, (node_id, seen)
    cluster.wait_until(lambda: cluster.settled(epoch), what="every node on the new ring")

    _moved_within_a_quick_retry(cluster, moved)


def test_a_resent_submit_stored_by_a_node_that_heard_the_dead_event_first_is_dead_there(inproc):
    """Fault: a task is dead-lettered on its runner while the ring change
    that made another node its second holder has not reached that node: the
    DEAD event arrives where no copy is (kept as an early event). The
    client's resend of the task (same id, ``resent``) then reaches that
    node once it has the new ring, and it stores its own copy as the
    coordinator. That copy is dead at once: the runner, the one holder that
    knew, is gone. Before, the coordinator's own copy ignored the early
    event, waited as a standby, asked the silent runner and ran the
    rejected task again (a chaos run: a node restarting after a leader
    kill, 2.7 s behind the ring)."""
    cluster = inproc(3, ring=["n1", "n2"], replicas=2)
    new_ring = ["n1", "n2", "n3"]
    for tid in (cluster.task_id() for _ in range(5000)):
        new = [m.node_id for m in cluster.script.view(new_ring).holders(tid, 2)]
        if new[1] == "n3":
            break
    runner = new[0]
    epoch = cluster.publish(new_ring, withhold=["n3"])
    cluster.wait_until(lambda: all(cluster[n].role.view.epoch == epoch for n in ("n1", "n2")),
                       what="n1 and n2 on the new ring")
    worker = cluster.worker(runner)
    cluster.submit(runner, tid, timeout=60)
    cluster.wait_until(lambda: worker.runs(tid), what="the runner to start the task")
    worker.fail(tid, {"type": "Reject", "message": "never again"}, retry=False)
    cluster.wait_until(lambda: tid in cluster["n3"].role.events.early, what="the DEAD event kept early on n3")
    assert cluster["n3"].task(tid) is None

    cluster.script.deliver("n3")
    cluster.wait_until(lambda: cluster.settled(epoch), what="n3 on the new ring")
    cluster.stop_node(runner)
    n3_worker = cluster.worker("n3")
    resent = cluster.submit("n3", tid, resent=True)
    cluster.wait_until(lambda: cluster["n3"].state(tid) is not None, what="n3's own copy stored")

    assert cluster["n3"].state(tid) == DEAD and cluster["n3"].task(tid).error["type"] == "Reject"
    cluster.advance(2.0 + 4 * cluster.settings["replica_offset"])    # past every standby's turn
    cluster.settle(0.2)
    assert n3_worker.times(tid) == 0 and cluster["n3"].state(tid) == DEAD
    assert resent.status is not None and not cluster.crashes()



def test_a_replicate_of_a_task_dead_lettered_here_is_answered_dead(inproc):
    """A client resends a task that was dead-lettered (``Reject``) on both
    its holders, through a node that holds no copy. Both holders answer its
    REPLICATE with the id stored *and* ``dead``: attempt and error, so a
    coordinator whose own copy missed the DEAD event learns it here."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    runner, other = cluster.holders(tid, 2)
    third = next(n for n in cluster.nodes if n not in (runner, other))
    worker = cluster.worker(runner)
    cluster.submit(runner, tid, timeout=60)
    cluster.wait_until(lambda: worker.runs(tid), what="the runner to start the task")
    worker.fail(tid, {"type": "Reject", "message": "never again"}, retry=False)
    cluster.wait_until(lambda: cluster[other].state(tid) == DEAD, what="dead on both holders")

    resent = cluster.submit(third, tid, resent=True)
    cluster.wait_until(lambda: resent.status is not None, what="the resend answered")
    for holder in (runner, other):
        answer = cluster.net.messages("ANSWER", src=holder, dst=third, answering="REPLICATE")[-1].body
        assert tid in answer["ids"] and answer["dead"][tid][1]["type"] == "Reject"
    assert cluster[runner].state(tid) == DEAD and cluster[other].state(tid) == DEAD and not cluster.crashes()


def test_a_waiting_copy_told_by_a_replicate_answer_that_the_task_is_dead_is_dead_lettered(inproc):
    """The sender's side: a holder whose copy waits hears, in the answer to
    its REPLICATE, that the other holder dead-lettered the task (the DEAD
    event never reached it). Its copy is dead-lettered at once, before it
    could ask that holder -- which may be gone by then. A malformed item is
    refused and counted, and changes nothing."""
    cluster = inproc(3, replicas=2, replica_offset=3600.0)
    tid = cluster.task_id()
    first, second = cluster.holders(tid, 2)
    cluster.submit_accepted(first, tid, countdown=600)
    copies = cluster[first].role.copies
    refusals = cluster[first].node.core.refusals
    before = refusals.total()

    error = {"type": "Reject", "message": "never again"}
    assert copies.dead_known(second, {tid: [2, error], "t-bad": "junk"}, {tid: (first, second), "t-bad": (first,)}) \
        == [tid]
    copy = cluster[first].task(tid)
    assert copy.state == DEAD and copy.attempt == 2 and copy.error == error
    assert refusals.total() == before + 1 and refusals.by_source().get("answer") == 1
    assert not cluster.crashes()


SMALL_SLICE = 10


def _watch_slices(monkeypatch, node_id: str, on_first: Any) -> list[tuple[str, Any]]:
    """Handoff passes look at SMALL_SLICE tasks at a time; every slice
    ``node_id`` works on is logged as ("slice", n), and ``on_first(log)``
    runs as its first slice begins."""
    monkeypatch.setattr(handoff_module, "HANDOFF_SLICE", SMALL_SLICE)
    log: list[tuple[str, Any]] = []
    real = Handoff._pass_slice

    def watched(self: Handoff, tasks: list[Any]) -> int:
        if self.role.node_id == node_id:
            if not any(kind == "slice" for kind, _ in log):
                on_first(log)
            log.append(("slice", len(tasks)))
        return real(self, tasks)
    monkeypatch.setattr(Handoff, "_pass_slice", watched)
    return log


def test_a_node_handing_off_many_tasks_answers_its_peers_between_slices(inproc, monkeypatch):
    """Fault: a node holds many tasks when the ring changes. Its pass over
    them took the hub for seconds with a large table (about 10-35 us a
    task), so it answered no QUERY meanwhile: a chaos run saw a peer's
    standby copies take over on that silence and run two tasks a second
    time. The pass now yields between slices: a QUERY sent as it begins is
    answered before it ends."""
    cluster = inproc(4, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 300)

    def ask_n1(log: list[tuple[str, Any]]) -> None:
        cluster["n2"].role.peer.request("n1", QUERY, {"ids": tids[:5]}, QUERY_TIMEOUT,
                                        lambda answer: log.append(("answer", answer)))
    log = _watch_slices(monkeypatch, "n1", ask_n1)
    cluster.publish(ALL)
    cluster.wait_until(lambda: any(kind == "answer" for kind, _ in log), what="n1's answer to the QUERY")
    cluster.wait_until(lambda: not cluster["n1"].role.handoff.busy and cluster["n1"].role.handoff.handed,
                       what="n1's handoff pass over")
    kinds = [kind for kind, _ in log]
    answer = log[kinds.index("answer")][1]
    assert answer is not None and set(answer["states"]) == set(tids[:5])
    slices = kinds.count("slice")
    assert slices > 10, "n1 must hold many slices' worth of tasks"
    assert kinds.index("answer") < len(kinds) - 1 - kinds[::-1].index("slice"), \
        "the QUERY must be answered while the pass is still under way"
    for tid in tids:
        cluster.wait_until(lambda tid=tid: _copies(cluster, tid) == sorted(cluster.holders(tid)),
                           what=f"{tid} on exactly its new holders")
    assert not cluster.crashes()


def test_a_task_cancelled_while_the_handoff_pass_yields_is_not_handed_off(inproc, monkeypatch):
    """Fault: a task is cancelled on a node while its handoff pass yields
    between slices, before the pass reached that task. The pass skips it:
    the new holder gets no copy of a task that is over."""
    cluster = inproc(4, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 300)
    cancelled: list[str] = []

    def cancel_a_later_one(log: list[tuple[str, Any]]) -> None:
        n1 = cluster["n1"]
        later = list(n1.engine.table.live)[SMALL_SLICE:]
        tid = next(t for t in later if "n4" in cluster.holders(t) and "n1" not in cluster.holders(t))
        assert n1.engine.cancel(tid, wall())[0]
        cancelled.append(tid)
    _watch_slices(monkeypatch, "n1", cancel_a_later_one)
    before = len(cluster.net.messages("REPLICATE", src="n1"))     # the submits' replication
    cluster.publish(ALL)
    cluster.wait_until(lambda: not cluster["n1"].role.handoff.busy and cluster["n1"].role.handoff.handed,
                       what="n1's handoff pass over")
    [tid] = cancelled
    handed = cluster.net.messages("REPLICATE", src="n1")[before:]
    sent = {r["id"] for m in handed for r in m.body.get("tasks", [])}
    assert tid not in sent and len(sent) > SMALL_SLICE
    assert cluster["n4"].task(tid) is None
    assert set(tids) & sent and not cluster.crashes()


def test_a_ring_change_during_a_handoff_pass_gets_a_pass_of_its_own_after_it(inproc, monkeypatch):
    """Fault: the ring changes again (the joining node leaves) while a node's
    handoff pass yields between slices. No second pass runs alongside the
    first; one more runs after it, by the newest ring, and every task ends
    on exactly its holders of that ring."""
    cluster = inproc(4, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 300)
    epochs: list[int] = []
    _watch_slices(monkeypatch, "n1", lambda log: epochs.append(cluster.script.publish(OLD).epoch))
    running = [0, 0, 0]        # on n1: passes under way, most at once, passes begun
    real_run = Handoff.run

    def counted(self: Handoff) -> int:
        if self.role.node_id != "n1":
            return real_run(self)
        running[0] += 1
        running[1] = max(running[:2])
        running[2] += 1
        try:
            return real_run(self)
        finally:
            running[0] -= 1
    monkeypatch.setattr(Handoff, "run", counted)
    cluster.script.publish(ALL)
    cluster.wait_until(lambda: epochs and cluster.settled(epochs[0]), what="every node on the ring without n4")
    cluster.wait_until(lambda: running[2] == 2 and not running[0], what="n1's second pass, after the first")
    cluster.advance(HANDOFF_RETRY + 1.0)
    for tid in tids:
        cluster.wait_until(lambda tid=tid: _copies(cluster, tid) == sorted(cluster.holders(tid)),
                           what=f"{tid} on exactly its holders of the newest ring")
        assert all(cluster[n].task(tid).holders == tuple(cluster.holders(tid)) for n in cluster.holders(tid))
    assert running[:2] == [0, 1] and not cluster.crashes()


def test_outcomes_of_tasks_that_ended_before_a_ring_change_reach_their_new_holders(inproc, monkeypatch):
    """Fault: a node was out of the ring (stopped, its session expired)
    while tasks were submitted and finished on the others; when it joins
    the ring it becomes a holder of some of them, but a finished task is a
    tombstone, not a copy, and the handoff carried only copies. Their
    outcome lived on fewer holders than N: a chaos run (--secure, seed
    1228670177) then wiped the one node that had 260 of them, and status
    and result of those tasks were gone. The old holders now send each such
    outcome to the new holders that lack it."""
    monkeypatch.setattr("miyaq.cluster.sync.RESYNC_STONES", 5)      # the newest 5: the rest ended too long ago
    cluster = inproc(4, ring=OLD, replicas=2)
    tids, workers = _all_done_on_the_old_ring(cluster)
    cluster.publish(ALL)
    moved = [t for t in tids if "n4" in cluster.holders(t)]
    assert moved, "some tasks must move to the joining node"
    cluster.wait_until(lambda: all(cluster["n4"].tombstone(t) is not None for t in moved),
                       what="the joining node keeps the outcome of every task it now holds")
    for tid in moved:
        stone = cluster["n4"].tombstone(tid)
        assert (stone.state, stone.result) == (DONE, tid.encode())
        assert cluster["n4"].task(tid) is None
    assert sum(w.times(t) for w in workers for t in tids) == len(tids) and not cluster.crashes()


def test_outcomes_a_new_holder_did_not_answer_for_are_sent_again(inproc, monkeypatch):
    """Fault: every REPLICATE carrying handed-off outcomes to the joining
    node is lost (no resync brings any: ``RESYNC_STONES`` is 0 here). The
    senders hear nothing within HANDOFF_CONFIRM_TIMEOUT and send those
    outcomes again at the next retry; the joining node keeps them then."""
    monkeypatch.setattr("miyaq.cluster.sync.RESYNC_STONES", 0)
    cluster = inproc(4, ring=OLD, replicas=2)
    tids, _ = _all_done_on_the_old_ring(cluster)
    lost = cluster.net.drop("REPLICATE", dst="n4", where=lambda m: "stones" in m.body)
    cluster.publish(ALL)
    moved = [t for t in tids if "n4" in cluster.holders(t)]
    cluster.wait_until(lambda: lost.hits and cluster.net.quiet(), what="the outcomes sent and lost")
    assert moved and all(cluster["n4"].tombstone(t) is None for t in moved)
    lost.remove()
    cluster.advance(HANDOFF_CONFIRM_TIMEOUT + HANDOFF_RETRY + 1)
    cluster.wait_until(lambda: all(cluster["n4"].tombstone(t) is not None for t in moved),
                       what="the outcomes sent again and kept")
    assert not cluster.crashes()


def _all_done_on_the_old_ring(cluster) -> tuple[list[str], list[Any]]:
    """30 tasks submitted on OLD and run to the end there, each with its id
    as its result: (task ids, the workers)."""
    tids = _submit_many(cluster, 30, countdown=0)
    workers = [cluster.worker(n) for n in OLD]

    def all_done() -> bool:
        for w in workers:
            for tid in list(w.running):
                w.complete(tid, result=tid.encode())
        return all(cluster[h].tombstone(t) is not None for t in tids for h in cluster.holders(t))

    cluster.wait_until(all_done, what="every task done on its holders")
    return tids, workers


def test_a_retry_that_skipped_a_holder_with_a_chunk_on_its_way_comes_when_that_chunk_is_answered(inproc):
    """Fault simulated (the flaky failure of the test above, 3-4 runs in 30
    alone): a retry round finds the new holder with a chunk still on its way
    -- sent as the link came up, while the chunks before it could not go and
    asked for a quick retry -- so the holder is not due; the round planned
    the next retry a whole ``HANDOFF_RETRY`` later, and the copies that
    could not go waited for it. Once that chunk is answered, what the holder
    still owes is due at its own time."""
    cluster = inproc(2, ring=["n1", "n2"], replicas=2)
    handoff = cluster["n1"].role.handoff
    now = monotonic()
    handoff.leaving["owed"] = {"n2"}                 # a copy that could not go
    handoff.leaving["on-its-way"] = {"n2"}
    retry = handoff._retry_of("n2")
    retry.awaiting = 1                               # the chunk sent as the link came up
    retry.not_before = now - 0.1                     # the quick retry asked for: due
    handoff.next_retry = now - 0.1
    handoff.retry(now)                               # skips n2: its chunk is on its way
    assert handoff.next_retry >= now + HANDOFF_RETRY - 0.5
    answered = handoff._callback("n2", ["on-its-way"], retry, [])
    answered({"ids": ["on-its-way"], "epoch": cluster["n1"].role.view.epoch})
    assert "on-its-way" not in handoff.leaving and handoff.leaving["owed"] == {"n2"}
    assert handoff.next_retry <= monotonic()       # due now, not HANDOFF_RETRY after the skipped round
    handoff.leaving.clear()


def test_an_answer_from_a_holder_with_no_time_of_its_own_leaves_another_holder_s_quick_retry_alone(inproc):
    """Fault simulated (audit review27): a ring change left holder n2 with a
    chunk on its way and no retry time of its own (``not_before`` 0.0, as
    ``request()`` leaves it, or a retry made mid-pass), and holder n3 a
    quick retry 0.4 s ahead (its chunk could not be sent). n2's answer made
    a round due at once; that round found n3 not due and planned the next a
    whole ``HANDOFF_RETRY`` later, so n3's copies waited 5 s, not 0.4 s.
    Now the answer leaves the planned round where it was, and n3 is sent
    its copies at its quick retry."""
    cluster = inproc(3, replicas=3)
    handoff = cluster["n1"].role.handoff
    owed = cluster.task_id()
    cluster.submit_accepted("n1", owed, countdown=300)
    now = monotonic()
    handoff.leaving[owed] = {"n3"}                   # n3 has not confirmed it
    handoff.leaving["on-its-way-to-n2"] = {"n2"}
    n2 = handoff._retry_of("n2")
    n2.awaiting, n2.not_before = 1, 0.0
    n3 = handoff._retry_of("n3")
    n3.awaiting, n3.not_before = 0, now + 0.4
    handoff.next_retry = now + 0.4
    answered = handoff._callback("n2", ["on-its-way-to-n2"], n2, [])
    answered({"ids": ["on-its-way-to-n2"], "epoch": cluster["n1"].role.view.epoch})
    assert handoff.next_retry == now + 0.4, "n2's answer moved the planned round"
    cluster.advance(0.5)
    handoff.retry(monotonic())
    assert cluster.net.messages("REPLICATE", src="n1", dst="n3", task=owed), "n3's quick retry did not come"
    handoff.leaving.clear()


def test_an_answer_from_a_holder_whose_quick_retry_is_ahead_brings_the_round_to_that_time_not_now(inproc):
    """Fault simulated (review28, a mutation of fafa284 no test caught): a
    holder with a chunk on its way and its own quick retry 0.4 s ahead (the
    chunks before could not go), the next round planned ``HANDOFF_RETRY``
    on. Its answer must bring the round to the holder's time, not to now:
    a round at once finds that holder not due yet, plans the next a whole
    ``HANDOFF_RETRY`` later, and its copies wait 5 s instead of 0.4 s."""
    cluster = inproc(2, ring=["n1", "n2"], replicas=2)
    handoff = cluster["n1"].role.handoff
    owed = cluster.task_id()
    cluster.submit_accepted("n1", owed, countdown=300)
    now = monotonic()
    handoff.leaving[owed] = {"n2"}                   # a copy that could not go
    handoff.leaving["on-its-way"] = {"n2"}
    retry = handoff._retry_of("n2")
    retry.awaiting, retry.not_before = 1, now + 0.4
    handoff.next_retry = now + HANDOFF_RETRY
    answered = handoff._callback("n2", ["on-its-way"], retry, [])
    answered({"ids": ["on-its-way"], "epoch": cluster["n1"].role.view.epoch})
    assert handoff.next_retry == now + 0.4, "the answer did not bring the round to n2's own time"
    handoff.retry(monotonic())                      # not due yet: nothing happens
    cluster.advance(0.5)
    handoff.retry(monotonic())
    assert cluster.net.messages("REPLICATE", src="n1", dst="n2", task=owed), "n2's quick retry did not come"
    handoff.leaving.clear()
