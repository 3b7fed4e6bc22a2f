"""What the node does with each command on the service socket.

One method per command; each validates its body with
:mod:`miyaq.protocol.fields` before touching state, so a bad request is
refused whole (a SUBMIT per task: each task of a batch is accepted or
rejected on its own). Requests that expect an answer carry ``req`` and get a REPLY
or an ERROR with the same ``req``.

Reports (DONE, FAILED, TOUCH, ACK, NACK) apply only to tasks leased to the
reporter -- the worker registered on the connection (or dropped from it
lately), the pull consumer's key or connection -- whatever the mode (keys
or not); anything else is ignored and counted (``Engine.not_leased``).
With keys, the key of the message being handled is ``endpoint.caller``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from miyaq.constants import MAX_LONG_POLL, MAX_RETRY_DELAY, MAX_WITHDRAW
from miyaq.core.consumers import Origin, PullConsumer, WorkerConsumer, pull_principal
from miyaq.core.core import Core
from miyaq.core.attempts import leased_to
from miyaq.core.gate import SHUTTING_DOWN
from miyaq.core.handles import NodeRole, ScheduleSink, StatusReport
from miyaq.core.waiters import outcome, ran_elsewhere
from miyaq.errors import InvalidField, MiyaqError, NotFound, ShuttingDown
from miyaq.protocol import commands as c
from miyaq.protocol import fields as f
from miyaq.protocol.periodic import schedules_from_wire
from miyaq.protocol.recordspec import STARTED_ELSEWHERE, failure_from_wire
from miyaq.protocol.taskspec import check_id, check_queue, task_from_wire
from miyaq.runtime import LOG, Supervisor, green, monotonic, wall
from miyaq.store.task import ALL_STATES

logger = logging.getLogger(__name__)

#: DEAD retries and purges run at once, each in a greenlet of its own
#: (:meth:`ServiceHandlers._in_background`); one more waits for a place.
BACKGROUND_OPS = 2


class ServiceHandlers:
    """The command table of the service socket.

    ``role`` is where submits go and what RING answers; ``schedules`` keeps
    the periodic schedules a READY declares; ``status`` answers STATUS;
    ``webhooks`` is False when the node runs without its HTTP gateway (which
    delivers webhook tasks), so such tasks are refused at submit.
    """

    def __init__(self, core: Core, role: NodeRole, schedules: ScheduleSink, status: StatusReport,
                 webhooks: bool, supervisor: Supervisor) -> None:
        self.config = core.config
        self.engine = core.engine
        self.endpoint = core.endpoint
        self.workers = core.workers
        self.dispatcher = core.dispatcher
        self.waiters = core.waiters
        self.gate = core.gate
        self.role = role
        self.schedules = schedules
        self.report = status
        self.webhooks = webhooks
        self.max_batch = core.config.max_batch
        self.check_writable = core.check_writable
        self.background = supervisor.pool("dead-letter operation", BACKGROUND_OPS, LOG)
        self.supervisor = supervisor
        self.views = core.views
        self.lists_workers = core.lists_workers
        self.workers_list = core.workers_list

    def install(self) -> None:
        table = {
            c.SUBMIT: self.submit, c.STATUS: self.status, c.TASK: self.task, c.CANCEL: self.cancel,
            c.RESULT: self.result, c.TASKS: self.tasks, c.DEAD: self.dead, c.RECEIVE: self.receive,
            c.ACK: self.ack, c.NACK: self.nack, c.READY: self.ready, c.HEARTBEAT: self.heartbeat,
            c.CREDIT: self.credit, c.DONE: self.done, c.FAILED: self.failed, c.TOUCH: self.touch,
            c.RETURN: self.give_back, c.BYE: self.bye, c.RING: self.ring, c.WITHDRAW: self.withdraw,
        }
        self.endpoint.handlers.update(table)

    # -- producers -------------------------------------------------------------------
    def submit(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        tasks = f.items(body, "tasks", self.max_batch)
        intake = self.role.intake
        ack = self.endpoint.ack
        self.endpoint.work += len(tasks)
        for wire in tasks:
            try:
                task = task_from_wire(wire, now, self.config)
                if task.url is not None and not self.webhooks:
                    raise InvalidField("this node runs without its HTTP gateway (--http-port 0), which "
                                       "delivers webhooks: submit webhook tasks to a node that has it",
                                       field="url")
            except MiyaqError as err:
                task_id = wire.get("id") if isinstance(wire, dict) else None
                ack(identity, [task_id if isinstance(task_id, str) else "", c.REJECTED, err.to_wire()])
                continue
            intake.submit(task, now, identity)

    def status(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        """STATUS in its turn (:mod:`miyaq.core.view_lane`): at once when its
        turn has come, else from a greenlet of its own once it has (the
        reader goes on); refused ``busy`` when too many wait."""
        req = body.get("req")
        wait = self.views.turn()
        if wait <= 0:      # built and encoded in the measured time
            self.views.timed(lambda: self.endpoint.reply(identity, req, self.report(now)))
            return
        lists_workers = self.lists_workers()      # by this message's key: another is handled by then

        def in_its_turn() -> None:
            self.views.wait(wait)
            self.views.timed(lambda: self.endpoint.reply(identity, req, self._status_for(lists_workers)))

        self.supervisor.spawn("status in its turn", in_its_turn, policy=LOG)

    def _status_for(self, lists_workers: bool) -> dict[str, Any]:
        """STATUS as a key that may (or may not) list the workers sees it."""
        status = self.report(wall())
        if lists_workers:
            status["workers"] = self.workers_list()
        else:
            status.pop("workers", None)
        return status

    def ring(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        info = self.role.ring_info()
        info["node"] = self.config.id      # which member answered (a client on ipc:// does not dial it again)
        # What this node takes in a SUBMIT: a client keeps its messages and tasks within them.
        info["limits"] = {"max_message": self.config.max_message, "max_payload": self.config.max_payload,
                          "max_batch": self.config.max_batch}
        self.endpoint.reply(identity, body.get("req"), info)

    def task(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        task_id = check_id(body.get("id"))
        self.endpoint.reply(identity, body.get("req"), {"task": self.engine.info(task_id)})

    def cancel(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        """CANCEL: ``cancelled: true`` is answered once the log has the
        cancellation (a restart cannot undo it); ``false`` at once. Refused
        ``busy`` (``storage``), nothing changed, while the log cannot be
        written; a task not held here is ``not_found`` as ever (a client asks
        the other members then)."""
        task_id = check_id(body.get("id"))
        self.check_writable(task_id)
        cancelled, state = self.engine.cancel(task_id, now)
        self.endpoint.reply_stored(identity, body.get("req"), {"cancelled": cancelled, "state": state}, cancelled)

    def result(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        req = body.get("req")
        task_id = check_id(body.get("id"))
        timeout = f.number(body, "timeout", 0.0, hi=MAX_LONG_POLL)
        engine = self.engine
        stone = engine.result(task_id)
        if stone is not None:
            if stone.state == STARTED_ELSEWHERE:
                raise ran_elsewhere(task_id)
            self.endpoint.reply(identity, req, outcome(stone))
            return
        task = engine.table.dead.get(task_id)
        if task is not None:
            self.endpoint.reply(identity, req, outcome(task))
            return
        if task_id not in engine.table.live:
            raise NotFound(f"no task {task_id}")
        if timeout <= 0:
            self.endpoint.reply(identity, req, {"state": engine.table.live[task_id].state, "timeout": True})
            return
        endpoint = self.endpoint

        def answer(body: dict[str, Any] | None) -> None:
            if body is None:     # handed off meanwhile: another holder has it
                endpoint.error(identity, NotFound(f"no task {task_id} here any more (moved to other holders)"),
                               req)
            elif body.get("state") == STARTED_ELSEWHERE:
                endpoint.error(identity, ran_elsewhere(task_id), req)
            else:
                endpoint.reply(identity, req, body)

        def refuse(err: MiyaqError) -> None:     # the node stops (shutting_down)
            endpoint.error(identity, err, req)

        self.waiters.wait_result(task_id, monotonic() + timeout, answer, Origin(identity, self._key(), req), refuse)

    def tasks(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        queue = body.get("queue")
        if queue is not None:
            check_queue(queue)
        state = f.string(body, "state", None, max_len=16)
        if state is not None and state not in ALL_STATES:
            raise InvalidField(f"field 'state' must be one of {', '.join(ALL_STATES)}", field="state")
        limit = f.integer(body, "limit", 100, lo=1, hi=10_000)
        self.endpoint.reply(identity, body.get("req"),
                            {"tasks": self.engine.list_tasks(queue, state, limit)})

    def dead(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        op = f.string(body, "op", max_len=16)
        queue = body.get("queue")
        if queue is not None:
            check_queue(queue)
        req = body.get("req")
        if op == "list":
            limit = f.integer(body, "limit", 100, lo=1, hi=10_000)
            self.endpoint.reply(identity, req, {"tasks": self.engine.dead_list(queue, limit)})
        elif op == "retry":
            self.endpoint.check_writable()
            ids = self._ids(body, queue)
            self._in_background(identity, req, "retry",
                            lambda between: {"retried": self.engine.dead_retry(ids, now, between)})
        elif op == "purge":
            ids = f.string_list(body, "ids", None, max_items=10_000, max_len=64)
            self.endpoint.check_writable()
            self._in_background(identity, req, "purge",
                                lambda between: {"purged": self.engine.dead_purge(queue, ids, between)})
        else:
            raise InvalidField("field 'op' must be list, retry or purge", field="op")

    def _in_background(self, identity: bytes, req: Any, op: str,
                       work: Callable[[Callable[[], None]], dict[str, Any]]) -> None:
        """Run a DEAD retry or purge -- up to a whole dead-letter queue,
        ``max_dead`` tasks, 0.4 s -- in a greenlet of its own that yields to
        the hub every ``HUB_SLICE`` (``work`` is given the check to call
        between tasks), and reply when it is done and the log has what it
        changed (:meth:`ServiceEndpoint.reply_stored`): the service socket's
        other messages are read meanwhile. At most ``BACKGROUND_OPS`` run at
        once; another one waits for a place, and the reader with it (so a
        client sending them in a loop is held, not queued without bound)."""
        endpoint = self.endpoint

        def run() -> None:
            try:
                endpoint.reply_stored(identity, req, work(green.FairShare().check), True)
            except MiyaqError as err:
                endpoint.error(identity, err, req)
            except Exception:  # a bug must not go unanswered (the pool logs nothing it is not told)
                logger.exception("DEAD %s failed (a bug: please report this traceback); dead letters it reached "
                                 "before the failure may be %s already: `miyaq dead list` shows what is left", op,
                                 "retried" if op == "retry" else "purged")
                endpoint.error(identity, MiyaqError("internal error while handling the request"), req)

        self.background.spawn(run)

    def _ids(self, body: dict[str, Any], queue: str | None) -> list[str]:
        ids = f.string_list(body, "ids", None, max_items=10_000, max_len=64)
        if ids is None:
            ids = [t.id for t in self.engine.table.iter_dead(queue)]
        return ids

    # -- pull consumers ----------------------------------------------------------------
    def receive(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        req = body.get("req")
        queues = f.string_list(body, "queues", ["default"], max_items=64)
        for q in queues:
            check_queue(q, "queues")
        timeout = f.number(body, "timeout", 0.0, hi=MAX_LONG_POLL)
        endpoint = self.endpoint

        def answer(task: dict[str, Any] | None) -> bool:
            return endpoint.reply(identity, req, {"task": task})

        if not self.gate.is_open:
            raise ShuttingDown(_held_message(self.gate.held()))
        consumer = PullConsumer(queues, monotonic() + timeout, answer, self._puller(identity),
                                Origin(identity, self._key(), req))
        limits = self.dispatcher.limits
        if limits.active:
            open_lanes = limits.open(queues, now)
            task = self.engine.take(open_lanes, now) if open_lanes else None
            if task is not None:
                limits.acquire(task.queue)
        else:
            task = self.engine.take(queues, now)
        if task is not None:
            self.engine.start(task, consumer, now)
            consumer.credit = 0
            if not consumer.deliver([task]):
                self.engine.release(task.id, now)
            return
        if timeout <= 0:
            answer(None)
            return
        self.waiters.wait_pull(consumer, lambda err: endpoint.error(identity, err, req))   # the node stops

    def ack(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        task_id = check_id(body.get("id"))
        attempt = f.integer(body, "attempt", lo=0)
        result = f.binary(body, "result", None, max_len=self.config.max_payload)
        self.check_writable(task_id)
        ok = self.engine.complete(task_id, attempt, result, now, by=self._puller(identity))
        self.endpoint.reply_stored(identity, body.get("req"), {"ok": ok}, ok)

    def nack(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        task_id = check_id(body.get("id"))
        attempt = f.integer(body, "attempt", lo=0)
        if f.boolean(body, "returned", False):
            # Given back unstarted (a cancelled receive): no attempt spent, ready again at once.
            self.check_writable(task_id)
            ok = self.engine.give_back(task_id, attempt, self._puller(identity), now)
            self.endpoint.reply_stored(identity, body.get("req"), {"ok": ok}, ok)
            return
        error = failure_from_wire(body.get("error"))
        retry = f.boolean(body, "retry", True)
        delay = f.number(body, "delay", None, hi=MAX_RETRY_DELAY)
        self.check_writable(task_id)
        ok = self.engine.fail(task_id, attempt, error, retry, delay, now, by=self._puller(identity))
        self.endpoint.reply_stored(identity, body.get("req"), {"ok": ok}, ok)

    def withdraw(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        """WITHDRAW: this connection no longer waits for these long-polls
        (RESULT, RECEIVE); they are dropped unanswered. Not answered."""
        reqs = body.get("reqs")
        if not isinstance(reqs, list) or len(reqs) > MAX_WITHDRAW or any(type(r) is not int for r in reqs):
            raise InvalidField(f"field 'reqs' must be a list of at most {MAX_WITHDRAW} integers", field="reqs")
        self.waiters.withdraw(identity, reqs)

    def _key(self) -> str | None:
        """The name of the key behind the message being handled (None without keys)."""
        caller = self.endpoint.caller
        return caller.name if caller is not None else None

    def _puller(self, identity: bytes) -> str:
        return pull_principal(identity, self._key())

    def _reporter(self, identity: bytes) -> str:
        """Who reports on this connection: its worker (a connection that never
        registered is nobody, and may report on nothing)."""
        return self.workers.principal_of(identity) or "nobody"

    # -- workers -----------------------------------------------------------------------
    def ready(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        wid = f.string(body, "worker", max_len=128)
        queues = f.string_list(body, "queues", ["default"], max_items=64)
        for q in queues:
            check_queue(q, "queues")
        names = f.string_list(body, "names", [], max_items=10_000, max_len=256)
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
        key = self._key()
        self.workers.check_id(wid, key)                    # another key's worker id: forbidden
        self.workers.check_room(identity, wid)             # max_workers registered: busy
        self.schedules.declare(schedules, wid, now, key)   # refuses (nothing kept): limits, another key's
        worker = self.workers.register(identity, wid, queues, capacity, now, info, key)
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
            self.workers.seen_wid(wid, self._key())   # the worker's heartbeat thread (same key only)
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
                                 f"result of {len(result)} bytes exceeds max_payload {limit}"}, False, None, now,
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
        by = worker_principal if worker_principal is not None else self._puller(identity)
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
        ids = f.string_list(body, "ids", max_items=100_000, max_len=64)
        worker = self._worker(identity, now)
        for task_id in ids:
            if worker is not None and task_id in worker.running:
                self.engine.release(task_id, now)
        if f.boolean(body, "credit", True):
            self._grant(worker, len(ids))

    def bye(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        worker = self.workers.by_identity.get(identity)
        if worker is not None:
            self.workers.drop(worker, "said goodbye", now)


def _held_message(reasons: list[str]) -> str:
    if SHUTTING_DOWN in reasons:
        return "node is shutting down and leases no new tasks"
    return f"node leases no new tasks while {' and '.join(reasons)}; try again shortly"


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
