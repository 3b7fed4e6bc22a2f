"""Heartbeats from a native thread, so a CPU-bound handler that keeps the
gevent hub busy does not make the node declare the worker lost.

The thread has its own plain-pyzmq DEALER per node and sends
``HEARTBEAT {"worker": id, "side": true}``; the node credits it to the worker
with that id. It never touches the worker's greenlet sockets.
"""
from __future__ import annotations

import threading

import zmq

from ..protocol import codec
from ..protocol import commands as c


class Pulse:
    def __init__(self, wid: str, endpoints: list[str], interval: float) -> None:
        self.wid = wid
        self.endpoints = list(endpoints)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="miyaq-pulse", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, endpoint: str) -> None:
        """Beat to one more node (list.append is atomic; the thread picks it up)."""
        self.endpoints.append(endpoint)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        ctx = zmq.Context()
        socks: list[zmq.Socket] = []
        frames = codec.encode(c.HEARTBEAT, {"worker": self.wid, "side": True})
        try:
            while not self._stop.wait(self.interval):
                while len(socks) < len(self.endpoints):
                    sock = ctx.socket(zmq.DEALER)
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.setsockopt(zmq.SNDHWM, 4)
                    sock.setsockopt(zmq.IMMEDIATE, 1)   # never queue beats for a dead node
                    sock.connect(self.endpoints[len(socks)])
                    socks.append(sock)
                for sock in socks:
                    try:
                        sock.send_multipart(frames, zmq.NOBLOCK)
                    except zmq.Again:
                        pass
        finally:
            for sock in socks:
                sock.close(linger=0)
            ctx.term()
