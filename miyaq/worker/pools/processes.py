"""The processes pool: handlers run in ``--concurrency`` child processes.

For CPU-bound handlers: each child is a fresh interpreter
(:mod:`~miyaq.worker.pools.child`, started with ``subprocess`` -- spawned,
never forked from the gevent parent) that imports the app and runs one task
at a time, so N children use N cores. The parent keeps the node links,
credit and heartbeats; it talks to its children over one ROUTER on an
``ipc://`` socket in a private temporary directory
(:mod:`~miyaq.worker.pools.private_dir`: removed at stop, and by the next
worker's start if this one was killed).

Stopping a handler means ending its process: a cancel or a timeout kills
the child (SIGKILL) and starts a fresh one, as does a child that dies by
itself (its task fails, retryable). ``max_tasks_per_child`` retires a child
after that many tasks (for leaky handlers). Children that keep dying at
start (an app that fails to import there) stop the worker.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from typing import Any

from ...errors import ConfigError
from ...runtime import CRITICAL, green, monotonic
from ...runtime.sockets import SocketFactory, zmq
from ..config import (
    CHILD_EXIT_WAIT, CHILD_MESSAGE_BYTES, CHILD_START_TIMEOUT, MAX_INBOUND_MESSAGE, MAX_RESTARTS_PER_MINUTE,
    PROCESS_POLL,
)
from ..execute import Outcome, interrupted
from ..jobs import Job
from .base import NotStarted, PoolParts
from .child import EXIT, HELLO, OUTCOME, RUN, TOUCH, pack, unpack
from .child_process import ChildProcess, child_command, kill_group
from .private_dir import PrivateDir

logger = logging.getLogger(__name__)


def _bind_problem(endpoint: str, exc: Exception) -> str:
    """Why the pool's ``ipc://`` socket could not bind, in a line: most
    often a ``TMPDIR`` too long for a unix socket's path."""
    path = endpoint[len("ipc://"):]
    limit = getattr(zmq, "IPC_PATH_MAX_LEN", 107) or 107
    if len(path.encode()) > limit:
        return (f"its socket's path would be {len(path.encode())} bytes, and a unix socket's is at most {limit}; "
                "set TMPDIR to a shorter directory")
    return str(exc)


class ProcessPool:
    name = "processes"

    def __init__(self, parts: PoolParts) -> None:
        if not parts.app_spec:
            raise ConfigError("the processes pool needs the app as module:attribute to start its children")
        # (the Worker checks this first, before it opens anything)
        self.parts = parts
        self.dir = PrivateDir()     # 0700: only this user may connect; removed if this worker is killed
        self.endpoint = f"ipc://{self.dir.path}/children"
        # Sockets of its own, without the worker's CURVE: only this user can
        # reach the private directory, and a worker's key (a client's) cannot bind.
        self.factory = SocketFactory(green=True, max_message=CHILD_MESSAGE_BYTES)
        try:
            self.sock = self.factory.router(self.endpoint)
        except BaseException as exc:
            self.factory.close()
            self.dir.remove()
            if isinstance(exc, zmq.ZMQError):
                raise ConfigError(f"the processes pool cannot listen for its children in {self.dir.path}: "
                                  f"{_bind_problem(self.endpoint, exc)}") from None
            raise
        self.children: dict[bytes, ChildProcess] = {}
        self.retired: list[ChildProcess] = []
        self.idle: Any = green.Queue()
        self.generation = 0
        self.deaths: list[float] = []
        self.stopping = False
        # Jobs whose run call waits for an idle child (none started), and
        # those taken back from them as the worker stops (withdraw).
        self.waiting: list[Job] = []
        self.withdrawn: set[Job] | None = None
        self.all_ready = green.Event()     # every child said hello once (logged)
        self.job_control: list[Any] = []    # the SIGTSTP and SIGCONT handlers, cancelled at stop

    # -- children -----------------------------------------------------------------------
    def start(self) -> None:
        self.parts.supervisor.spawn("pool reader", self._read, policy=CRITICAL)
        # Critical too: without it dead children would never be replaced.
        self.parts.supervisor.spawn("pool keeper", self._keep, policy=CRITICAL)
        for _ in range(self.parts.concurrency):
            self._start_child()
        logger.info("processes pool: starting %d child process(es)", self.parts.concurrency)
        if threading.current_thread() is threading.main_thread():     # signals are the main thread's
            self.job_control = [green.on_signal(signal.SIGTSTP, self._job_stop),
                                green.on_signal(signal.SIGCONT, self._job_continue)]

    def _job_stop(self) -> None:
        """SIGTSTP (a terminal's Ctrl-Z): stop the children's process groups,
        then this process, as a shell's job stops whole. The children lead
        groups of their own, which the terminal's signals do not reach:
        before (review43, 2026-12-08) they ran on while their worker stood
        stopped. A SIGSTOP sent to the worker alone cannot be passed on."""
        self._signal_children(signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)

    def _job_continue(self) -> None:
        """SIGCONT (``fg``, ``bg``, ``kill -CONT``): continue the children's groups too."""
        self._signal_children(signal.SIGCONT)

    def _signal_children(self, signum: int) -> None:
        # Only children not reaped yet: till then a pid names its own group.
        for child in [*self.children.values(), *self.retired]:
            if child.proc.returncode is None:
                kill_group(child.pid, signum)

    def ready(self, timeout: float) -> bool:
        """Wait until every child has said hello once (later replacements are
        not waited for: a task waiting for one keeps its lease, see
        :meth:`_free_child`). Before 2026-12-05 (evening) the worker registered its full
        capacity as its children began to import the app: the node leased it
        tasks that waited there -- 0.2 s of a core a child, seconds for many
        -- while other workers sat idle."""
        return bool(self.all_ready.wait(timeout))

    def _start_child(self) -> ChildProcess:
        self.generation += 1
        identity = f"c{self.generation}".encode()
        # A group of its own (syncteam, 2026-12-08): killed at a timeout, a
        # cancel or a stop, the child takes along the programs its handler
        # runs (before, they ran on as orphans). It still shares the session,
        # the terminal and its output; the terminal's signals now reach the
        # worker alone, which passes on a stop.
        proc = subprocess.Popen(child_command(self.endpoint, identity, str(self.parts.app_spec), os.getpid(),
                                              self.parts.log_level), process_group=0)
        child = ChildProcess(identity, proc)
        self.children[identity] = child
        return child

    def _replace(self, child: ChildProcess, why: str) -> None:
        """End ``child`` (kill it if it still runs) and start another in its place."""
        child.kill()
        self.children.pop(child.identity, None)
        self.retired.append(child)
        if not self.stopping:
            logger.info("processes pool: child %d %s; starting another", child.pid, why)
            self._start_child()

    # -- running ------------------------------------------------------------------------
    def _free_child(self, job: Job) -> ChildProcess | None:
        """The next idle child. While ``job`` waits for one -- children being
        started (at the worker's start) or replaced (after a timeout, a
        crash, ``--max-tasks-per-child``) -- it is touched each time it has
        waited a quarter of its timeout (:meth:`PoolParts.touch`: the node
        extends its lease, the watchdog its deadline), so the wait costs no
        lease. Before 2026-12-05 the node's lease ran on meanwhile and only
        the worker's deadline was moved when a child came: tasks that ran
        well within their timeout were lost at the node (at-most-once ones
        dead-lettered), 31 of 32 queued at the start of a worker of 32
        children in an audit's run. Once the worker stops (:meth:`withdraw`)
        raises :class:`NotStarted`, or returns None for a job stopped
        (cancelled, timed out) while it waited."""
        self.waiting.append(job)
        try:
            while True:
                if self.withdrawn is not None:
                    if job.stop_reason is not None and job not in self.withdrawn:
                        return None     # cancelled or timed out meanwhile: ends as such, with no child
                    raise NotStarted(job.task_id)
                wait = job.touch_after - monotonic()
                try:
                    child: ChildProcess | None = self.idle.get(timeout=max(0.0, wait)) \
                        if wait != float("inf") else self.idle.get()
                except green.QueueEmpty:
                    self.parts.touch(job.task_id)
                    continue
                if child is None:       # woken by withdraw
                    continue
                if self.withdrawn is not None:
                    self.idle.put(child)
                    continue
                if child.identity in self.children:     # not replaced while it waited in the queue
                    return child
        finally:
            self.waiting.remove(job)

    def withdraw(self) -> list[Job]:
        """The worker stops: the jobs waiting for a child are taken back, none
        of them started (their run calls raise :class:`NotStarted`, and so do
        later ones). Before 2026-12-06 they were counted as running: the stop
        waited the whole grace for them (for children still importing the
        app), then its BYE had the node put them back with an attempt spent
        -- an at-most-once task dead-lettered without ever running."""
        if self.withdrawn is None:
            self.withdrawn = set()
        taken = [job for job in self.waiting if job not in self.withdrawn and job.stop_reason is None]
        self.withdrawn.update(taken)
        for _ in self.waiting:
            self.idle.put(None)     # wakes one waiter each
        return taken

    def run(self, job: Job) -> Outcome:
        child = self._free_child(job)
        if job.stop_reason is not None:                 # cancelled, or timed out, waiting for a child
            if child is not None:
                self.idle.put(child)
            return interrupted(job.stop_reason)
        assert child is not None        # None only for a job stopped meanwhile
        child.job, child.outcome = job, green.AsyncResult()
        job.handle = child
        try:
            self.sock.send_multipart([child.identity, *pack(RUN, {
                "id": job.task_id, "name": job.name, "queue": job.queue, "attempt": job.attempt,
                "timeout": job.timeout, "body": job.body, "node": job.node})])
        except zmq.ZMQError as exc:
            child.finish(("failed", {"type": "WorkerLost", "retry": True,
                                     "message": f"could not hand the task to child {child.pid}: {exc}"}))
            self._replace(child, "could not be reached")
        outcome: Outcome = child.outcome.get()
        job.handle = None
        child.job, child.outcome = None, None
        if child.identity in self.children:
            child.tasks += 1
            limit = self.parts.max_tasks_per_child
            if limit and child.tasks >= limit:
                self._retire(child)
            else:
                self.idle.put(child)
        return outcome

    def _retire(self, child: ChildProcess) -> None:
        """Let ``child`` exit by itself after its last task; start a fresh one."""
        self.children.pop(child.identity, None)
        child.retiring_since = monotonic()
        self.retired.append(child)
        try:
            self.sock.send_multipart([child.identity, *pack(EXIT, {})])
        except zmq.ZMQError:
            child.kill()
        logger.debug("processes pool: child %d retired after %d task(s)", child.pid, child.tasks)
        if not self.stopping:
            self._start_child()

    def interrupt(self, job: Job) -> None:
        child = job.handle
        if isinstance(child, ChildProcess) and child.job is job and job.stop_reason is not None:
            child.finish(interrupted(job.stop_reason))
            self._replace(child, f"stopped: task {job.task_id} {job.stop_reason.message}")

    # -- the parent's two greenlets ----------------------------------------------------------
    def _read(self) -> None:
        """The one reader of the children's socket. A child touching in a
        tight loop keeps it busy: it yields now and then
        (:class:`~miyaq.runtime.green.FairShare`), or the outbox would not
        send those touches (nor anything else) until the child stopped."""
        share = green.FairShare()
        while True:
            share.check()
            frames = self.sock.recv_multipart()
            if len(frames) < 2 or sum(len(f) for f in frames) > MAX_INBOUND_MESSAGE:
                continue
            child = self.children.get(frames[0])
            if child is None:
                continue    # a child already replaced
            try:
                kind, body = unpack(frames[1:])
            except ValueError:
                logger.warning("processes pool: malformed message from child %d", child.pid)
                continue
            if kind == HELLO:
                if child.ready:
                    # Said hello twice (a bug in a child, or another process of
                    # this user on its socket): it is in the idle queue already,
                    # and twice there it would be given two tasks at once.
                    logger.warning("processes pool: child %d said hello again; ignored", child.pid)
                    continue
                child.ready = True
                self.idle.put(child)
                if not self.all_ready.is_set() and all(c.ready for c in self.children.values()):
                    self.all_ready.set()
                    logger.info("processes pool: %d child process(es) ready", len(self.children))
            elif kind == OUTCOME:
                outcome = body.get("outcome")
                if child.job is not None and body.get("id") == child.job.task_id and isinstance(outcome, list):
                    child.finish((outcome[0], outcome[1]))
            elif kind == TOUCH:
                if isinstance(body.get("id"), str):
                    self.parts.touch(body["id"])

    def _keep(self) -> None:
        """Notice children that died or hang at start, and reap retired ones."""
        while True:
            green.sleep(PROCESS_POLL)
            now = monotonic()
            for child in list(self.children.values()):
                code = child.proc.poll()
                if code is not None:
                    self._died(child, code)
                elif not child.ready and now - child.started > CHILD_START_TIMEOUT:
                    self._count_death()
                    self._replace(child, f"did not start within {CHILD_START_TIMEOUT:.0f}s")
            for child in list(self.retired):
                if child.proc.poll() is not None:
                    self.retired.remove(child)
                elif child.retiring_since is not None and now - child.retiring_since > CHILD_EXIT_WAIT:
                    child.kill()
                    child.retiring_since = None

    def _died(self, child: ChildProcess, code: int) -> None:
        if self.stopping:
            return
        if child.job is not None:
            logger.warning("processes pool: child %d died (exit %s) running task %s", child.pid, code,
                           child.job.task_id)
            child.finish(("failed", {"type": "WorkerLost", "retry": True,
                                     "message": f"the child process running this task exited ({code})"}))
        else:
            logger.warning("processes pool: child %d died (exit %s)", child.pid, code)
            self._count_death()
        self._replace(child, "died")

    def _count_death(self) -> None:
        """Children dying with no task (at import, at start) are a broken
        setup: past the budget, stop the worker rather than spin."""
        now = monotonic()
        self.deaths = [t for t in self.deaths if t > now - 60] + [now]
        if len(self.deaths) > MAX_RESTARTS_PER_MINUTE:
            raise ConfigError(f"{len(self.deaths)} child processes died within a minute; "
                               "does the app import in a fresh interpreter? (see the log above)")

    def stop(self) -> None:
        """Kill the children still running a handler at once (the worker has
        given their tasks back to the node: run on, they would run beside
        the task's next attempt), and those that never said hello (still
        importing the app: they could not read EXIT; before 2026-12-06 the
        stop waited ``CHILD_EXIT_WAIT`` for them, and a worker whose children
        import slowly exited past grace + 5 s), tell the idle ones to exit
        and kill what is left after a short wait. Never raises. Before 2026-12-05 a busy child
        was waited for like an idle one, ``CHILD_EXIT_WAIT`` (5 s), though it
        could not read EXIT: its handler ran on after its task was put back,
        and with ``--processes N`` the supervisor, whose patience is the
        grace plus the same 5 s, killed the worker before it ended cleanly."""
        self.stopping = True
        for handler in self.job_control:
            handler.cancel()
        try:
            for child in list(self.children.values()):
                if child.job is not None or not child.ready:
                    child.kill()
                    continue
                try:
                    self.sock.send_multipart([child.identity, *pack(EXIT, {})])
                except zmq.ZMQError:
                    pass
            deadline = monotonic() + CHILD_EXIT_WAIT
            everyone = list(self.children.values()) + self.retired
            while monotonic() < deadline and any(c.proc.poll() is None for c in everyone):
                green.sleep(PROCESS_POLL / 4)
            for child in everyone:
                child.kill()
                child.proc.wait(CHILD_EXIT_WAIT)
        except Exception:
            logger.exception("processes pool: stopping the children failed")
        finally:
            self.factory.close()
            self.dir.remove()

