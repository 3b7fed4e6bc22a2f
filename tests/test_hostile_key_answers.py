"""A holder's REPLICATE answer that says a submit is a duplicate by key,
from a holder that is not the key's first holder (a buggy member, or
without ``--secure`` anything that reaches the peer port), in process
(miyaq.testing.inprocess).

Since 2026-12-06 the coordinator believes the first holder of a newer ring
(the answer's ``epoch``: its own view may lag during a ring change), so any
holder claiming a newer epoch is believed. Before 2026-12-07 (audit
review24, /tmp/review24/hostile_keys.py) that made the submit answered
``duplicate`` of a task that does not exist while the coordinator's copy
ran -- the answer and the task's fate disagreeing -- and it did so for a
submit without a key too. Now a keyless submit is nobody's duplicate, and
a submit answered ``duplicate`` has its copies ended so on every holder:
whatever a member says, what the client was told is what happens."""
from __future__ import annotations

from typing import Any, Callable

import pytest

from miyaq.core.replicas import key_winner
from miyaq.protocol.commands import DUPLICATE

pytestmark = pytest.mark.timeout(60)

TASK = "t-claimed"


def _rewrite_answers(node: Any, rewrite: Callable[[dict], dict]) -> None:
    """``node`` answers every REPLICATE of TASK as ``rewrite`` says (it stores the copy)."""
    real = node.role.peer.later

    def later():
        reply = real()

        def answer(body):
            if isinstance(body, dict) and TASK in body.get("ids", ()):
                body = rewrite({**body, "ids": [i for i in body["ids"] if i != TASK]})
            reply(body)
        return answer
    node.role.peer.later = later


def _claim_newer_ring(body: dict) -> dict:
    return {**body, "epoch": 10**15, "duplicates": {TASK: "made-up-winner"}}


def test_a_later_holder_claiming_a_newer_ring_ends_the_task_it_calls_a_duplicate(inproc):
    """Fault: the key's third holder answers that the copy is a duplicate
    of a made-up task, claiming a ring epoch far ahead. The submit is
    answered ``duplicate`` (the coordinator cannot tell a lagging view from
    a lie), and then no copy of it runs: each holder ends it cancelled, a
    duplicate of that task. Before, the coordinator's copy stayed live and
    ran."""
    cluster = inproc(3, replicas=3)
    h0, h1, h2 = cluster.holders(TASK, key="k1", replicas=3)
    _rewrite_answers(cluster[h2], _claim_newer_ring)
    workers = {n: cluster.worker(n) for n in (h0, h1, h2)}
    submit = cluster.answered([cluster.submit(h0, TASK, key="k1")])[0]
    assert submit.result == [TASK, DUPLICATE, "made-up-winner"]
    cluster.wait_until(lambda: all(cluster[n].state(TASK) == "cancelled" for n in (h0, h1, h2)),
                       what="every holder's copy ended")
    cluster.settle(1.0)
    assert not any(w.runs(TASK) for w in workers.values())
    assert key_winner(TASK, cluster[h0].tombstone(TASK).error) == "made-up-winner"


def test_a_keyless_submit_is_nobodys_duplicate(inproc):
    """Fault: as above for a submit without a key. The claim is not
    believed: the submit is not answered ``duplicate`` (the holder that
    claimed it did not store it, so with ``min_acks`` all three it is
    rejected and the client resends), and the copies stored stay as they
    were. Before, it was answered ``duplicate`` of the made-up task while
    its copies lived on."""
    cluster = inproc(3, replicas=3)
    h0, h1, h2 = cluster.holders(TASK, replicas=3)
    _rewrite_answers(cluster[h2], _claim_newer_ring)
    submit = cluster.answered([cluster.submit(h0, TASK)])[0]
    assert submit.result[1] != DUPLICATE
    assert cluster[h0].tombstone(TASK) is None
