"""A worker's connection to one node: READY, credit, heartbeats, results.

One greenlet reads the link's DEALER (zmq.green: one waiter per socket);
results are batched in an outbox and sent by one flusher greenlet per batch.
If the node falls silent for ``heartbeat × liveness`` or answers RECONNECT,
the link opens a fresh socket and registers again (the node may have
restarted); tasks still running report on the new socket.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
import zmq.green as zmq

from ..errors import MiyaqError
from ..protocol import codec
from ..protocol import commands as c

if TYPE_CHECKING:
    from .runner import Worker

logger = logging.getLogger(__name__)


class NodeLink:
    def __init__(self, worker: "Worker", ctx: zmq.Context, endpoint: str) -> None:
        self.worker = worker
        self.ctx = ctx
        self.endpoint = endpoint
        self.sock: Any = None
        self.heartbeat = worker.heartbeat
        self.liveness = worker.liveness
        self.last_heard = time.time()
        self.welcomed = False
        self.done: list[list[Any]] = []
        self.failed: list[list[Any]] = []
        self.touches: list[str] = []
        self._flush_pending = False
        self.reconnects = 0
        self._open()

    def _open(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.connect(self.endpoint)
        self.sock = sock
        self.welcomed = False
        self.last_heard = time.time()

    def silent(self) -> bool:
        """The node has not been heard from for heartbeat × liveness."""
        return self.lost or time.time() - self.last_heard > self.heartbeat * self.liveness

    def send(self, command: bytes, body: dict[str, Any]) -> None:
        try:
            self.sock.send_multipart(codec.encode(command, body), zmq.NOBLOCK)
        except zmq.Again:
            logger.debug("send of %s to %s would block; dropped (will be retried)", command, self.endpoint)

    def register(self) -> None:
        w = self.worker
        body = {"worker": w.wid, "queues": w.queues, "names": sorted(w.app.tasks),
                "capacity": w.capacity, "pid": w.pid, "host": w.host, "concurrency": w.concurrency,
                # after a reconnect, slots held by running tasks are not free
                "credit": max(0, w.capacity - w.busy_count(self))}
        if w.app.schedules:
            body["periodic"] = list(w.app.schedules.values())   # docs/periodic.md
        self.send(c.READY, body)

    # -- results -------------------------------------------------------------------
    def report_done(self, task_id: str, attempt: int, result: bytes | None) -> None:
        self.done.append([task_id, attempt, result])
        self._schedule_flush()

    def report_failed(self, task_id: str, attempt: int, error: dict[str, Any]) -> None:
        self.failed.append([task_id, attempt, error])
        self._schedule_flush()

    def touch(self, task_id: str) -> None:
        self.touches.append(task_id)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            gevent.spawn(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        while self.done:
            # Bounded messages: at most 256 results or about 4 MiB each.
            size, n = 0, 0
            for item in self.done:
                if n and (n >= 256 or size > 4 * 1024 * 1024):
                    break
                size += len(item[2] or b"")
                n += 1
            done, self.done = self.done[:n], self.done[n:]
            self.send(c.DONE, {"done": done})
        if self.failed:
            failed, self.failed = self.failed, []
            self.send(c.FAILED, {"failed": failed})
        if self.touches:
            touches, self.touches = self.touches, []
            self.send(c.TOUCH, {"ids": touches})

    # -- the reader ------------------------------------------------------------------
    def serve(self) -> None:
        """Read the node until the worker stops; heartbeat every interval;
        reconnect when the node goes silent."""
        self.register()
        last_beat = time.time()
        while not self.worker.stopping_hard:
            try:
                # A blocking green recv waits correctly on ZeroMQ's edge-triggered
                # fd; the timeout only bounds the wait for the heartbeat check.
                with gevent.Timeout(self.heartbeat, False):
                    frames = self.sock.recv_multipart()
                    self._handle(frames)
                    for _ in range(256):
                        try:
                            frames = self.sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
            except zmq.ZMQError:
                if self.worker.stopping_hard:
                    return
                raise
            now = time.time()
            if now - self.last_heard > self.heartbeat * self.liveness:
                self.reconnects += 1
                logger.warning("node %s silent for %.1fs; reconnecting", self.endpoint, now - self.last_heard)
                self.lost = True
                self.worker.link_silent(self)
                self._open()
                self.register()
            elif now - last_beat >= self.heartbeat:
                last_beat = now
                self.send(c.HEARTBEAT, {"worker": self.worker.wid})

    def _handle(self, frames: list[bytes]) -> None:
        self.last_heard = time.time()
        self.lost = False
        try:
            command, body = codec.decode(frames, c.WORKER_INBOUND, 64 * 1024 * 1024)
        except MiyaqError as err:
            logger.warning("malformed message from node %s: %s", self.endpoint, err.message)
            return
        if command == c.DISPATCH:
            self.worker.accept(self, body.get("tasks") or [])
        elif command == c.WELCOME:
            self.welcomed = True
            if isinstance(body.get("nodes"), list):
                self.worker.discover(body["nodes"])
            hb = body.get("heartbeat")
            if isinstance(hb, (int, float)) and hb > 0:
                self.heartbeat = float(hb)
        elif command == c.HEARTBEAT:
            if isinstance(body.get("nodes"), list):
                self.worker.discover(body["nodes"])
        elif command == c.ABORT:
            self.worker.abort(body.get("ids") or [])
        elif command == c.RECONNECT:
            logger.info("node %s does not know this worker; registering again", self.endpoint)
            self.register()
        elif command == c.ERROR:
            logger.warning("node %s: %s: %s", self.endpoint, body.get("code"), body.get("message"))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
