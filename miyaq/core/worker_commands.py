"""What the node does with a worker's commands on the service socket:
READY, HEARTBEAT, CREDIT, DONE, FAILED, TOUCH, RETURN, BYE
(:class:`WorkerCommands`; the table's other commands are
:class:`~miyaq.core.handlers.ServiceHandlers`'). Each validates its body
before touching state, as the others do.

Reports (DONE, FAILED, TOUCH) apply only to tasks leased to the reporter --
the worker registered on the connection (or dropped from it lately); a
TOUCH with ``req``, a pull consumer's, to what that consumer received --
anything else is ignored and counted (``Engine.not_leased``). A message
from a connection with no worker (the node restarted, or dropped it) is
answered RECONNECT.
"""
from __future__ import annotations

from typing import Any

from miyaq.constants import MAX_RETRY_DELAY
from miyaq.core.attempts import leased_to
from miyaq.core.consumers import WorkerConsumer, pull_principal
from miyaq.core.core import Core
from miyaq.core.gate import SHUTTING_DOWN
from miyaq.core.handles import NodeRole, ScheduleSink
from miyaq.core.service import Handler
from miyaq.core.task_names import MAX_NAMES_PER_WORKER
from miyaq.errors import InvalidField, ShuttingDown
from miyaq.protocol import commands as c
from miyaq.protocol import fields as f
from miyaq.protocol.periodic import schedules_from_wire
from miyaq.protocol.failurespec import failure_from_wire
from miyaq.protocol.taskspec import check_queue


class WorkerCommands:
    """A worker's commands; ``role`` is told of a standby copy touched
    (its runner's node went silent), ``schedules`` keeps the periodic
    schedules a READY declares."""

    def __init__(self, core: Core, role: NodeRole, schedules: ScheduleSink) -> None:
        self.config = core.config
        self.engine = core.engine
        self.endpoint = core.endpoint
        self.workers = core.workers
        self.dispatcher = core.dispatcher
        self.gate = core.gate
        self.role = role
        self.schedules = schedules
        self.max_batch = core.config.max_batch

    def table(self) -> dict[bytes, Handler]:
        """The commands this class answers, for the service socket's table."""
        return {c.READY: self.ready, c.HEARTBEAT: self.heartbeat, c.CREDIT: self.credit, c.DONE: self.done,
                c.FAILED: self.failed, c.TOUCH: self.touch, c.RETURN: self.give_back, c.BYE: self.bye}

    def _reporter(self, identity: bytes) -> str:
        """Who reports on this connection: its worker (a connection that never
        registered is nobody, and may report on nothing)."""
        return self.workers.principal_of(identity) or "nobody"

    def ready(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        wid = f.string(body, "worker", max_len=128)
        queues = f.string_list(body, "queues", ["default"], max_items=c.MAX_READY_QUEUES)
        for q in queues:
            check_queue(q, "queues")
        names = f.string_list(body, "names", [], max_items=MAX_NAMES_PER_WORKER, max_len=256)
        names_only = f.boolean(body, "names_only", False)     # added 2026-12-06: run only these (task_names)
        capacity = f.integer(body, "capacity", 1, lo=1, hi=c.MAX_WORKER_CAPACITY)
        credit = f.integer(body, "credit", capacity, lo=0, hi=capacity)
        schedules = schedules_from_wire(body.get("periodic"), names)
        for schedule in schedules:
            if len(schedule.body) > self.config.max_payload:
                # Every tick's task would be refused: say so now, to the worker.
                raise InvalidField(f"periodic schedule {schedule.name!r}: its arguments ({len(schedule.body)} "
                                   f"bytes) exceed this node's max_payload ({self.config.max_payload})",
                                   field="periodic")
        info = _worker_info(body)
        if self.gate.holds(SHUTTING_DOWN):
            raise ShuttingDown("node is shutting down")
        key = self.endpoint.caller_name()
        self.workers.check_id(wid, key)                    # another key's worker id: forbidden
        self.workers.check_room(identity, wid, queues)     # max_workers, or MAX_SERVED_QUEUES names: busy
        self.schedules.declare(schedules, wid, now, key)   # refuses (nothing kept): limits, another key's
        worker = self.workers.register(identity, wid, queues, capacity, now, info, key,
                                       names if names_only else None)
        worker.credit = 0
        self.dispatcher.grant(worker, credit)

    def _worker(self, identity: bytes, now: float) -> WorkerConsumer | None:
        worker = self.workers.seen(identity)
        if worker is None:
            self.endpoint.send(identity, c.RECONNECT, {"reason": "unknown worker; send READY"})
        return worker

    def heartbeat(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        wid = body.get("worker")
        if isinstance(wid, str) and f.boolean(body, "side", False):
            self.workers.seen_wid(wid, self.endpoint.caller_name())   # the worker's heartbeat thread (same key only)
            return
        self._worker(identity, now)

    def _grant(self, worker: WorkerConsumer | None, n: int) -> None:
        """Credit is the worker's: each finished or returned task frees one of
        its slots. Capped at its capacity so a confused worker cannot inflate it."""
        if worker is not None and n > 0:
            self.dispatcher.grant(worker, min(n, worker.capacity - worker.credit))

    def _grant_for(self, worker: WorkerConsumer | None, body: dict[str, Any], n: int) -> None:
        """The slots ``n`` reports give back, unless the message says
        ``"credit": false`` (reports on tasks another node gave the worker)."""
        if f.boolean(body, "credit", True):
            self._grant(worker, n)

    def credit(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        n = f.integer(body, "n", lo=1, hi=100_000)
        self._grant(self._worker(identity, now), n)

    def done(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        items = f.items(body, "done", self.max_batch * 4)
        for item in items:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and type(item[1]) is int and (item[2] is None or isinstance(item[2], bytes))):
                raise InvalidField("each 'done' item must be [id, attempt, result-bytes-or-nil]", field="done")
        worker = self._worker(identity, now)
        by = self._reporter(identity)
        self.endpoint.work += len(items)
        complete = self.engine.complete
        limit = self.config.max_payload
        for task_id, attempt, result in items:
            if result is not None and len(result) > limit:
                self.engine.fail(task_id, attempt, {"type": "ResultTooLarge", "message":
                                 f"result of {len(result)} bytes exceeds max_payload {limit} (the node's "
                                 f"--max-payload; keep large data elsewhere and return where it is)"}, False, None, now,
                                 by=by)
                continue
            complete(task_id, attempt, result, now, by=by)
        self._grant_for(worker, body, len(items))

    def failed(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        items = f.items(body, "failed", self.max_batch * 4)
        checked = []
        for item in items:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and type(item[1]) is int and isinstance(item[2], dict)):
                raise InvalidField("each 'failed' item must be [id, attempt, error-map]", field="failed")
            checked.append((item[0], item[1], failure_from_wire(item[2]), item[2].get("retry", True) is not False,
                            _delay(item[2].get("delay"))))
        worker = self._worker(identity, now)
        by = self._reporter(identity)
        for task_id, attempt, error, retry, delay in checked:
            self.engine.fail(task_id, attempt, error, retry, delay, now, by=by)
        self._grant_for(worker, body, len(items))

    def touch(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        """TOUCH: extend the leases named. With ``req`` it is a pull
        consumer's request (added 2026-12-05): one id, optionally the
        ``attempt`` received, answered REPLY ``{"ok", "lease_end"?}`` --
        ``ok`` false, like ACK's, when that task or attempt is not leased to
        the caller any more -- and never RECONNECT. Without ``req`` it is a
        worker's, unanswered (a connection with no worker is told RECONNECT)."""
        ids = f.string_list(body, "ids", max_items=c.MAX_TOUCH_IDS, max_len=64)
        req = body.get("req")
        attempt: int | None = None
        if req is not None:
            if len(ids) != 1:
                raise InvalidField("a TOUCH with 'req' touches one task: field 'ids' must hold exactly one id",
                                   field="ids")
            attempt = f.integer(body, "attempt", None, lo=0)
        else:
            self._worker(identity, now)
        # A registered worker touches what was dispatched to it; any other
        # connection is a pull consumer, and touches what it received (its
        # ACK and NACK are checked the same way). Before 2026-12-05 it was
        # "nobody": a pull consumer's TOUCH extended nothing, and a task
        # longer than its timeout ran twice.
        worker_principal = self.workers.principal_of(identity)
        by = (worker_principal if worker_principal is not None
              else pull_principal(identity, self.endpoint.caller_name()))
        live = self.engine.table.live
        touched = None
        for task_id in ids:
            task = live.get(task_id)
            if task is None or (attempt is not None and task.attempt != attempt):
                continue    # gone, or that attempt no longer holds it (as ACK's ok: false)
            if not leased_to(task, None, by):
                self.engine.not_leased += 1
            elif self.engine.touch(task_id, now):
                touched = task
            else:
                self.role.running_elsewhere(task_id, now)   # a standby copy: its runner's node went silent
        if req is not None:
            answer: dict[str, Any] = {"ok": touched is not None}
            if touched is not None:
                answer["lease_end"] = touched.lease_end
            self.endpoint.reply(identity, req, answer)

    def give_back(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        """RETURN: tasks given back unstarted. With ``"stopping": true``
        (added 2026-12-06) the worker is stopping: it is leased nothing more
        here -- its running tasks still report, and BYE follows."""
        ids = f.string_list(body, "ids", max_items=100_000, max_len=64)
        give = f.boolean(body, "credit", True)
        stopping = f.boolean(body, "stopping", False)
        worker = self._worker(identity, now)
        for task_id in ids:
            if worker is not None and task_id in worker.running:
                self.engine.release(task_id, now)
        if give:
            self._grant(worker, len(ids))
        if stopping and worker is not None:
            self.workers.mark_stopping(worker)      # grants nothing from now on; its names no longer count

    def bye(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        """BYE: the worker leaves. With ``started`` (added 2026-12-06) only
        the tasks it names spend an attempt; the others leased to it were
        on their way to it as it left and go back unstarted. Without it
        (an older worker) every task leased to it spends one."""
        started = f.string_list(body, "started", None, max_items=c.MAX_WORKER_CAPACITY, max_len=64)
        worker = self.workers.by_identity.get(identity)
        if worker is not None:
            self.workers.drop(worker, "said goodbye", now, None if started is None else frozenset(started))

def _delay(value: Any) -> float | None:
    """A FAILED item's retry ``delay``: a number from 0 on, at most
    :data:`MAX_RETRY_DELAY` (a longer one -- ``inf`` too -- is that: the
    handler asked for "much later", not "at once"); anything else (negative,
    NaN, not a number) is None, the task's backoff."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return min(float(value), MAX_RETRY_DELAY)
    return None


def _worker_info(body: dict[str, Any]) -> dict[str, Any]:
    """What a READY says of its worker, kept for ``GET /workers`` and the
    console: each field optional, each checked like the rest of the message
    (a value JSON cannot show, kept, would fail every later listing)."""
    info = {"pid": f.integer(body, "pid", None, lo=0, hi=2**31 - 1),
            "host": f.string(body, "host", None, max_len=255),
            "concurrency": f.integer(body, "concurrency", None, lo=1, hi=100_000),
            "pool": f.string(body, "pool", None, max_len=32)}
    return {k: v for k, v in info.items() if v is not None}
