"""Results on their way to one node: DONE, FAILED and TOUCH, batched.

Handlers append; one long-lived flusher greenlet, woken by an event (not a
greenlet spawned per flush), sends what has piled up meanwhile, in bounded
messages. A runner that reports a result with nothing left to run sends the
outbox itself instead (:meth:`Outbox.hold`, :meth:`Outbox.send_now`): a lone
task's result leaves without a switch to the flusher, and the results of a
burst, queued while the backlog lasted or reported in the same pass of the
hub as another runner's (tasks that ended together), still leave together.

Reports on tasks another node gave this worker (its node was lost: see
:mod:`miyaq.worker.routing`) wait in lists of their own and leave in
messages that say ``"credit": false``: the slot they free is the lost
node's, so this node must not grant one for them. So do the reports of a
worker that is stopping: it takes no more tasks.

A batch leaves the outbox only once its send succeeded: a send
that fails puts the batch back at the front and raises, so the worker's
supervisor logs it, counts it and runs the flusher again after a backoff
(escalating to stopping the worker if sends keep failing). The
outbox stays bounded without a limit of its own: every entry is a task this
worker holds, and the node grants no new task until it hears of a result.
So are the touches: a task touched again before the flush is touched once.
"""
from __future__ import annotations

import logging
from itertools import islice
from typing import Any, Callable

from ..errors import MiyaqError
from ..protocol import commands as c
from ..runtime import RESTART, green
from .config import RESULT_BYTES_PER_MESSAGE, RESULTS_PER_MESSAGE

logger = logging.getLogger(__name__)

Post = Callable[[bytes, dict[str, Any]], None]
Spawn = Callable[..., Any]


class Outbox:
    """``post(command, body)`` sends one message or raises; ``spawn`` is the
    worker supervisor's (the flusher runs under the ``RESTART`` policy)."""

    def __init__(self, post: Post, spawn: Spawn, name: str) -> None:
        self._post = post
        self._spawn = spawn
        self.name = name
        self.done: list[list[Any]] = []
        self.failed: list[list[Any]] = []
        self.done_elsewhere: list[list[Any]] = []       # tasks another node gave us: no slot back here
        self.failed_elsewhere: list[list[Any]] = []
        self.touches: dict[str, None] = {}             # an ordered set: one entry per task touched
        self._pending = False          # results wait for the flusher
        self._started = False          # the flusher greenlet was spawned
        self._held = False             # a runner sends right after adding (no flusher wake-up)
        self._wanted = green.Event()

    def __len__(self) -> int:
        return (len(self.done) + len(self.failed) + len(self.done_elsewhere) + len(self.failed_elsewhere)
                + len(self.touches))

    def unsent(self) -> set[str]:
        """The ids of the tasks whose DONE or FAILED waits here."""
        return {item[0] for items in (self.done, self.failed, self.done_elsewhere, self.failed_elsewhere)
                for item in items}

    def add_done(self, task_id: str, attempt: int, result: bytes | None, elsewhere: bool = False) -> None:
        """``elsewhere``: another node gave us the task (no slot back here)."""
        (self.done_elsewhere if elsewhere else self.done).append([task_id, attempt, result])
        self._schedule()

    def add_failed(self, task_id: str, attempt: int, error: dict[str, Any], elsewhere: bool = False) -> None:
        (self.failed_elsewhere if elsewhere else self.failed).append([task_id, attempt, error])
        self._schedule()

    def add_touch(self, task_id: str) -> None:
        """Touching a task already waiting to be touched adds nothing: a
        handler may touch thousands of times between two yields."""
        self.touches[task_id] = None
        self._schedule()

    def hold(self) -> None:
        """The caller adds a result and calls :meth:`send_now` right after,
        without yielding: adding does not wake the flusher meanwhile."""
        self._held = True

    def send_now(self) -> None:
        """Send what is queued from the caller's greenlet and end the hold. A
        failed send is logged and left to the flusher, which sends it again
        under its supervisor's policy (backoff, then stopping the worker)."""
        self._held = False
        done = self.done
        if (len(done) == 1 and not self.failed and not self.done_elsewhere and not self.failed_elsewhere
                and not self.touches):
            # The lone task's case, by the short way: one DONE of one result
            # (what flush would send, without its loops over the other lists).
            try:
                self._post(c.DONE, {"done": done})
            except MiyaqError as err:
                logger.warning("%s; the flusher sends it again", err.message)
                self._schedule()
                return
            self.done = []
            self._pending = False
            return
        if not len(self):
            return
        try:
            self.flush()
        except MiyaqError as err:
            logger.warning("%s; the flusher sends it again", err.message)
            self._schedule()

    def _schedule(self) -> None:
        if self._held:
            return
        if not self._pending:
            self._pending = True
            if self._started:
                self._wanted.set()
            else:
                self._started = True
                self._spawn(self.name, self._flusher, policy=RESTART)

    def _flusher(self) -> None:
        """Flush, then wait to be woken; raises when a send fails (the
        supervisor restarts it, and it flushes first)."""
        while True:
            self._wanted.clear()
            self.flush()
            self._wanted.wait()

    def flush(self) -> None:
        """Send everything queued. Raises (with nothing lost) if a send fails."""
        if self.done:
            self._send("done", c.DONE, {})
        if self.failed:
            self._send("failed", c.FAILED, {})
        if self.done_elsewhere:
            self._send("done_elsewhere", c.DONE, {"credit": False})
        if self.failed_elsewhere:
            self._send("failed_elsewhere", c.FAILED, {"credit": False})
        self._send_touches()
        self._pending = False

    def _send(self, name: str, command: bytes, extra: dict[str, Any]) -> None:
        """Send the list ``name`` (DONE or FAILED items) in bounded messages;
        what a failed send did not take goes back to its front."""
        field = "done" if command == c.DONE else "failed"
        while items := getattr(self, name):
            n = _batch_size(items)
            batch = items[:n]
            setattr(self, name, items[n:])
            try:
                self._post(command, {field: batch, **extra})
            except BaseException:
                getattr(self, name)[:0] = batch
                raise

    def _send_touches(self) -> None:
        """Send the touches in messages of at most MAX_TOUCH_IDS ids, the
        most the node accepts; what a failed send did not take goes back to
        the front. Before (2026-12-05), every touch() since the last flush
        left in one TOUCH: over 10,000 (a handler touching per chunk of CPU
        work) and the node refused them all, so the lease ran out and the
        task ran again and again; the processes pool once sent 514,273 ids
        (over 16 MiB), and the node dropped the connection."""
        while self.touches:
            ids = list(islice(self.touches, c.MAX_TOUCH_IDS))
            for task_id in ids:
                del self.touches[task_id]
            try:
                self._post(c.TOUCH, {"ids": ids})
            except BaseException:
                self.touches = {**dict.fromkeys(ids), **self.touches}
                raise


def _batch_size(items: list[list[Any]]) -> int:
    """Items in the next message: at most RESULTS_PER_MESSAGE, and at most
    RESULT_BYTES_PER_MESSAGE bytes of DONE results unless the first alone
    is larger (always at least one). A large result never joins others:
    before (2026-12-04) up to 4 MiB of them and a 13 MiB one made a message
    over the node's 16 MiB, which it refused or dropped the connection for."""
    size, n = 0, 0
    for item in items:
        result = item[2]
        size += len(result) if isinstance(result, bytes) else 0
        if n and (n >= RESULTS_PER_MESSAGE or size > RESULT_BYTES_PER_MESSAGE):
            break
        n += 1
    return n
