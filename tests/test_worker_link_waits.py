"""How a worker's node link waits while its node is not there."""
from __future__ import annotations

import socket
from typing import Any

import zmq

from apps import basic
from miyaq.protocol import codec
from miyaq.protocol import commands as c
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


class EchoingNode:
    """A ROUTER that sends every message back to its sender: what a worker's
    socket reads when its connection looped back to itself (a TCP
    self-connect). With ``welcome`` it answers READY as a node instead."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.welcome = False
        self.peers: list[bytes] = []      # the connection of each READY, in order

    def pump(self) -> None:
        while self.sock.poll(20):
            peer, *frames = self.sock.recv_multipart()
            if frames[1] == c.READY:
                self.peers.append(peer)
                if self.welcome:
                    frames = codec.encode(c.WELCOME, {"node": self.endpoint, "heartbeat": 0.5})
            self.sock.send_multipart([peer, *frames])

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def test_a_worker_whose_own_ready_comes_back_connects_again(thread_worker):
    """Fault: the worker's connection loops back to itself (a TCP
    self-connect, when the node's port is in the ephemeral range and nothing
    listened there as ZeroMQ retried): it reads its own READY. It used to
    take that for the node answering, then heard its own heartbeats for
    ever, and never reached the node once it was up. Now its own READY makes
    it open a fresh connection and register again."""
    echo = EchoingNode()
    try:
        w = thread_worker(basic.app, echo.endpoint, queues=["default"], concurrency=1, heartbeat=0.1)
        link = w.worker.links[0]
        wait_for(lambda: echo.pump() or len(echo.peers) >= 2, what="a READY on a fresh connection")
        assert echo.peers[0] != echo.peers[1] and link.reconnects >= 1 and not link.heard
        echo.welcome = True
        wait_for(lambda: echo.pump() or link.heard, what="the worker registered once a node answers")
    finally:
        echo.close()
