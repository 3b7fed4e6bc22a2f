"""The producer's reads of results (``miyaq chaos --result``): the RESULT path.

A task that returns a result of a size (:mod:`.tasks`) sends it to its
node in its DONE and the node streams it to the other holders; nobody
asks for it unless a reader does. :class:`ResultReader` asks, through the
producer's own client (``client.result``), for the result of each task the
workers finished during the load -- so a large result crosses from a node
to a client, over a slow link when the node is on one -- and records each
answer in the history: ``{"ev": "read", "id", "size"}`` (bytes of the
result read back) or ``{"ev": "read", "id", "code", "error"}`` (the
client's error: ``timeout``, ...). The checker compares each size with
the one the task was asked for (:mod:`.reads`).

Bounded: at most ``capacity`` tasks wait to be read (an offer beyond is
dropped and counted, not queued), ``threads`` reads run at once, each
waits at most ``timeout``; :meth:`ResultReader.finish` waits at most its
``timeout`` for the queue, then stops the threads (each ends within its
read's ``timeout``). Thread-safe: the runner offers, the threads read.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

from ..errors import MiyaqError
from .history import HistoryWriter

READERS = 4
READ_QUEUE = 2000
READ_TIMEOUT = 20.0
"""Seconds one read waits: a result of 1 MiB crosses a 1 Mbit/s link in 8.4 s."""


class ResultReader:
    def __init__(self, client: Any, history: HistoryWriter, *, threads: int = READERS,
                 capacity: int = READ_QUEUE, timeout: float = READ_TIMEOUT) -> None:
        self.client = client
        self.history = history
        self.timeout = timeout
        self.dropped = 0
        self._queue: queue.Queue[str] = queue.Queue(capacity)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"chaos-reader-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> ResultReader:
        for thread in self._threads:
            thread.start()
        return self

    def offer(self, task_id: str) -> bool:
        """Queue ``task_id`` to be read; False (and counted) when the queue is full or reading stopped."""
        if self._stop.is_set():
            return False
        try:
            self._queue.put_nowait(task_id)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                task_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._read(task_id)
            finally:
                self._queue.task_done()

    def _read(self, task_id: str) -> None:
        try:
            value = self.client.result(task_id, timeout=self.timeout)
        except MiyaqError as exc:
            if not self._stop.is_set():     # after the stop, the producer's client is closing under it
                self.history.write("read", id=task_id, code=exc.code, error=exc.message[:300])
            return
        self.history.write("read", id=task_id, size=len(value) if isinstance(value, bytes) else -1)

    def finish(self, timeout: float, join: float | None = None) -> None:
        """Wait at most ``timeout`` for the queued reads, then stop reading
        (what is still queued is not read) and wait at most ``join`` (a
        read's ``timeout`` and a little, unless told) for the reads under
        way; one still under way then ends when the client closes, and
        records nothing."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        deadline = time.monotonic() + (self.timeout + 1.0 if join is None else join)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
