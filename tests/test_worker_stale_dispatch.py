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
    assert link.stale_dispatches == 1
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
    assert link.stale_dispatches == 0 and not node.returned


def test_a_late_dispatch_on_a_busy_link_that_never_went_silent_runs(node, thread_worker, monkeypatch) -> None:
    """A DISPATCH that came late (queued behind others on a slow link) while
    the node's messages kept coming is no sign the node took the worker for
    lost: it runs. Only one sent before a silence as long as the node's
    patience is given back."""
    worker, link = stamped_worker(node, thread_worker, monkeypatch)
    dispatch(node, delivery("t1", "nap", 0.0), sent=node_clock() - 30.0)    # 30 s in a queue
    wait_for(lambda: node.pump() or "t1" in node.done, what="t1 run")
    assert link.stale_dispatches == 0 and not node.returned
