"""A standby copy's QUERY whose send is refused, in-process
(miyaq.testing.inprocess): the holder was not asked, and that is not silence.
The copy asks again until the QUERY's deadline; a holder whose link refuses
every send until then counts as silent, as one cut off must
(docs/cluster.md, "Before a standby copy runs")."""
from __future__ import annotations

import pytest

from miyaq.constants import QUERY_TIMEOUT
from miyaq.store.task import DONE


def _standby_copy_of_a_task_its_first_holder_holds(cluster, complete: bool):
    """A task held by n1 (first) and n2; n2 hears none of n1's stream (events,
    heartbeats) nor any resync from it, so only a QUERY tells it what n1 did.
    With ``complete``, n1 runs and finishes the task."""
    tid = cluster.task_led_by("n1", replicas=2)
    runner, standby = cluster.holders(tid, 2)
    assert (runner, standby) == ("n1", "n2")
    cluster.net.drop("EVENTS", src=runner, dst=standby)
    cluster.net.drop("HEARTBEAT", src=runner, dst=standby)
    cluster.net.drop("SYNC", src=standby, dst=runner)
    standby_worker = cluster.worker(standby)
    cluster.submit_accepted(runner, tid, replicas=2)
    if complete:
        worker = cluster.worker(runner)
        cluster.wait_until(lambda: worker.runs(tid), what="the task to run on n1")
        worker.complete(tid)
        cluster.wait_until(lambda: cluster[runner].state(tid) == DONE, what="the task done on n1")
    copy = cluster[standby].task(tid)
    assert copy is not None and copy.standby and cluster[standby].state(tid) != DONE
    return tid, standby_worker


def test_a_query_refused_at_its_send_for_a_while_is_asked_again_not_taken_for_silence(inproc):
    """Fault: n2's QUERYs to n1 -- the task's first holder, which finished
    it -- are refused at their send when n2's copy comes due (the link to
    n1 is not up yet: a new CURVE DEALER with IMMEDIATE refuses sends until
    its handshake is done, 1-25 ms). Before the fix the refusal was silence
    at once and n2 ran the task a second time (chaos seed 642261610). Now
    n2 asks again a few ms later, hears "done" and its copy ends done."""
    cluster = inproc(2, replicas=2)
    tid, standby_worker = _standby_copy_of_a_task_its_first_holder_holds(cluster, complete=True)
    refused = cluster.net.refuse("QUERY", src="n2", dst="n1")
    cluster.advance(cluster.settings["replica_offset"] + 0.2)      # n2's copy (rank 1) comes due and asks
    cluster.wait_until(lambda: refused.hits >= 1, what="n2's QUERY to be refused")
    refused.remove()
    cluster.wait_until(lambda: cluster["n2"].state(tid) == DONE or standby_worker.times(tid) > 0,
                       what="n2's copy to finish as on n1, or run")
    standby = cluster["n2"].role.standby
    assert standby_worker.times(tid) == 0, "n2 ran the task on a QUERY it never sent"
    assert standby.takeovers == 0 and standby.queries_refused >= 1
    assert cluster["n2"].role.stats()["queries_refused"] == standby.queries_refused
    assert cluster.net.messages("ANSWER", src="n1", dst="n2", answering="QUERY", task=tid)
    assert any(m.fate == "refused" for m in cluster.net.messages("QUERY", src="n2", dst="n1"))
    assert not cluster.crashes()


def test_a_holder_whose_link_refuses_every_send_until_the_deadline_is_silent(inproc):
    """The guarantee kept: a holder cut off (its link refuses every send, as
    a DEALER with IMMEDIATE does once its connection is gone) lets the
    standby copy take over -- not at the first refusal, but once the
    QUERY's deadline (QUERY_TIMEOUT) passed with every try refused: asking
    again is bounded, it never waits for ever."""
    cluster = inproc(2, replicas=2)
    tid, standby_worker = _standby_copy_of_a_task_its_first_holder_holds(cluster, complete=False)
    refused = cluster.net.refuse("QUERY", src="n2", dst="n1")
    cluster.advance(cluster.settings["replica_offset"] + 0.2)
    cluster.wait_until(lambda: refused.hits >= 2, what="n2's QUERY to be refused and sent again")
    standby = cluster["n2"].role.standby
    assert standby_worker.times(tid) == 0 and standby.takeovers == 0, "taken over before the deadline"
    assert tid in standby.waiting(), "the copy asks until its deadline"
    cluster.advance(QUERY_TIMEOUT + 0.1)
    cluster.wait_until(lambda: standby_worker.runs(tid) or standby_worker.times(tid) > 0,
                       what="n2's copy to take over once the deadline passed")
    assert standby.takeovers == 1 and standby.queries_refused >= 2
    assert not cluster.net.messages("ANSWER", src="n1", dst="n2", answering="QUERY", task=tid)
    assert not cluster.crashes()


def test_memnet_refuses_requests_for_seconds_and_rejects_a_bad_rule(inproc):
    """The kit's refusal (memnet ``Network.refuse``): a request refused is
    recorded ``refused`` and its sender hears it could not go; the rule ends
    ``seconds`` (monotonic) later; a rule on something that is not a request,
    or for no time, is refused with a clear error and adds no rule."""
    cluster = inproc(2, replicas=2)
    net = cluster.net
    before = list(net.rules)
    for bad, why in (({"kind": "ANSWER"}, "only requests"), ({"kind": "EVENTS"}, "only requests"),
                     ({"seconds": 0}, "seconds must be positive"), ({"seconds": -1.0}, "seconds must be positive")):
        with pytest.raises(ValueError, match=why):
            net.refuse(**bad)
    assert net.rules == before
    rule = net.refuse("QUERY", src="n2", dst="n1", seconds=0.5)
    peer = cluster["n2"].role.peer
    answers: list = []
    refused_before = peer.sends_refused
    assert not peer.request("n1", b"QUERY", {"ids": ["x"]}, 1.0, answers.append)
    assert peer.sends_refused == refused_before + 1 and rule.hits == 1
    assert net.messages("QUERY", src="n2", dst="n1")[-1].fate == "refused"
    cluster.wait_until(lambda: answers == [None], what="the refused request's callback")
    cluster.advance(0.6)
    assert peer.request("n1", b"QUERY", {"ids": ["x"]}, 1.0, answers.append), "the rule ended after its seconds"
    cluster.wait_until(lambda: len(answers) == 2, what="the answer")
    assert answers[1] is not None and "states" in answers[1]
    assert not cluster.crashes()
