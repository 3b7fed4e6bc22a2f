"""A raw ROUTER playing a worker's node, for tests of what a node may send a
worker (tests/test_worker_fuzz.py, tests/test_worker_played_node.py)."""
from __future__ import annotations

from typing import Any

import msgpack
import zmq
from fuzz_inputs import pack

from miyaq.protocol import codec
from miyaq.protocol import commands as c


class PlayedNode:
    """A ROUTER standing in for the worker's node: welcomes READY, sends a
    HEARTBEAT at each pump (as a node does: a WELCOME of the fuzz may have
    set the shortest heartbeat a worker follows), keeps DONE and FAILED, and
    sends the worker whatever it is told."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.link: bytes | None = None
        self.done: dict[str, Any] = {}
        self.failed: dict[str, Any] = {}
        self.reports: list[tuple[str, str, int, Any]] = []   # ("done" | "failed", id, attempt, result | error)
        self.returned: list[dict[str, Any]] = []             # RETURN bodies

    heartbeat = 60.0
    """The heartbeat its WELCOME names."""
    answering = True
    """False: it reads on but sends nothing (no HEARTBEAT, no WELCOME)."""

    def pump(self, timeout_ms: int = 20) -> None:
        if self.link is not None and self.answering:
            self.send(codec.encode(c.HEARTBEAT, {"node": "n0"}))
        while self.sock.poll(timeout_ms):
            frames = self.sock.recv_multipart()
            timeout_ms = 0
            if len(frames) != 4:
                continue
            peer, _tag, command, body = frames
            self.read(peer, command, msgpack.unpackb(body, raw=False))

    def read(self, peer: bytes, command: bytes, data: Any) -> None:
        """One worker message (a subclass may look at it first)."""
        if command == c.READY:
            if self.answering:
                self.welcome(peer)
        elif command == c.DONE:
            self.done.update((item[0], item[2]) for item in data["done"])
            self.reports.extend(("done", item[0], item[1], item[2]) for item in data["done"])
        elif command == c.FAILED:
            self.failed.update((item[0], item[2]) for item in data["failed"])
            self.reports.extend(("failed", item[0], item[1], item[2]) for item in data["failed"])
        elif command == c.RETURN:
            self.returned.append(data)

    def welcome(self, peer: bytes) -> None:
        self.link = peer
        self.send([c.TAG, c.WELCOME, pack({"node": "n0", "heartbeat": self.heartbeat, "service": self.endpoint})])

    def send(self, frames: list[bytes]) -> None:
        assert self.link is not None
        self.sock.send_multipart([self.link, *frames])

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()
