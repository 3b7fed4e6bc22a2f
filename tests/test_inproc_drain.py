"""A node drained with ``miyaq leave`` while it runs a task, in-process
(miyaq.testing.inprocess): it leaves the ring, hands its copies off and runs
the task to its end; no new holder starts the task while that run goes on
(docs/cluster.md, "Handoff" and "Runbook": done as documented, nothing runs
twice).

The clock is the cluster's own (``cluster.advance``): the task's 60 s
lease is never waited for in real time.
"""
from __future__ import annotations

import pytest

from miyaq.store.task import RUNNING

OFFSET = 5.0


def _running_on_the_leaving_node(cluster) -> tuple[str, dict]:
    """A task whose holders are n3 (its runner) and n2, running on n3 for a
    test worker with a 60 s lease: (task id, each node's test worker)."""
    tid = next(t for t in (cluster.task_id() for _ in range(10_000)) if cluster.holders(t) == ["n3", "n2"])
    workers = {n: cluster.worker(n) for n in cluster.nodes}
    cluster.accepted([cluster.submit("n3", tid, timeout=60)])
    cluster.wait_until(lambda: workers["n3"].runs(tid), what="the task running on n3")
    cluster.wait_until(lambda: cluster["n2"].task(tid) is not None and cluster["n2"].task(tid).timer_at is not None
                       and cluster["n2"].task(tid).timer_at > cluster["n3"].task(tid).lease_end,
                       what="n2's standby copy told that n3 runs it")
    return tid, workers


def _no_second_run(cluster, tid: str, workers: dict, seconds: int) -> None:
    """Advance the clock a second at a time up to (not past) the runner's
    lease end: no holder but n3 starts the task, and n3 still runs it."""
    for _ in range(seconds):
        cluster.advance(1.0)
        cluster.settle(0.02)
        started = [n for n in ("n1", "n2") if workers[n].times(tid)]
        assert not started, f"started again on {started} while n3 still runs it"
    assert workers["n3"].runs(tid) and cluster["n3"].task(tid).state == RUNNING


@pytest.mark.parametrize("order", ["runner-last", "runner-first"])
def test_a_node_drained_while_it_runs_a_task_is_not_run_again_by_a_new_holder(inproc, order):
    """Fault: n3 runs a task (lease 60 s) whose standby copy is on n2; n3
    is drained (the ring becomes n1, n2). Both hand their copies to n1, the
    new holder: n2's record (a waiting copy, its eta one offset on) and n3's
    (running, with its lease end). When n2's came first, n1 kept its time
    and ignored n3's: one offset later it asked the ring's members (not n3,
    gone from the ring), heard n2 was a standby after it, and started the
    task while n3's worker still ran it. The runner's record now makes the
    copy wait for its lease, whichever came first."""
    cluster = inproc(3, replicas=2, replica_offset=OFFSET)
    tid, workers = _running_on_the_leaving_node(cluster)
    held = cluster.net.hold("REPLICATE", src="n3", dst="n1") if order == "runner-last" else None
    cluster.publish(["n1", "n2"])         # n3 drained: out of the ring, still running its task
    if held is not None:
        cluster.wait_until(lambda: cluster.net.messages("ANSWER", src="n1", dst="n2", answering="REPLICATE"),
                           what="n2's handoff answered by n1")
        held.release()
    cluster.wait_until(lambda: any(m.fate == "delivered" for m in
                                   cluster.net.messages("REPLICATE", src="n3", dst="n1")),
                       what="n3's handoff delivered to n1")
    cluster.settle(0.1)
    _no_second_run(cluster, tid, workers, 40)


def test_a_standby_asks_a_node_that_left_the_ring_before_it_takes_a_task_over(inproc):
    """Fault: as above, but n3's own handoff of the running task never
    reaches n1 (lost): n1 has only n2's record and, one offset later, asks
    before it takes over. Before, it asked the ring's members only, and n3
    -- out of the ring, running the task -- was not asked. Nodes that left
    the ring lately are asked too: n3 answers that it runs the task, and n1
    waits for its lease."""
    cluster = inproc(3, replicas=2, replica_offset=OFFSET)
    tid, workers = _running_on_the_leaving_node(cluster)
    cluster.net.drop("REPLICATE", src="n3", dst="n1")
    cluster.publish(["n1", "n2"])
    cluster.wait_until(lambda: cluster["n1"].task(tid) is not None, what="n2's handoff stored on n1")
    _no_second_run(cluster, tid, workers, 40)
    assert cluster.net.messages("QUERY", src="n1", dst="n3"), "n1 never asked n3"
