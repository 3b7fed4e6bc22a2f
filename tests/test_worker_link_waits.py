"""How a worker's node link waits while its node is not there."""
from __future__ import annotations

import socket
from typing import Any

from apps import basic
from miyaq.testing.harness import wait_for


def test_a_worker_whose_node_never_answers_waits_a_heartbeat_between_checks(thread_worker):
    """Fault: the node is not there (not started yet, or down for a long
    while). Once its first heartbeat was due, the link used to wait 1 ms at a
    time: about a thousand wake-ups a second, for as long as the node stayed
    away. It now waits a heartbeat between its checks, and still diagnoses
    the endpoint and sends READY when the node comes."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))     # bound, never listening: connections are refused
        endpoint = f"tcp://127.0.0.1:{blocker.getsockname()[1]}"
        w = thread_worker(basic.app, endpoint, queues=["default"], concurrency=1, heartbeat=0.1)
        link = w.worker.links[0]
        waits: list[Any] = []
        recv = link.sock.recv

        def recording(timeout: Any = None) -> Any:
            waits.append(timeout)
            return recv(timeout)

        link.sock.recv = recording
        wait_for(lambda: len(waits) >= 12, timeout=30, what="a dozen waits of the link")
    assert not link.answered
    heartbeats = [t for t in waits[:12] if t is not None and t >= 0.05]
    assert len(heartbeats) >= 8, waits[:12]
