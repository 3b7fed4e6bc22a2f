"""A worker's READY read by a node that died before it answered. A raw
ROUTER plays the node (tests/played_node.py); a real
:class:`~miyaq.worker.runner.Worker` runs in a thread. No timing is
asserted: waits are bounded guards (``wait_for``)."""
from __future__ import annotations

from typing import Any

import pytest
import zmq
from played_node import PlayedNode

import miyaq
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(60)

app = miyaq.App()


@app.task(name="noop")
def noop() -> None:
    return None


class ReadyCounting(PlayedNode):
    """Bound to ``port`` when given (a node restarted on its port); counts
    the READYs it reads, and answers them only if ``answering``."""

    def __init__(self, port: int | None = None, answering: bool = True) -> None:
        if port is None:
            super().__init__()
        else:
            self.ctx = zmq.Context()
            self.sock = self.ctx.socket(zmq.ROUTER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.bind(f"tcp://127.0.0.1:{port}")
            self.endpoint = f"tcp://127.0.0.1:{port}"
            self.link = None
            self.done, self.failed, self.reports, self.returned = {}, {}, [], []
        self.answering = answering
        self.readies = 0

    def read(self, peer: bytes, command: bytes, data: Any) -> None:
        if command == b"READY":
            self.readies += 1
        super().read(peer, command, data)


def test_a_ready_read_by_a_node_that_died_unanswering_is_sent_again(thread_worker) -> None:
    """Fault: the node reads the worker's READY and is killed before it
    answers (or something else listening on its port reads and closes); a
    node is then started on the same port. ZeroMQ reconnects the worker's
    socket, but the READY had left on the closed connection: the worker
    waited for an answer that never came and never registered -- 518
    acknowledged tasks of its queue never ran in a review's kill -9 round.
    The link now queues a READY again when a connection whose handshake
    succeeded closes before the node answered."""
    first = ReadyCounting(answering=False)
    port = int(first.endpoint.rsplit(":", 1)[1])
    worker = thread_worker(app, first.endpoint, concurrency=1, prefetch=0)
    try:
        wait_for(lambda: first.pump() or first.readies == 1, what="the first node to read the READY")
    finally:
        first.close()           # killed, unanswering: the connection closes
    second = ReadyCounting(port)
    try:
        wait_for(lambda: second.pump() or second.readies >= 1, timeout=20.0,
                 what="the node on the same port to get a READY")
        wait_for(lambda: second.pump() or any(link.answered for link in worker.worker.links),
                 what="the worker registered with it")
    finally:
        second.close()
