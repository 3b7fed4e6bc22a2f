"""The producer of a chaos run: submits at a fixed rate and records every
submit and its answer.

Open loop: the i-th submit is due at ``start + i / rate`` whatever happened
to the earlier ones (a schedule more than a second behind, because
``submit`` blocked on a full window, is moved forward rather than caught up
in a burst). Each submit gets its id before it is sent and is recorded
(``submit``) before the client sees it, so a start can never precede its
submit in the history. A collector thread records each answer as it
arrives: ``ack`` (the node stored it on ``min_acks`` holders: accepted) or
``fail`` with the error code (the client gave up after ``submit_timeout``;
the task may still exist and run — the checker looks). With
``reject_every`` K, every K-th task is submitted to reject itself
(:func:`miyaq.chaos.tasks.work`), and its submit record says so. With
``payload`` (``--payload``) each task carries padding of a size drawn from
it, and with ``result`` (``--result``) asks its handler for a result of
such a size; the submit record has both (``size``, ``result``), and the
results of the tasks the workers finish during the load are read back
(:meth:`Producer.finished`, :mod:`.reader`). The client's window is then
bounded in bytes too (:func:`window_for`).

:meth:`Producer.finish` stops submitting and waits (bounded) for every
answer; a submit with no answer by then is recorded as ``fail`` with code
``unanswered``. Thread-safe counters feed the live progress line.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from typing import Any

from ..client.client import Client, new_id
from ..client.handle import TaskHandle
from ..errors import MiyaqError
from .history import HistoryWriter
from .reader import ResultReader
from .sizes import SizeSpec
from .tasks import TASK_NAME, work

logger = logging.getLogger(__name__)

COLLECT_EVERY = 0.01
MAX_TASK_TIME = 10.0
WINDOW = 5000
WINDOW_BYTES = 256 * 1024 * 1024
"""Payload bytes the producer's unacknowledged submits may hold at most: a
window of 5,000 tasks of 1 MiB would be 5 GB in the producer alone."""
MIN_WINDOW = 16


def window_for(payload: SizeSpec | None) -> int:
    """The client's window: WINDOW submits, fewer when the largest payload
    would make them more than WINDOW_BYTES (but at least MIN_WINDOW)."""
    if payload is None or payload.high == 0:
        return WINDOW
    return max(MIN_WINDOW, min(WINDOW, WINDOW_BYTES // payload.high))


class Producer:
    def __init__(self, endpoints: list[str], history: HistoryWriter, *, rate: float, duration: float,
                 task_time: float = 0.05, submit_timeout: float = 10.0, window: int | None = None,
                 rng: random.Random | None = None, key: str | None = None, server_key: str | None = None,
                 reject_every: int = 0, payload: SizeSpec | None = None, result: SizeSpec | None = None,
                 busy: bool = False) -> None:
        self.endpoints = endpoints
        self.payload = payload
        self.result = result
        self._pad = bytes(payload.high if payload is not None else 0)     # every task's padding is cut from it
        window = window_for(payload) if window is None else window
        self.reject_every = reject_every
        self._kwargs = {"busy": True} if busy else None      # tasks compute instead of sleeping (--busy)
        self.history = history
        self.rate = rate
        self.duration = duration
        self.task_time = task_time
        self.submit_timeout = submit_timeout
        self.rng = rng or random.Random()
        self.client = Client(endpoints, window=window, submit_timeout=submit_timeout, key=key, server_key=server_key)
        self._wanted: dict[str, int] = {}       # task id -> the result size it was asked for, until offered
        self.reader = ResultReader(self.client, history) if result is not None else None
        self.submitted = 0
        self.acked = 0
        self.failed = 0
        self.accepted: set[str] = set()
        self.refused: set[str] = set()
        self.rejecting: set[str] = set()      # submitted to reject themselves
        self._pending: deque[tuple[TaskHandle, float]] = deque()
        self._answered: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._submitting = True
        self._submitter = threading.Thread(target=self._submit_loop, name="chaos-producer", daemon=True)
        self._collector = threading.Thread(target=self._collect_loop, name="chaos-collector", daemon=True)

    def start(self) -> Producer:
        self._submitter.start()
        self._collector.start()
        if self.reader is not None:
            self.reader.start()
        return self

    def finished(self, task_ids: list[str]) -> None:
        """Tasks the workers finished (their first finish record): each one
        that was asked for a result of some bytes is read back once."""
        if self.reader is None:
            return
        for task_id in task_ids:
            with self._lock:
                size = self._wanted.pop(task_id, None)
            if size:
                self.reader.offer(task_id)

    @property
    def in_flight(self) -> int:
        return self.submitted - self.acked - self.failed

    # -- submitting -----------------------------------------------------------------
    def _task_seconds(self) -> float:
        if self.task_time <= 0:
            return 0.0
        return min(self.rng.expovariate(1.0 / self.task_time), MAX_TASK_TIME)

    def _submit_loop(self) -> None:
        start = time.monotonic()
        end = start + self.duration
        i = 0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= end:
                    return
                due = start + i / self.rate
                if due > now:
                    self._stop.wait(min(due, end) - now)
                    continue
                if now - due > 1.0:        # blocked: move the schedule, do not burst
                    start += now - due - 1.0
                self._submit_one(i)
                i += 1
        finally:
            self._submitting = False

    def _submit_one(self, seq: int) -> None:
        task_id = new_id()
        args: list[Any] = [round(self._task_seconds(), 4), seq]
        sizes: dict[str, int] = {}
        reject = self.reject_every > 0 and seq % self.reject_every == self.reject_every - 1
        if self.payload is not None or self.result is not None:
            sizes["size"] = self.payload.pick(self.rng) if self.payload is not None else 0
            sizes["result"] = self.result.pick(self.rng) if self.result is not None else 0
            args += [reject, self._pad[:sizes["size"]], sizes["result"]]
        elif reject:
            args.append(True)
        if sizes.get("result") and not reject:
            with self._lock:
                self._wanted[task_id] = sizes["result"]
        if reject:
            self.rejecting.add(task_id)
            self.history.write("submit", id=task_id, seq=seq, reject=True, **sizes)
        else:
            self.history.write("submit", id=task_id, seq=seq, **sizes)
        self.submitted += 1
        try:
            handle = self.client.submit(TASK_NAME, args, self._kwargs, id=task_id, **work.options)
        except MiyaqError as exc:       # the window stayed full: never sent
            self._failed(task_id, exc.code, exc.message, sent=False)
            return
        with self._lock:
            self._pending.append((handle, time.time()))

    # -- answers --------------------------------------------------------------------
    def _collect_loop(self) -> None:
        while True:
            with self._lock:
                pending = list(self._pending)
            done_ids = set()
            for handle, _ in pending:
                if handle._accepted.done():    # our own package: the one non-blocking "answered?"
                    self._resolve(handle)
                    done_ids.add(handle.id)
            if done_ids:
                with self._lock:
                    self._pending = deque(p for p in self._pending if p[0].id not in done_ids)
            if not self._submitting and not self._pending and self._stop.is_set():
                return
            time.sleep(max(COLLECT_EVERY, len(pending) / 100_000))   # bounded CPU in an outage

    def _first_answer(self, task_id: str) -> bool:
        with self._lock:
            if task_id in self._answered:
                return False
            self._answered.add(task_id)
            return True

    def _resolve(self, handle: TaskHandle) -> None:
        if not self._first_answer(handle.id):
            return
        try:
            handle.wait_accepted(0)
        except MiyaqError as exc:
            self._failed(handle.id, exc.code, exc.message, sent=True)
            return
        self.history.write("ack", id=handle.id, node=handle.node)
        self.accepted.add(handle.id)
        self.acked += 1

    def _failed(self, task_id: str, code: str, message: str, sent: bool) -> None:
        self.history.write("fail", id=task_id, code=code, error=message[:300], sent=sent)
        self.refused.add(task_id)
        self.failed += 1

    def finish(self, timeout: float | None = None) -> None:
        """Stop submitting, wait for every answer (bounded), then for the
        results queued to be read (bounded by ``timeout`` again), close the client."""
        self._stop.set()
        self._submitter.join(self.submit_timeout + 10.0)
        timeout = self.submit_timeout + 15.0 if timeout is None else timeout
        self._collector.join(timeout)
        with self._lock:
            left, self._pending = list(self._pending), deque()
        for handle, _ in left:
            if self._first_answer(handle.id):
                self._failed(handle.id, "unanswered", "no answer before the run ended", sent=True)
        if self.reader is not None:     # the reads get half the time left for queued ones, half for those under way
            self.reader.finish(timeout / 2, join=timeout / 2)
        try:
            self.client.close(flush=False)
        except MiyaqError as exc:
            logger.warning("closing the producer's client: %s", exc)

    def summary(self) -> dict[str, Any]:
        return {"submitted": self.submitted, "acked": self.acked, "failed": self.failed}

    @property
    def reads_dropped(self) -> int:
        """Results not read because the reader's queue was full."""
        return self.reader.dropped if self.reader is not None else 0
