"""The in-process testing kit itself (miyaq.testing: memnet, memtransport,
scripted, inprocess): each control of the in-memory network and of the
scripted ring does what it says, so the fault tests built on them test the
cluster, not the kit."""
from __future__ import annotations

import pytest

from miyaq.constants import QUERY_TIMEOUT
from miyaq.errors import ConfigError, Unavailable
from miyaq.protocol.commands import ACCEPTED
from miyaq.store.task import DONE


def _stored_everywhere(cluster, tid):
    return all(cluster[h].task(tid) is not None for h in cluster.holders(tid))


def test_every_message_is_recorded_with_its_fate(inproc):
    """A submit's REPLICATE requests and their answers are on the log, each
    delivered, with the task ids they carry and the command an answer answers."""
    cluster = inproc(3)
    sub = cluster.submit_accepted("n1")
    sent = cluster.net.messages("REPLICATE", src="n1", task=sub.task_id)
    answers = cluster.net.messages("ANSWER", dst="n1", answering="REPLICATE", task=sub.task_id)
    assert {m.dst for m in sent} == set(cluster.holders(sub.task_id)) - {"n1"}
    assert {m.src for m in answers} == {m.dst for m in sent}
    assert all(m.fate == "delivered" for m in sent + answers)


def test_held_messages_wait_for_release_and_keep_their_order(inproc):
    """hold keeps matching messages (the submit waits); release delivers them in order."""
    cluster = inproc(3)
    held = cluster.net.hold("REPLICATE", src="n1")
    subs = [cluster.submit("n1") for _ in range(3)]
    cluster.wait_until(lambda: len(held.held) >= 2, what="the REPLICATE requests held")
    cluster.settle(0.1)
    assert all(s.status is None for s in subs)
    order = [m.body["req"] for m in held.held]
    assert held.release() and order == sorted(order)
    cluster.wait_until(lambda: all(s.status == ACCEPTED for s in subs), what="the submits accepted")
    assert held not in cluster.net.rules


def test_dropped_query_is_silence_and_silence_lets_a_standby_copy_run(inproc):
    """Fault: every QUERY of a standby copy is lost (the first holder has no
    worker, so the task waits there). The asker hears silence at its deadline
    and the copy runs on the standby holder: only silence lets a copy run."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    first, second = cluster.holders(tid, 2)
    lost = cluster.net.drop("QUERY", src=second, dst=first)
    worker = cluster.worker(second)
    cluster.submit_accepted(first, tid)
    cluster.wait_until(lambda: lost.hits, what="the standby's QUERY")
    assert not worker.runs(tid)
    cluster.advance(QUERY_TIMEOUT)
    cluster.wait_until(lambda: worker.runs(tid), what="the standby copy to run after silence")
    assert cluster[second].role.standby.takeovers == 1


def test_duplicated_replicate_stores_one_copy_and_answers_once(inproc):
    """Fault: every REPLICATE is delivered twice. Installing is idempotent:
    one copy per holder, one answer to the submit."""
    cluster = inproc(3)
    twice = cluster.net.duplicate("REPLICATE")
    sub = cluster.answered([cluster.submit("n1")])[0]
    cluster.wait_until(lambda: _stored_everywhere(cluster, sub.task_id), what="the submit")
    cluster.settle(0.1)
    assert twice.hits == 2 and len(sub.answers) == 1 and sub.status == ACCEPTED
    assert len(cluster.net.messages("ANSWER", dst="n1", answering=None)) >= 2   # the second answers find no request
    assert all(len(cluster[h].engine.table.live) == 1 for h in cluster.holders(sub.task_id))


def test_delayed_message_arrives_when_the_clock_passes(inproc):
    """delay holds a message until the monotonic clock passes its delay; advancing the clock delivers it."""
    cluster = inproc(3)
    slow = cluster.net.delay(5.0, "REPLICATE", src="n1", count=1)
    sub = cluster.submit("n1")
    cluster.wait_until(lambda: slow.hits, what="a REPLICATE delayed")
    message = cluster.net.messages("REPLICATE", src="n1", task=sub.task_id)[0]
    assert message.fate == "delayed"
    cluster.advance(5.0)
    cluster.wait_until(lambda: message.fate == "delivered", what="the delayed message delivered")


def test_reordered_event_arrives_after_the_next_one_and_shows_as_a_gap(inproc):
    """Fault: two stream messages swap places. The receiver sees a sequence
    gap, applies both and asks for a resync -- a reordered stream is never
    trusted."""
    cluster = inproc(3)
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    sub = cluster[holders[1]].role.subscriber
    gaps = sub.gaps
    swapped = cluster.net.reorder("EVENTS", src=holders[0], dst=holders[1])
    worker = cluster.worker(holders[0])
    cluster.submit_accepted(holders[0], tid)
    cluster.wait_until(lambda: worker.runs(tid) and swapped.hits, what="the S event held back")
    worker.complete(tid)
    cluster.wait_until(lambda: cluster[holders[1]].state(tid) == DONE and sub.gaps > gaps, what="both applied")
    order = [m for m in cluster.net.messages("EVENTS", src=holders[0], dst=holders[1])]
    assert [bool(m.events("S")) for m in order[-2:]] == [True, False]


def test_cut_node_is_unreachable_one_way_or_both_and_heal_undoes_it(inproc):
    """cut("in") silences what a node hears, cut("out") what it says; heal lifts both."""
    cluster = inproc(3)
    cluster.net.cut("n3", "in")
    before = len(cluster.net.log)
    cluster.advance(1.0)                       # one heartbeat each
    cluster.settle(0.1)
    fresh = list(cluster.net.log)[before:]
    assert all(m.fate == "cut" for m in fresh if m.dst == "n3")
    assert any(m.fate == "delivered" for m in fresh if m.src == "n3")
    cluster.net.heal("n3")
    cluster.net.cut("n3", "out")
    before = len(cluster.net.log)
    cluster.advance(1.0)
    cluster.settle(0.1)
    fresh = list(cluster.net.log)[before:]
    assert all(m.fate == "cut" for m in fresh if m.src == "n3")
    assert any(m.fate == "delivered" for m in fresh if m.dst == "n3")
    cluster.net.heal()
    assert not cluster.net.rules
    with pytest.raises(ValueError):
        cluster.net.cut("n3", "sideways")


def test_request_to_a_stopped_node_fails_at_once(inproc):
    """A stopped node is off the network: a request to it gets its callback
    (None) at once, as a DEALER without a connection does, not at its deadline."""
    cluster = inproc(3)
    cluster.stop_node("n3")
    answers = []
    assert not cluster["n1"].role.peer.request("n3", b"QUERY", {"ids": []}, 60.0, answers.append)
    cluster.wait_until(lambda: answers == [None], what="the callback")


def test_scripted_session_expiry_and_wishes(inproc):
    """expire ends a node's leadership and makes it silent (connection lost)
    until restore; join, leave and weights are wishes the next publish applies."""
    cluster = inproc(3)
    leader = cluster["n1"].role.coordinator
    assert leader.is_leader and leader.connection == "connected"
    cluster.script.expire("n1")
    assert not leader.is_leader and leader.connection == "lost" and leader.silent_for() > 0
    with pytest.raises(Unavailable):
        leader.leave("n2")
    cluster.script.restore("n1")
    assert leader.is_leader and leader.silent_for() == 0.0
    leader.leave("n3")
    leader.set_weight("n2", 3.0)
    epoch = cluster.publish()
    assert sorted(cluster["n1"].role.view.members) == ["n1", "n2"]
    assert cluster["n1"].role.view.members["n2"].weight == 3.0 and cluster["n3"].role.view.epoch == epoch
    with pytest.raises(ConfigError):
        cluster.script.view(["n1", "nobody"])


def test_submit_accepted_passes_a_tasks_timeout_as_its_lease(inproc):
    """Fault (the kit's, found in review): ``submit_accepted(via, id,
    timeout=60)`` took ``timeout`` as its own wait, and the task went with
    the node's default lease -- a test meaning a long lease got a short one
    and no error. The wait is ``wait=`` now; ``timeout`` is the task's."""
    cluster = inproc(2, replicas=2, default_timeout=5.0)
    sub = cluster.submit_accepted("n1", timeout=77.0, wait=30.0)
    for node_id in cluster.holders(sub.task_id):
        assert cluster[node_id].task(sub.task_id).timeout == 77.0
