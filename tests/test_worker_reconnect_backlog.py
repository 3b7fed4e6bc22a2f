"""What a worker does with the tasks its node sent it when that node answers
RECONNECT (it took the worker for lost -- frozen past its liveness -- or it
restarted). A raw ROUTER plays the node (tests/played_node.py); a real
:class:`~miyaq.worker.runner.Worker` runs in a thread. No timing is
asserted: waits are bounded guards (``wait_for``)."""
from __future__ import annotations

from typing import Any

import pytest
from fuzz_inputs import pack
from played_node import PlayedNode

import miyaq
from miyaq.protocol import commands as c
from miyaq.runtime import green
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(60)

app = miyaq.App()


@app.task(name="nap")
def nap(seconds: float) -> float:
    green.sleep(seconds)
    return seconds


def delivery(task_id: str, seconds: float) -> list[Any]:
    return [task_id, "default", "nap", pack([[seconds], {}]), 1, 60.0]


class ReadyKeepingNode(PlayedNode):
    """Keeps the body of each READY it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.readies: list[dict[str, Any]] = []

    def read(self, peer: bytes, command: bytes, data: Any) -> None:
        if command == c.READY:
            self.readies.append(data)
        super().read(peer, command, data)


@pytest.fixture
def node():
    played = ReadyKeepingNode()
    yield played
    played.close()


def dispatch(node: PlayedNode, *deliveries: list[Any]) -> None:
    node.send([c.TAG, c.DISPATCH, pack({"tasks": list(deliveries)})])


def test_a_reconnect_drops_the_unstarted_tasks_of_that_node(node, thread_worker) -> None:
    """Fault: a worker frozen (SIGSTOP) past its liveness holds a running
    task and prefetched ones; its node takes it for lost, puts them all back
    and another worker runs them; the worker runs again and is answered
    RECONNECT. Before, it registered again and then started its prefetched
    tasks -- no longer leased to it, already done elsewhere: each ran twice.
    Now it drops them unreported (the node leases them anew), keeps the
    running one, which reports, and registers with the slots they held."""
    worker = thread_worker(app, node.endpoint, concurrency=1, prefetch=2).worker
    wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
    dispatch(node, delivery("t1", 1000.0), delivery("t2", 0.0), delivery("t3", 0.0))
    wait_for(lambda: node.pump() or ("t1" in worker.running and len(worker.backlog) == 2),
             what="t1 running, t2 and t3 waiting")
    node.send([c.TAG, c.RECONNECT, pack({"reason": "unknown worker; send READY"})])
    wait_for(lambda: node.pump() or len(node.readies) == 2, what="READY again")
    assert node.readies[1]["credit"] == worker.base_credit - 1, "only the running task holds a slot"
    assert not worker.backlog and "t1" in worker.running
    node.send([c.TAG, c.ABORT, pack({"ids": ["t1"]})])      # its runner is free again
    wait_for(lambda: node.pump() or "t1" in node.failed, what="t1 stopped and reported")
    dispatch(node, delivery("t4", 0.0))
    wait_for(lambda: node.pump() or "t4" in node.done, what="t4 run")
    assert [r[1] for r in node.reports] == ["t1", "t4"], node.reports
    assert not node.returned


def test_reconnects_sent_before_the_workers_ready_arrived_register_it_once(node, thread_worker) -> None:
    """Fault: a worker thawed after its node took it for lost sends several
    messages (results, heartbeats) before it reads anything; the node
    answers each with RECONNECT. Heeding every one, the worker sent READY
    again and again, and each READY made the node drop the registration
    before it and count the tasks it had just leased there as lost (an
    attempt each). The RECONNECTs that came before the WELCOME of the READY
    they caused are ignored: one READY, one registration."""
    thread_worker(app, node.endpoint, concurrency=1)
    wait_for(lambda: node.pump() or len(node.readies) == 1, what="the worker's READY")
    for _ in range(3):
        node.send([c.TAG, c.RECONNECT, pack({"reason": "unknown worker; send READY"})])
    wait_for(lambda: node.pump() or len(node.readies) >= 2, what="READY again")
    dispatch(node, delivery("t1", 0.0))     # it reads on past the RECONNECTs: t1 runs
    wait_for(lambda: node.pump() or "t1" in node.done, what="t1 run")
    assert len(node.readies) == 2, node.readies
    node.send([c.TAG, c.RECONNECT, pack({"reason": "unknown worker; send READY"})])   # after the WELCOME: heeded
    wait_for(lambda: node.pump() or len(node.readies) == 3, what="READY for a RECONNECT after the WELCOME")
