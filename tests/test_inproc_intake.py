"""Replicated submits, in-process (miyaq.testing.inprocess): a submit is
acknowledged once ``min_acks`` holders stored the task, rejected with
not_enough_replicas past ``replication_timeout``, and a late confirmation
changes neither answer."""
from __future__ import annotations

import pytest

from miyaq.protocol.commands import ACCEPTED, DUPLICATE, REJECTED
from miyaq.constants import QUERY_TIMEOUT
from miyaq.core.listener import EngineListener
from miyaq.store.task import DONE


def test_replica_confirming_late_with_min_acks_accepts_once(inproc):
    """Fault: one of three holders confirms its copy late (its answer to
    REPLICATE is held). With min_acks=2 the submit is accepted as soon as two
    holders stored it; the late confirmation sends no second answer, and the
    late holder has its copy."""
    cluster = inproc(3, min_acks=2)
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    coordinator, late = holders[0], holders[2]
    held = cluster.net.hold("ANSWER", src=late, dst=coordinator, answering="REPLICATE")
    sub = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert sub.status == ACCEPTED and held.held and cluster[late].task(tid) is not None

    held.release()
    cluster.wait_until(lambda: cluster[coordinator].role.peer.unanswered().get(late, 0) == 0,
                       what="the late confirmation to arrive")
    cluster.settle()
    assert [a[1] for a in sub.answers] == [ACCEPTED] and not cluster[coordinator].role.intake.pending
    assert all(cluster[h].task(tid) is not None for h in holders) and not cluster.crashes()


@pytest.mark.parametrize("coordinator_holds", [False, True], ids=["coordinator-not-a-holder", "coordinator-rank-0"])
def test_replica_confirming_after_the_timeout_rejects_and_the_resend_runs_once(inproc, coordinator_holds):
    """Fault: a holder's confirmation comes after replication_timeout. The
    submit is rejected (not_enough_replicas, naming how many holders stored
    it); the late confirmation changes nothing. The client's resend with the
    same id through the late holder answers DUPLICATE or ACCEPTED, and the
    task runs once in the whole cluster -- also when the coordinator is the
    rank-0 holder and kept its copy."""
    cluster = inproc(3, replicas=2, replication_timeout=0.3)
    tid = cluster.task_id()
    holders = cluster.holders(tid, 2)
    coordinator = holders[0] if coordinator_holds else next(n for n in cluster.ids if n not in holders)
    workers = {n: cluster.worker(n) for n in cluster.ids}
    late = cluster.net.delay(0.6, "ANSWER", src=holders[1], dst=coordinator, answering="REPLICATE")
    sub = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert sub.status == REJECTED and sub.error_code == "not_enough_replicas"
    assert "stored on 1 of the 2 holders" in sub.result[2]["message"]
    cluster.wait_until(lambda: late.hits and not cluster[coordinator].role.peer.unanswered(),
                       what="the late confirmation")
    late.remove()
    cluster.settle()
    assert len(sub.answers) == 1

    resend = cluster.submit(holders[1], tid, resent=True)
    cluster.wait_until(lambda: resend.status, what="the resend's answer")
    assert resend.status in (ACCEPTED, DUPLICATE), resend.result
    runs = lambda: sum(w.times(tid) for w in workers.values())   # noqa: E731
    cluster.wait_until(lambda: runs() >= 1, what="the task to run")
    runner = next(n for n, w in workers.items() if w.runs(tid))
    workers[runner].complete(tid)
    cluster.wait_until(lambda: all(cluster[h].state(tid) == DONE for h in holders), what="done on both holders")
    cluster.advance(3 * cluster.settings["replica_offset"])
    assert runs() == 1 and not cluster.crashes()


def test_resent_submit_of_a_task_finished_on_its_coordinator_copies_nothing(inproc):
    """Fault (seen in a chaos run, where the other holder was restarting):
    the other holder hears nothing of the task -- neither its copy, nor its
    events, nor a resync -- so the submit is rejected (not_enough_replicas)
    while the coordinator's own copy runs and finishes. The client's resend reaches the coordinator: it
    answers DUPLICATE and must not send the finished task's record to that
    holder -- stored there, it is a live copy of a finished task, which runs
    if the coordinator is silent (paused, partitioned) when the copy asks."""
    cluster = inproc(3, replicas=2, replication_timeout=0.3)
    tid = cluster.task_id()
    coordinator, other = cluster.holders(tid, 2)
    worker = cluster.worker(coordinator)
    cluster.settle(0.3)                      # the start's resyncs done
    deaf = [cluster.net.drop("REPLICATE", src=coordinator, dst=other),
            cluster.net.drop("EVENTS", src=coordinator, dst=other),
            cluster.net.drop("SYNC", src=other, dst=coordinator)]
    _rejected_but_run_once(cluster, coordinator, tid, worker)
    for rule in deaf:
        rule.remove()
    cluster.settle()

    resend = cluster.submit(coordinator, tid, resent=True)
    cluster.wait_until(lambda: resend.status, what="the resend's answer")
    assert resend.status == DUPLICATE, resend.result
    cluster.settle()
    assert cluster[other].task(tid) is None, "a live copy of the finished task was stored on the other holder"
    assert worker.times(tid) == 1 and not cluster.crashes()



def _rejected_but_run_once(cluster, coordinator, tid, worker):
    """Submit ``tid`` to ``coordinator``, one of its holders, while the other
    holder hears nothing: the submit is rejected (not_enough_replicas) but the
    coordinator's copy runs, on ``worker``, and finishes."""
    sub = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert sub.status == REJECTED and sub.error_code == "not_enough_replicas"
    cluster.wait_until(lambda: worker.runs(tid), what="the coordinator's copy to run")
    worker.complete(tid)
    cluster.wait_until(lambda: cluster[coordinator].state(tid) == DONE, what="done on the coordinator")


def _finished_while_a_holder_was_down(cluster):
    """A task whose second holder is stopped at its submit: rejected
    (not_enough_replicas) while its first holder ran and finished it. The
    second holder restarts empty and hears nothing from the finisher (every
    resync it asks the finisher for is lost, as when the task's tombstone is
    not among the newest a resync carries). Returns (id, finisher, restarted
    node, the third node, the finisher's worker)."""
    tid = cluster.task_led_by("n1", 2)
    finisher, missed = cluster.holders(tid, 2)
    third = next(n for n in cluster.ids if n not in (finisher, missed))
    worker = cluster.worker(finisher)
    cluster.settle(0.3)                      # the start's resyncs done
    cluster.stop_node(missed)
    _rejected_but_run_once(cluster, finisher, tid, worker)

    cluster.net.drop("SYNC", src=missed, dst=finisher)
    back = cluster.start_node(missed)
    cluster.wait_until(lambda: back.role.resync.completed >= 1, what="the restarted holder's resync from the third")
    assert back.state(tid) is None
    return tid, finisher, back, third, worker


def test_a_resend_coordinated_elsewhere_tells_a_restarted_holder_the_task_finished(inproc):
    """Fault (seen in chaos runs as rerun-pause): a holder is killed, a
    submit is rejected (not_enough_replicas) while the other holder runs and
    finishes the task, and the killed holder restarts knowing nothing of it.
    The client's resend reaches a third node, which is no holder: the
    finisher answers its REPLICATE "finished", the restarted holder stores a
    fresh standby copy. The coordinator must forward the outcome to the
    restarted holder -- else its copy asks the finisher when it comes due,
    and if the finisher is paused then (here: cut off), silence lets the copy
    run a second time. The restarted holder ends with a tombstone, not a
    live copy, and the task ran once."""
    cluster = inproc(3, replicas=2, replication_timeout=0.3)
    tid, finisher, back, third, worker = _finished_while_a_holder_was_down(cluster)
    late = cluster.worker(back.id)

    resend = cluster.submit(third, tid, resent=True)
    cluster.wait_until(lambda: resend.status, what="the resend's answer")
    # The finisher counts as storing it (its tombstone): the resend is accepted.
    assert resend.status == ACCEPTED, resend.result
    cluster.wait_until(lambda: not cluster[third].role.peer.unanswered(), what="both holders' answers")
    cluster.net.cut(finisher)                # paused (SIGSTOP) when the standby would ask it
    cluster.advance(4 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: back.state(tid) == DONE or late.runs(tid), what="the restarted holder's copy to end")
    assert late.times(tid) == 0, "the restarted holder ran a task its other holder had finished"
    cluster.advance(QUERY_TIMEOUT + 4 * cluster.settings["replica_offset"])
    cluster.settle()
    assert late.times(tid) == 0 and worker.times(tid) == 1
    assert back.task(tid) is None and back.tombstone(tid).state == DONE
    assert cluster.net.messages("EVENTS", src=third, dst=back.id, task=tid)
    assert back.role.standby.takeovers == 0 and not cluster.crashes()


def test_an_invalid_finished_answer_to_replicate_is_refused_and_not_forwarded(inproc):
    """Fault: a holder answers a REPLICATE with a "finished" outcome that
    fails the checks (here a state no task ends in: a bug or a hostile
    peer). The coordinator refuses it (counted under "answer") and tells the
    task's other holders nothing: the restarted holder keeps its copy."""
    cluster = inproc(3, replicas=2, replication_timeout=0.3)
    tid, finisher, back, third, _ = _finished_while_a_holder_was_down(cluster)
    table = cluster[finisher].engine.table
    table.tombstones.put(table.tombstone(tid)._replace(state="bogus"))
    coordinator = cluster[third]

    resend = cluster.submit(third, tid, resent=True)
    cluster.wait_until(lambda: resend.status, what="the resend's answer")
    cluster.wait_until(lambda: not coordinator.role.peer.unanswered(), what="both holders' answers")
    cluster.settle()
    assert coordinator.node.core.refusals.by_source() == {"answer": 1}
    assert not cluster.net.messages("EVENTS", src=third, dst=back.id, task=tid)
    assert back.task(tid) is not None and back.tombstone(tid) is None
    assert not cluster.crashes()


# -- holders that cannot store the copy now ---------------------------------------------------------------
# replication_timeout is a minute: an answer that waited for it would not come
# within wait_until's ten seconds.

def test_a_holder_on_another_view_of_the_ring_rejects_the_submit_at_once(inproc):
    """Fault (a ring change under way): a holder of the task already has a
    ring in which it is not one, and answers REPLICATE without storing the
    copy. No later answer can confirm this try, so the coordinator rejects
    it now with not_enough_replicas naming that holder -- it used to wait
    out replication_timeout before its client could resend it."""
    cluster = inproc(3, replicas=2, replication_timeout=60.0)
    tid = cluster.task_id()
    coordinator, moved_on = cluster.holders(tid, 2)
    cluster.publish([n for n in cluster.ids if n != moved_on], to=[moved_on])
    cluster.wait_until(lambda: moved_on not in cluster[moved_on].role.view.members, what="the new ring on one node")
    sub = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert sub.status == REJECTED and sub.error_code == "not_enough_replicas", sub.result
    assert f"stored on 1 of the 2 holders needed: {moved_on} did not store it" in sub.result[2]["message"]
    assert not cluster[coordinator].role.intake.pending and not cluster.crashes()


def test_a_draining_holder_still_stores_copies(inproc):
    """Fault (chaos --rolling: a node restarted with SIGTERM, its drain
    under way): a holder of the task is draining for shutdown. It refuses
    new work of its own but still stores the copies other holders send it
    -- it is a holder until its exit takes it out of the ring; refusing them
    failed every submit it holds until then. The submit is accepted."""
    cluster = inproc(3, replicas=2, replication_timeout=60.0)
    tid = cluster.task_id()
    coordinator, draining = cluster.holders(tid, 2)
    cluster[draining].node.core.drain()
    sub = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert sub.status == ACCEPTED, sub.result
    assert cluster[draining].task(tid) is not None and not cluster.crashes()


def test_a_replicate_that_could_not_be_sent_is_sent_again_when_the_holder_is_back(inproc):
    """Fault (chaos --rolling: a node restarted): a holder of the task is
    down while the ring still lists it, so REPLICATE cannot be sent (no
    connection); it comes back before the submit's deadline. The coordinator
    sends the copy again each tick and accepts the submit once the holder
    stored it -- no rejection, no resend by the client."""
    cluster = inproc(3, replicas=2, replication_timeout=60.0)
    tid = cluster.task_id()
    coordinator, down = cluster.holders(tid, 2)
    cluster.stop_node(down)
    sub = cluster.submit(coordinator, tid)
    intake = cluster[coordinator].role.intake
    cluster.wait_until(lambda: intake.unsent.get(down), what="the copy to wait for its holder")
    assert sub.status is None
    cluster.start_node(down)
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert [a[1] for a in sub.answers] == [ACCEPTED], sub.answers
    assert cluster[down].task(tid) is not None and not intake.unsent and not cluster.crashes()


def test_a_late_copy_of_a_task_that_ran_meanwhile_is_not_sent(inproc):
    """Fault (seen in a chaos kill run): a holder of the task is down, so
    its copy waits to be sent again each tick, and the coordinator's own
    copy runs and finishes meanwhile. When the holder comes back it must
    not get the copy: stored there, it would be a live copy of a finished
    task, which runs if the coordinator is silent (killed) when it asks.
    The submit is acknowledged: the task was stored, and it ran."""
    cluster = inproc(3, replicas=2, replication_timeout=60.0)
    tid = cluster.task_id()
    coordinator, down = cluster.holders(tid, 2)
    worker = cluster.worker(coordinator)
    cluster.stop_node(down)
    sub = cluster.submit(coordinator, tid)
    intake = cluster[coordinator].role.intake
    cluster.wait_until(lambda: intake.unsent.get(down), what="the copy to wait for its holder")
    cluster.wait_until(lambda: worker.runs(tid), what="the coordinator's copy to run")
    worker.complete(tid)
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert [a[1] for a in sub.answers] == [ACCEPTED], sub.answers
    assert tid not in intake.pending and not intake.unsent.get(down)

    back = cluster.start_node(down)
    cluster.settle()
    assert back.task(tid) is None, "a live copy of the finished task was stored on the holder that was down"
    assert worker.times(tid) == 1 and not cluster.crashes()


def test_min_acks_still_reachable_without_a_holder_on_another_view_accepts(inproc):
    """Fault: one of three holders answers REPLICATE without the copy (a
    ring in which it is not a holder); with min_acks=2 the two others are
    enough, so the submit is accepted (that holder alone never rejects it)."""
    cluster = inproc(3, min_acks=2, replication_timeout=60.0)
    tid = cluster.task_id()
    coordinator, _, moved_on = cluster.holders(tid)
    cluster.publish([n for n in cluster.ids if n != moved_on], to=[moved_on])
    cluster.wait_until(lambda: moved_on not in cluster[moved_on].role.view.members, what="the new ring on one node")
    sub = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert sub.status == ACCEPTED, sub.result
    assert not cluster.crashes()


# -- a node that shuts down answers every submit it took ------------------------------------------------------

def test_a_draining_node_coordinates_no_submit(inproc):
    """Fault: a submit reaches a node draining for shutdown (SIGTERM) that
    is not one of the task's holders. It refuses it (shutting_down: the
    client resends it to another node) and sends nothing to the holders: it
    may exit before they answer, and then nobody answers the client."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    coordinator = next(n for n in cluster.ids if n not in cluster.holders(tid, 2))
    cluster[coordinator].node.core.drain()
    sub = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert sub.status == REJECTED and sub.error_code == "shutting_down", sub.result
    cluster.settle()
    assert not [m for m in cluster.net.log if m.kind == "REPLICATE" and m.src == coordinator]
    assert not cluster.crashes()


def test_a_stopping_node_refuses_the_submits_it_still_replicates(inproc):
    """Fault (chaos --rolling: a node restarted while a holder of a submit
    it coordinated had not answered): the node stops with the submit still
    waiting for a holder's confirmation. It answers it (shutting_down) before
    it stops -- with no answer its client waited its whole ack timeout (5 s)
    before resending."""
    cluster = inproc(3, replicas=2, replication_timeout=60.0)
    tid = cluster.task_id()
    holders = cluster.holders(tid, 2)
    coordinator = next(n for n in cluster.ids if n not in holders)
    held = cluster.net.hold("ANSWER", src=holders[1], dst=coordinator, answering="REPLICATE")
    sub = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: held.held, what="the holder's answer to be held")
    assert sub.status is None
    cluster.stop_node(coordinator)
    assert [a[1] for a in sub.answers] == [REJECTED] and sub.error_code == "shutting_down", sub.answers
    held.release()
    assert not cluster.crashes()


def test_a_late_answer_of_an_earlier_try_does_not_count_its_holder_twice(inproc):
    """Fault: the client resends a rejected submit to the same coordinator
    while the first try's answer from holder A is still on its way, and
    holder B never gets its copy. A's late answer (its request expired with
    the first try) and its answer to the resend name the same holder: the
    resend is rejected (stored on 1 of 2), never accepted with one copy."""
    cluster = inproc(3, replicas=2, replication_timeout=0.3)
    tid = cluster.task_id()
    a, b = cluster.holders(tid, 2)
    coordinator = next(n for n in cluster.ids if n not in (a, b))
    cluster.net.drop("REPLICATE", src=coordinator, dst=b)
    late = cluster.net.hold("ANSWER", src=a, dst=coordinator, answering="REPLICATE", count=1)
    first = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: first.status, what="the first try's answer")
    assert first.error_code == "not_enough_replicas" and late.held
    resend = cluster.submit(coordinator, tid, resent=True)
    late.release()
    cluster.wait_until(lambda: resend.status, what="the resend's answer")
    assert resend.status == REJECTED and "stored on 1 of the 2 holders" in resend.result[2]["message"], resend.result
    assert cluster[b].task(tid) is None and not cluster.crashes()


def test_a_late_copy_to_a_holder_back_in_time_asks_before_it_runs(inproc, monkeypatch):
    """Fault (chaos ensemble run, 2 unexplained duplicates): the first holder
    of a task is killed just before its submit, so its copy cannot be sent;
    the second holder's standby copy comes due, hears from nobody and runs
    the task. The first holder restarts empty, and the coordinator's retry
    delivers its copy before anything else tells it of the task -- due long
    ago, of rank 0. It must ask before it runs (the copy is marked resent):
    the task is running elsewhere, and runs once."""
    cluster = inproc(3, replicas=2, replication_timeout=60.0)
    tid = cluster.task_id()
    first, second = cluster.holders(tid, 2)
    runner = cluster.worker(second)
    link = cluster[second].role.peer
    send, no_link = link._send_request, {first}
    monkeypatch.setattr(link, "_send_request",
                        lambda node, frames: node not in no_link and send(node, frames))
    cluster.stop_node(first)
    sub = cluster.submit(second, tid, timeout=60.0)      # its lease outlasts the scenario
    intake = cluster[second].role.intake
    cluster.wait_until(lambda: intake.unsent.get(first), what="the copy to wait for its holder")
    cluster.advance(QUERY_TIMEOUT + 4 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: runner.runs(tid), what="the second holder's standby copy to run")

    cluster.net.drop("SYNC", src=first, dst=second)     # its resync does not tell it of the task first
    back = cluster.start_node(first)
    late = cluster.worker(first)
    no_link.clear()                                      # the link to it is up: the retry delivers the copy
    cluster.wait_until(lambda: sub.status, what="the submit's answer")
    assert sub.status == ACCEPTED and back.task(tid) is not None
    cluster.settle()
    cluster.advance(QUERY_TIMEOUT + 4 * cluster.settings["replica_offset"])
    assert late.times(tid) == 0, "the holder back in time ran a copy another holder was running"
    runner.complete(tid)
    cluster.wait_until(lambda: back.state(tid) == DONE, what="the finish to reach the holder back in time")
    assert late.times(tid) == 0 and runner.times(tid) == 1 and not cluster.crashes()


class _Moves(EngineListener):
    """The engine's moves of one task on one node, in order."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.seen: list[str] = []

    def task_ready(self, task) -> None:
        if task.id == self.task_id:
            self.seen.append("ready")

    def task_started(self, task) -> None:
        if task.id == self.task_id:
            self.seen.append("leased")


def test_a_copy_a_replicate_makes_ready_is_leased_before_that_burst_ends(inproc):
    """Latency fault (found with `miyaq bench --cluster 3 --rate 100`: submit
    -> start 11.6 ms at the median against 0.9 ms on one node): the task's
    rank-0 holder is not the node that took the submit, so its copy arrives
    in a REPLICATE, ready to run, and its worker waits with credit. Nothing
    else reaches that node. The copy is leased before the burst of peer
    messages that brought it ends -- not at the node's next client or worker
    message, nor at its housekeeping tick (up to 0.1 s later), as before."""
    cluster = inproc(3)
    tid = cluster.task_id()
    first = cluster.holders(tid)[0]
    coordinator = next(n for n in cluster.ids if n != first)
    worker = cluster.worker(first)
    moves = _Moves(tid)
    cluster[first].engine.listeners.append(moves)
    cluster[first].role.peer.after_burst.append(lambda: moves.seen.append("burst ended"))
    sub = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: worker.runs(tid) and sub.status, what="the task leased on its rank-0 holder")
    assert moves.seen[:3] == ["ready", "leased", "burst ended"], moves.seen
    assert sub.status == ACCEPTED and not cluster.crashes()


@pytest.mark.parametrize("min_acks", [0, 1], ids=["min-acks-all", "min-acks-1"])
def test_one_key_submitted_through_two_nodes_at_once_runs_once(inproc, min_acks):
    """Fault: two tasks of one key (different ids) are submitted through two
    nodes at the same instant (two HTTP gateways). Each holder keeps the copy
    that reached it first, so the holders disagree. Before 2026-12-05 both
    tasks ran (with ``min_acks`` all, both were rejected and each resend was
    answered ``duplicate`` of the other). Now the key's first holder decides:
    the copy it refused ends cancelled as a duplicate there, the other
    holders' copies of it learn so when they ask, and only one task runs."""
    cluster = inproc(3, **({"min_acks": min_acks} if min_acks else {}))
    key = "customer-42"
    holders = cluster.holders("x", key=key)
    workers = {n: cluster.worker(n) for n in cluster.ids}
    a = cluster.submit(holders[0], "ida", key=key)
    b = cluster.submit(holders[1], "idb", key=key)
    cluster.wait_until(lambda: a.result and b.result, what="both submits answered")
    for _ in range(40):          # past every standby copy's offset
        cluster.advance(0.1)
        for n in cluster.ids:
            for t in ("ida", "idb"):
                if workers[n].runs(t):
                    workers[n].complete(t)
    cluster.settle(0.2)
    runs = {t: sum(workers[n].times(t) for n in cluster.ids) for t in ("ida", "idb")}
    assert runs == {"ida": 1, "idb": 0}, runs
    first = cluster[holders[0]]
    stone = first.tombstone("idb")
    assert stone is not None and stone.state == "cancelled" and stone.error["type"] == "Duplicate"
    assert "held by task ida" in stone.error["message"]
    assert not cluster.crashes()


def test_a_keyed_duplicate_submitted_through_a_node_that_holds_no_copy_is_answered_duplicate(inproc):
    """Four nodes, two holders a task: a task with key K is stored; a second
    task with K is submitted through a node that is not one of K's holders.
    Before 2026-12-05 each holder left the copy out of its REPLICATE answer
    (the key is held) and the submit was rejected ``not_enough_replicas`` --
    a retryable error, so a client retried it until its submit_timeout. Now
    the key's first holder says which task holds the key, and the submit is
    answered ``duplicate`` of it; nothing of the second task runs."""
    cluster = inproc(4, replicas=2)
    key = "k1"
    holders = cluster.holders("x", key=key, replicas=2)
    other = next(n for n in cluster.ids if n not in holders)
    first = cluster.submit(holders[0], "ida", key=key)
    cluster.wait_until(lambda: first.result, what="the first submit")
    assert first.status == ACCEPTED
    second = cluster.submit(other, "idb", key=key)
    cluster.wait_until(lambda: second.result, what="the second submit")
    assert second.result == ["idb", DUPLICATE, "ida"]
    assert all(cluster[n].task("idb") is None for n in cluster.ids)


@pytest.mark.parametrize("coordinator_holds", [False, True], ids=["coordinator-not-a-holder", "coordinator-rank-0"])
def test_a_second_submit_of_an_id_waiting_for_its_replicas_is_answered_with_the_first(inproc, coordinator_holds):
    """Fault (review16): the same id submitted again while its first submit
    waits for its replicas (a client's resend, or two clients) took the
    first one's place among the submits waiting: the first submitter was
    never answered (in a 3-node cluster, 527 of 527 ids sent twice got one
    answer) and its client waited out ack_timeout and sent it again. Now
    both are answered, with the same answer, once the replicas confirm."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    coordinator = holders[0] if coordinator_holds else next(n for n in cluster.ids if n not in holders)
    replica = next(h for h in holders if h != coordinator)
    held = cluster.net.hold("ANSWER", src=replica, dst=coordinator, answering="REPLICATE")
    first = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: held.held, what="the replica's answer held")
    second = cluster.submit(coordinator, tid)
    cluster.settle()
    assert not first.answers and not second.answers       # both wait for the replica
    held.release()
    cluster.wait_until(lambda: first.status and second.status, what="both answers")
    cluster.settle()
    assert [a[1] for a in first.answers] == [ACCEPTED] and [a[1] for a in second.answers] == [ACCEPTED]
    assert not cluster[coordinator].role.intake.pending and not cluster.crashes()


def test_submits_of_one_waiting_id_are_bounded(inproc):
    """Bounded: past MAX_JOINED submits of one id waiting for its replicas,
    the next is answered ``busy`` at once (the client tries again later)."""
    from miyaq.cluster.replicated_intake import MAX_JOINED

    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    coordinator, replica = cluster.holders(tid)
    held = cluster.net.hold("ANSWER", src=replica, dst=coordinator, answering="REPLICATE")
    first = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: held.held, what="the replica's answer held")
    joined = [cluster.submit(coordinator, tid) for _ in range(MAX_JOINED)]
    extra = cluster.submit(coordinator, tid)
    cluster.wait_until(lambda: extra.status, what="the extra submit's answer")
    assert extra.answers[0][1] == REJECTED and extra.answers[0][2]["code"] == "busy"
    assert not first.answers and not any(j.answers for j in joined)
    held.release()
    cluster.wait_until(lambda: first.status and all(j.status for j in joined), what="every joined answer")
    assert {a[1] for j in [first, *joined] for a in j.answers} == {ACCEPTED}


def test_a_sweep_reads_only_the_submits_that_are_due(inproc):
    """Fault (cost, 2026-12-06): every cluster tick (50 ms) the sweep walked
    every submit waiting for its replicas -- thousands in a burst, 1.9% of a
    node's CPU in ``miyaq bench --cluster 3``. Submits wait in the order
    they came, each with the same timeout: the sweep rejects those due at
    the front and reads one more, whatever waits behind them; those keep
    waiting (and are rejected when their own time comes)."""
    from miyaq.cluster.replicated_intake import _Pending
    from miyaq.runtime import monotonic

    class Counted(_Pending):
        __slots__ = ("_deadline",)
        reads = 0

        @property  # type: ignore[override]
        def deadline(self) -> float:
            Counted.reads += 1
            return self._deadline

        @deadline.setter
        def deadline(self, value: float) -> None:
            self._deadline = value

    cluster = inproc(3)
    intake = cluster["n1"].role.intake
    answers: dict[str, list] = {}
    now = monotonic()
    for i in range(1_000):
        due = i < 3         # the three oldest are past their deadline
        intake.pending[f"w{i}"] = Counted(lambda results, i=i: answers.setdefault(f"w{i}", results),
                                          2, ["n2", "n3"], now - 1.0 if due else now + 3600.0)
    assert intake.sweep() == 3
    assert Counted.reads <= 4, Counted.reads
    intake.release()        # the rejections leave (the ticker's flush)
    assert sorted(answers) == ["w0", "w1", "w2"]
    assert all(a[0][2]["code"] == "not_enough_replicas" for a in answers.values())
    assert len(intake.pending) == 997 and next(iter(intake.pending)) == "w3"
    intake.pending.clear()


class _CountedRecord(dict):
    """A copy's record that counts how often its id is read."""
    reads = 0

    def __getitem__(self, name):
        if name == "id":
            _CountedRecord.reads += 1
        return super().__getitem__(name)


def test_a_tick_reads_a_bounded_share_of_the_copies_waiting_for_an_unreachable_holder(inproc):
    """Fault (cost, 2026-12-06): while a holder stays unreachable, every
    cluster tick (50 ms) read every copy waiting for it -- 257 ms of CPU a
    tick with 100,000 waiting, the coordinator's loop kept busy by a holder
    that went down under load. A tick now reads the probe and at most
    UNSENT_SCAN more, in turns; what it has to do still gets done within a
    few ticks: a copy whose submit was answered is dropped, and the submit
    of a task that is over here is acknowledged (not sent), wherever its
    copy waits in the list."""
    from miyaq.cluster.late_copies import UNSENT_PROBE, UNSENT_SCAN
    from miyaq.cluster.replicated_intake import _Pending
    from miyaq.runtime import monotonic

    cluster = inproc(3)
    cluster.stop_node("n3")
    intake = cluster["n1"].role.intake
    n = 5 * UNSENT_SCAN
    answers: dict[str, list] = {}
    copies = []
    deadline = monotonic() + 3600.0
    for i in range(n):
        task_id = f"w{i}"
        entry = _Pending(lambda results, t=task_id: answers.setdefault(t, results), 3, ["n2", "n3"], deadline)
        entry.stored.add("n2")
        copies.append((entry, _CountedRecord(o="A", id=task_id, name="job", holders=["n1", "n2", "n3"],
                                             meta={"resent": True})))
        intake.pending[task_id] = entry
    over = f"w{n - 10}"             # stored here (mine) and not live here any more: over here
    intake.pending[over].mine = 1
    answered = [f"w{i}" for i in range(0, n, 997)]       # answered meanwhile: their copies are not wanted
    for task_id in answered:
        del intake.pending[task_id]
    intake.unsent = {"n3": copies}

    def tick() -> None:
        intake._unsent_due = 0.0
        intake.flush()

    _CountedRecord.reads = 0
    tick()
    # the probe read, and read again as it is sent; the scan; the answered ones read on the way
    assert _CountedRecord.reads <= 2 * UNSENT_PROBE + UNSENT_SCAN + len(answered), _CountedRecord.reads
    for _ in range(n // UNSENT_SCAN + 1):
        tick()
    waiting = {record["id"] for _, record in intake.unsent["n3"]}
    assert over in answers and answers[over][0][1] == ACCEPTED and over not in waiting
    assert not waiting & set(answered) and len(waiting) == n - len(answered) - 1
    intake.pending.clear()
    intake.unsent = {}


def test_a_submit_to_a_cluster_node_with_no_ring_yet_says_why_and_stores_nothing(inproc):
    """Fault: a producer submits to a cluster node before its leader has
    published a ring (the cluster is starting), and again once every node
    left it. Before 2026-12-07 the refusal said only ``the ring is empty``,
    a phrase no page explained; it now says when that happens, where to
    look and what to do. A client resends ``unavailable`` until its
    ``submit_timeout``, and its final error carries this message."""
    cluster = inproc(2, ring=False)
    for round_ in ("starting", "every node left"):
        sub = cluster.submit("n1")
        cluster.wait_until(lambda: sub.status, what=f"the submit's answer ({round_})")
        assert sub.status == REJECTED and sub.error_code == "unavailable"
        assert "no member yet" in sub.result[2]["message"] and "miyaq ring" in sub.result[2]["message"]
        assert cluster["n1"].task(sub.task_id) is None and cluster["n2"].task(sub.task_id) is None
        if round_ == "starting":
            cluster.publish(["n1", "n2"])
            assert cluster.submit_accepted("n1").status != REJECTED     # the ring came: submits go in
            cluster.publish([])
