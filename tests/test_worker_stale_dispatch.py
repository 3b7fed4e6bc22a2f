"""A DISPATCH that reaches a worker long after its node sent it, across a
silence in which the node may have taken the worker for lost
(miyaq.worker.transit). A raw ROUTER plays the node (tests/played_node.py,
the stalling node of test_worker_stalls.py), its clock another process's:
it stamps ``sent`` from a base 1,000 s away from the worker's. No timing is
asserted: waits are bounded guards, the silence is the worker's own
finding (``link.slow``)."""
from __future__ import annotations

import time
from typing import Any

import pytest
from fuzz_inputs import pack
from test_worker_stalls import StallingNode, delivery, linked

from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(90)

NODE_CLOCK_BASE = 1000.0


@pytest.fixture
def node() -> Any:
    """The played node: it welcomes with a 0.05 s heartbeat (silent past 0.15 s)."""
    played = StallingNode(heartbeat=0.05)
    yield played
    played.close()


def node_clock() -> float:
    """The played node's monotonic clock: another base than the worker's."""
    return time.monotonic() + NODE_CLOCK_BASE


def dispatch(node: StallingNode, *deliveries: list[Any], **stamp: Any) -> None:
    node.send([c.TAG, c.DISPATCH, pack({"tasks": list(deliveries), **stamp})])


def beat(node: StallingNode) -> None:
    node.send([c.TAG, c.HEARTBEAT, pack({"node": "n0", "sent": node_clock()})])


def stamped_worker(node: StallingNode, thread_worker: Any, monkeypatch: Any) -> tuple[Any, Any]:
    """A worker registered with ``node`` that has read stamped heartbeats and
    run one stamped task (so it knows the transit of the node's messages)."""
    monkeypatch.setattr("miyaq.worker.link.HUNG_NODE_LIVENESS", 10_000)   # a silence is not a hung node here
    worker = linked(node, thread_worker, concurrency=2, prefetch=0)
    for _ in range(3):
        beat(node)
    dispatch(node, delivery("warm", "nap", 0.0), sent=node_clock())
    wait_for(lambda: node.pump() or "warm" in node.done, what="a stamped task run")
    return worker, worker.links[0]


def silence(node: StallingNode, link: Any) -> None:
    """The node says nothing until the worker finds it silent past the
    node's heartbeat × liveness (the node may take it for lost as long)."""
    node.answering = False
    wait_for(lambda: node.pump() or link.slow, what="the worker finding the node silent")
    node.answering = True


def test_a_dispatch_sent_before_a_silence_and_read_after_it_is_given_back_unrun(node, thread_worker,
                                                                                monkeypatch) -> None:
    """Fault: a network cut holds a DISPATCH in a TCP buffer while the node
    takes the worker for lost (nothing from it for heartbeat × liveness)
    and leases its tasks again, elsewhere; the cut heals and the DISPATCH
    arrives. Before, the worker ran it: a task run twice (a chaos run,
    `isolate` of a node: 27 tasks). Now it reads the node's ``sent`` stamp,
    sees the message was sent before the silence and came as late, and
    gives the task back unstarted (RETURN); a fresh DISPATCH after it runs."""
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    sent_before = node_clock()
    silence(node, link)
    dispatch(node, delivery("t1", "nap", 0.0), sent=sent_before)
    wait_for(lambda: node.pump() or any("t1" in r["ids"] for r in node.returned), what="t1 given back")
    dispatch(node, delivery("t2", "nap", 0.0), sent=node_clock())
    wait_for(lambda: node.pump() or "t2" in node.done, what="t2 run")
    assert "t1" not in node.done and "t1" not in worker.running
    assert link.late.given_back == 1
    assert [r for r in node.returned if "t1" in r["ids"]][0].get("credit", True) is True   # its slot back


@pytest.mark.parametrize("case", ["sent after the silence (a node that stalled)", "no stamp (an older node)",
                                  "a stamp that is no number", "a stamp that is NaN", "a stamp of true"])
def test_a_dispatch_after_a_silence_that_was_not_held_in_it_runs(node, thread_worker, monkeypatch,
                                                                 case: str) -> None:
    """A silence alone gives nothing back: a node that stalled sends its
    DISPATCH after it (stamped then), an older node stamps nothing, and a
    stamp that is not a finite number (a buggy node) says nothing. Each
    task runs, and the worker stays up."""
    stamps: dict[str, dict[str, Any]] = {
        "sent after the silence (a node that stalled)": {},
        "no stamp (an older node)": {},
        "a stamp that is no number": {"sent": "yesterday"},
        "a stamp that is NaN": {"sent": float("nan")},
        "a stamp of true": {"sent": True},
    }
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    silence(node, link)
    stamp = stamps[case] if not case.startswith("sent after") else {"sent": node_clock()}
    dispatch(node, delivery("t1", "nap", 0.0), **stamp)
    wait_for(lambda: node.pump() or "t1" in node.done, what="t1 run")
    assert link.late.given_back == 0 and not node.returned


def test_a_late_dispatch_on_a_busy_link_that_never_went_silent_runs(node, thread_worker, monkeypatch) -> None:
    """A DISPATCH that came late (queued behind others on a slow link) while
    the node's messages kept coming is no sign the node took the worker for
    lost: it runs. Only one sent before a silence as long as the node's
    patience is given back."""
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    dispatch(node, delivery("t1", "nap", 0.0), sent=node_clock() - 30.0)    # 30 s in a queue
    wait_for(lambda: node.pump() or "t1" in node.done, what="t1 run")
    assert link.late.given_back == 0 and not node.returned


def test_a_task_given_back_as_late_and_sent_again_by_a_node_that_kept_the_worker_runs(node, thread_worker,
                                                                                       monkeypatch) -> None:
    """Fault: a DISPATCH that takes longer than the node's patience to cross
    the link (one task of 1 MiB on a link under 2.8 Mbit/s; heartbeat 1 s,
    liveness 3) leaves the worker hearing nothing while it streams -- the
    node's heartbeats wait behind it -- and arrives late after that silence,
    as one held in a cut does. Given back, it was leased again to the same
    worker and came as late again: a livelock, the task never ran (a
    loopback relay at 100 kB/s, 200 kB task, heartbeat 0.1 s: 12 RETURNs in
    25 s, no run). The node kept the worker through it (one that dropped it
    answers its RETURN with RECONNECT, and it registers again): an id this
    link gave back since its last WELCOME, sent again, runs whatever its
    lag; a new id in the same late DISPATCH is still given back."""
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    sent_before = node_clock()
    silence(node, link)
    dispatch(node, delivery("big", "nap", 0.0), sent=sent_before)
    wait_for(lambda: node.pump() or node.returned, what="big given back")
    sent_before = node_clock()
    silence(node, link)             # the node sent it again, and it streamed as long
    dispatch(node, delivery("big", "nap", 0.0), delivery("new", "nap", 0.0), sent=sent_before)
    wait_for(lambda: node.pump() or "big" in node.done, what="big run the second time it came late")
    assert [r["ids"] for r in node.returned] == [["big"], ["new"]]     # each given back once
    assert "new" not in node.done and link.late.given_back == 2


def test_after_the_node_welcomed_the_worker_again_a_task_it_gave_back_is_given_back_again(node, thread_worker,
                                                                                          monkeypatch) -> None:
    """What a link gave back as late counts only until the node welcomes the
    worker again: a node that took the worker for lost answered its RETURN
    (or heartbeat) with RECONNECT, and the leases before are gone. The same
    id, late again after a later silence, is given back again."""
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    for round_ in range(2):
        if round_:
            node.send([c.TAG, c.WELCOME, pack({"node": "n0", "heartbeat": 0.05, "liveness": 3})])
            for _ in range(3):
                beat(node)      # the transit is measured afresh after a WELCOME
        sent_before = node_clock()
        silence(node, link)
        dispatch(node, delivery("t1", "nap", 0.0), sent=sent_before)
        wait_for(lambda: node.pump() or len(node.returned) > round_ or "t1" in node.done, what="t1 given back")
    assert [r["ids"] for r in node.returned] == [["t1"], ["t1"]] and "t1" not in node.done


def test_a_node_that_welcomes_the_worker_again_on_another_clock_is_measured_afresh(node, thread_worker,
                                                                                   monkeypatch) -> None:
    """Fault simulated: the node restarted on another host after a silence
    (its monotonic clock 2,000 s behind the last one's) and welcomed the
    worker again. Measured against the old clock's messages, each of its
    messages seemed 2,000 s late, after a silence: every DISPATCH given back
    for up to two windows (two minutes). A WELCOME starts the measure
    afresh, and the new node's DISPATCH runs."""
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    silence(node, link)
    node.send([c.TAG, c.WELCOME, pack({"node": "n0", "heartbeat": 0.05, "liveness": 3})])
    node.send([c.TAG, c.HEARTBEAT, pack({"node": "n0", "sent": node_clock() - 2000.0})])
    dispatch(node, delivery("t1", "nap", 0.0), sent=node_clock() - 2000.0)
    wait_for(lambda: node.pump() or "t1" in node.done or node.returned, what="t1 run or given back")
    assert not node.returned
    wait_for(lambda: node.pump() or "t1" in node.done, what="t1 run")
    assert link.late.given_back == 0


def test_a_late_dispatch_s_give_back_names_only_ids_a_node_takes(node, thread_worker, monkeypatch) -> None:
    """Fault simulated (review28: a mutation of ``jobs.returnable_ids`` that
    let an empty id or one over 64 characters through passed every test): a
    late DISPATCH holding such an id beside a good one. A node refuses a
    whole RETURN for one id it would not take (``fields.string_list``), and
    the good one's lease would run out rather than go back; the RETURN
    names the good one only."""
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    sent_before = node_clock()
    silence(node, link)
    dispatch(node, delivery("x" * 65, "nap", 0.0), delivery("", "nap", 0.0), delivery("t1", "nap", 0.0),
             sent=sent_before)
    wait_for(lambda: node.pump() or node.returned, what="the late DISPATCH given back")
    assert [r["ids"] for r in node.returned] == [["t1"]]


@pytest.mark.parametrize("between", ["nothing (it went to another worker)", "the same attempt, on time, run here"])
def test_a_later_attempt_of_a_task_given_back_as_late_that_comes_late_is_given_back_again(node, thread_worker,
                                                                                          monkeypatch, between):
    """Fault simulated: a task given back as late (attempt 1) runs elsewhere
    or here, fails, and its next attempt, leased to this worker, is held in
    a network cut while the node takes the worker for lost and leases it
    again elsewhere; the cut heals and that DISPATCH arrives late. Only the
    given-back attempt sent again is the node keeping this worker's lease
    (a RETURN spends no attempt): before, the id alone was remembered, until
    the next WELCOME or 10,000 newer ids, and any later attempt of it ran
    however late -- twice in the cluster. It is given back like any late
    DISPATCH."""
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    sent_before = node_clock()
    silence(node, link)
    dispatch(node, delivery("t1", "nap", 0.0, attempt=1), sent=sent_before)
    wait_for(lambda: node.pump() or node.returned, what="attempt 1 given back")
    if between.startswith("the same attempt"):
        dispatch(node, delivery("t1", "nap", 0.0, attempt=1), sent=node_clock())
        wait_for(lambda: node.pump() or "t1" in node.done, what="attempt 1 run on time")
    sent_before = node_clock()
    silence(node, link)
    dispatch(node, delivery("t1", "nap", 0.0, attempt=2), sent=sent_before)
    wait_for(lambda: node.pump() or len(node.returned) > 1 or ("done", "t1", 2) in runs(node),
             what="attempt 2 run or given back")
    assert [r["ids"] for r in node.returned] == [["t1"], ["t1"]]
    assert ("done", "t1", 2) not in runs(node) and link.late.given_back == 2


def runs(node: StallingNode) -> list[tuple[str, str, int]]:
    """What the worker reported: (done or failed, id, attempt)."""
    return [(kind, task_id, attempt) for kind, task_id, attempt, _ in node.reports]


def test_a_link_remembers_a_bounded_number_of_ids_it_gave_back_the_oldest_forgotten(node, thread_worker,
                                                                                   monkeypatch) -> None:
    """Fault simulated: a node (buggy or hostile) sends DISPATCH after late
    DISPATCH of new ids, each after a silence, and never welcomes the worker
    again. What the link remembers of them is bounded (``MAX_LATE_IDS``,
    made 2 here; the mutation that dropped the bound passed every test):
    the oldest is forgotten, so sent again late it is given back again,
    while the newest, sent again, runs."""
    monkeypatch.setattr("miyaq.worker.late_dispatch.MAX_LATE_IDS", 2)
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    sent_before = node_clock()
    silence(node, link)
    dispatch(node, *(delivery(t, "nap", 0.0) for t in ("a", "b", "c")), sent=sent_before)
    wait_for(lambda: node.pump() or node.returned, what="a, b and c given back")
    assert list(link.late.ids) == ["b", "c"]
    sent_before = node_clock()
    silence(node, link)
    dispatch(node, delivery("a", "nap", 0.0), delivery("c", "nap", 0.0), sent=sent_before)
    wait_for(lambda: node.pump() or "c" in node.done, what="c run")
    wait_for(lambda: node.pump() or len(node.returned) > 1, what="a given back again")
    assert [r["ids"] for r in node.returned] == [["a", "b", "c"], ["a"]] and "a" not in node.done
