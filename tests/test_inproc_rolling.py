"""A planned restart of one node (the Runbook's rolling restart, one step),
in-process (miyaq.testing.inprocess): a node that stops takes no writes
from its peers once its role stopped -- its log closes next."""
from __future__ import annotations

import logging

import gevent

from miyaq.runtime import green


def test_a_stopping_node_takes_no_peer_writes_once_its_log_closed(inproc, tmp_path, caplog, monkeypatch):
    """Fault (about one restart in nine at 300 tasks a second): a node stops;
    its role left the ring, its log closed, but its peer link and streams
    stay open until the parts are killed. A finish (an F event) and a
    REPLICATE reach it in that window. Before 2026-12-06 it applied the
    event -- "a change came after the log closed; it is not on disk" (an
    error) -- and tried to store the copy ("could not store a copy ...: its
    log is closed"), whose answer then waited for a write that never came.
    Now it takes no writes from its peers once its role stopped: the event
    is not applied, and the REPLICATE is answered at once with nothing
    stored, so the submit's coordinator rejects the submit at once (its
    client resends it) instead of waiting for the connection to close."""
    cluster = inproc(3, data_dir=str(tmp_path), fsync="always", default_timeout=60.0)
    ran = cluster.task_led_by("n1")
    sub = cluster.submit("n1", ran)
    cluster.wait_until(lambda: sub.status == "accepted" and all(cluster[n].task(ran) for n in cluster.nodes),
                       what="every copy stored")
    worker = cluster.worker("n1")
    cluster.wait_until(lambda: worker.runs(ran), what="the task to run on n1")

    stopping = cluster["n3"]
    window = green.Event()
    go_on = green.Event()
    kill = stopping.node.supervisor.kill

    def held_kill(*args, **kwargs):     # after every part's stop (the log closed), before any part's kill
        window.set()
        go_on.wait()
        kill(*args, **kwargs)

    monkeypatch.setattr(stopping.node.supervisor, "kill", held_kill)
    caplog.set_level(logging.WARNING)
    stopper = gevent.spawn(cluster.stop_node, "n3", 0.0)
    try:
        cluster.wait_until(window.is_set, what="n3's log closed, its links still open")

        worker.complete(ran)                        # its F event goes to n2 and n3
        cluster.wait_until(lambda: cluster["n2"].state(ran) == "done", what="the finish heard by n2")
        cluster.wait_until(lambda: [m for m in cluster.net.messages("EVENTS", src="n1", dst="n3", event="F", task=ran)
                                    if m.fate == "delivered"], what="the F event delivered to n3")
        answered = len(cluster.net.messages("ANSWER", src="n3", dst="n1", answering="REPLICATE"))
        late = cluster.submit("n1", cluster.task_id())     # n3 is still a holder in n1's ring
        cluster.wait_until(lambda: late.status, what="the late submit's answer")
        assert late.status == "rejected" and late.error_code == "not_enough_replicas"
        answers = cluster.net.messages("ANSWER", src="n3", dst="n1", answering="REPLICATE")[answered:]
        assert [a.body.get("ids") for a in answers] == [[]], "n3 did not answer the REPLICATE: stored nothing"
        assert "n3 did not store it" in late.result[2]["message"]     # at its answer, not at the deadline
        assert stopping.state(ran) != "done", "an event was applied after the node's log closed"
    finally:
        go_on.set()
        stopper.join(10)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    stored = [r for r in caplog.records if "could not store a copy" in r.getMessage()]
    assert not errors and not stored, [r.getMessage() for r in errors + stored]
    assert not cluster.crashes()
