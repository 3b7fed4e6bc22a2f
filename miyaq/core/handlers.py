"""What the node does with each command on the service socket: a
producer's and a pull consumer's here (:class:`ServiceHandlers`, which
installs the whole table), a worker's in :mod:`miyaq.core.worker_commands`.

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

from miyaq.constants import LONE_SUBMIT_TASKS, MAX_LONG_POLL, MAX_RETRY_DELAY, MAX_WITHDRAW
from miyaq.core.consumers import Origin, PullConsumer, pull_principal
from miyaq.core.core import Core
from miyaq.core.gate import RECONCILING, SHUTTING_DOWN
from miyaq.core.handles import NodeRole, ScheduleSink, StatusReport
from miyaq.core.view_rows import FIRST_ROWS, msgpack_in_slices
from miyaq.core.result_answers import outcome, ran_elsewhere, unknown_here
from miyaq.core.worker_commands import WorkerCommands
from miyaq.errors import InvalidField, MiyaqError, NotFound, ShuttingDown
from miyaq.protocol import commands as c
from miyaq.protocol import fields as f
from miyaq.protocol.failurespec import failure_from_wire
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.protocol.taskspec import check_id, check_queue, receive_queues, task_from_wire
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
        self.worker_commands = WorkerCommands(core, role, schedules)
        self.supervisor = supervisor
        self.views = core.views
        self.lists_workers = core.lists_workers
        self.workers_list = core.workers_list

    def install(self) -> None:
        table = {
            c.SUBMIT: self.submit, c.STATUS: self.status, c.TASK: self.task, c.CANCEL: self.cancel,
            c.RESULT: self.result, c.TASKS: self.tasks, c.DEAD: self.dead, c.RECEIVE: self.receive,
            c.ACK: self.ack, c.NACK: self.nack, c.RING: self.ring, c.WITHDRAW: self.withdraw,
            **self.worker_commands.table(),
        }
        self.endpoint.handlers.update(table)

    # -- producers -------------------------------------------------------------------
    def submit(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        tasks = f.items(body, "tasks", self.max_batch)
        intake = self.role.intake
        ack = self.endpoint.ack
        self.endpoint.work += len(tasks)
        # A small SUBMIT, its connection's first of the burst: its tasks may
        # be leased before the burst's end (Dispatcher.dispatch_lone).
        lone = len(tasks) <= LONE_SUBMIT_TASKS and self.endpoint.first_submit(identity)
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
            if lone:
                self.dispatcher.note_lone(task)

    def status(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        """STATUS in its turn (:mod:`miyaq.core.view_lane`): at once when its
        turn has come and the view has at most ``FIRST_ROWS`` rows (one
        slice: :mod:`miyaq.core.view_rows`, :meth:`views_fit_one_slice`);
        else from a greenlet of its own, once its turn has come, built and
        packed in slices between which the loop's others run (the reader
        goes on meanwhile). Refused ``busy`` when too many wait."""
        req = body.get("req")
        caller = self.endpoint.caller
        turn = self.views.turn(caller.role.value if caller is not None else "open")
        if turn.now and self.views_fit_one_slice():      # built and encoded in the measured time
            self.views.timed(lambda: self.endpoint.reply(identity, req, self.report(now)), turn)
            return
        lists_workers = self.lists_workers()      # by this message's key: another is handled by then

        def answer() -> None:
            status = self._status_for(lists_workers)
            if len(status["queues"]) <= FIRST_ROWS:      # one slice: packed at once
                self.endpoint.reply(identity, req, status)
                return
            status["req"] = req
            self.endpoint.reply_packed(identity, req, msgpack_in_slices(status, self.views.slices))

        # Granted at once: later turns wait behind it until its greenlet begins it.
        expected = self.views.expect() if turn.now else None

        def in_its_turn() -> None:
            try:
                self.views.wait(turn)
                self.views.timed(answer, turn, sliced=True, expected=expected)
            finally:
                if expected is not None:
                    expected()      # killed before it began

        self.supervisor.spawn("status in its turn", in_its_turn, policy=LOG)

    def views_fit_one_slice(self) -> bool:
        """Whether a view of every queue has at most ``FIRST_ROWS`` rows --
        the queues with tasks and those workers take from, counted once per
        worker (an upper bound, cheap): built in one go, never sliced."""
        rows = len(self.engine.counts)
        for worker in self.workers.by_identity.values():
            rows += len(worker.queues)
            if rows > FIRST_ROWS:
                return False
        return rows <= FIRST_ROWS

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
        try:
            info = self.engine.info(task_id)
        except NotFound as err:
            raise unknown_here(err.message, self.gate.holds(RECONCILING)) from None
        self.endpoint.reply(identity, body.get("req"), {"task": info})

    def cancel(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        """CANCEL: ``cancelled: true`` is answered once the log has the
        cancellation (a restart cannot undo it); ``false`` at once. Refused
        ``busy`` (``storage``), nothing changed, while the log cannot be
        written; a task not held here is ``not_found`` as ever (a client asks
        the other members then). In a cluster a holder that is not the
        task's first answers with the first holder's answer, or from its
        own copy, marked ``unconfirmed``, when that one does not answer
        (:meth:`NodeRole.cancel <miyaq.core.handles.NodeRole.cancel>`):
        the REPLY may then come after those to later requests."""
        task_id = check_id(body.get("id"))
        self.check_writable(task_id)
        req = body.get("req")

        def answer(result: dict[str, Any] | MiyaqError) -> None:
            if isinstance(result, MiyaqError):
                self.endpoint.error(identity, result, req)
            else:
                self.endpoint.reply_stored(identity, req, result, result["cancelled"])

        self.role.cancel(task_id, now, answer)

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
            raise unknown_here(f"no task {task_id}", self.gate.holds(RECONCILING))
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

        origin = Origin(identity, self.endpoint.caller_name(), req)
        self.waiters.wait_result(task_id, monotonic() + timeout, answer, origin, refuse)

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
            ids = self.engine.retryable_dead(queue)     # not those whose arguments were lost
        return ids

    # -- pull consumers ----------------------------------------------------------------
    def receive(self, identity: bytes, body: dict[str, Any], now: float) -> None:
        req = body.get("req")
        queues = receive_queues(body)
        timeout = f.number(body, "timeout", 0.0, hi=MAX_LONG_POLL)
        endpoint = self.endpoint

        def answer(task: dict[str, Any] | None) -> bool:
            return endpoint.reply(identity, req, {"task": task})

        if not self.gate.is_open:
            raise ShuttingDown(_held_message(self.gate.held()))
        consumer = PullConsumer(queues, monotonic() + timeout, answer, self._puller(identity),
                                Origin(identity, self.endpoint.caller_name(), req))
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
            self.dispatcher.send_leased({consumer: [task]}, now)     # an at-most-once one once its start is logged
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

    def _puller(self, identity: bytes) -> str:
        return pull_principal(identity, self.endpoint.caller_name())


def _held_message(reasons: list[str]) -> str:
    if SHUTTING_DOWN in reasons:
        return "node is shutting down and leases no new tasks"
    return f"node leases no new tasks while {' and '.join(reasons)}; try again shortly"
