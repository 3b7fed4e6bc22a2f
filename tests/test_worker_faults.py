"""Workers that die, freeze, spin or run out of lease; nodes that restart.
Each test's docstring names the fault it simulates."""
from __future__ import annotations

from typing import Any

import errno
import logging
import os
import signal
import subprocess
import sys

import pytest

from apps import basic
from miyaq.protocol import commands as c
from miyaq.runtime.sockets import zmq
from miyaq.runtime import monotonic
from miyaq.testing.harness import free_port, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def events(tmp_path):
    path = str(tmp_path / "events.jsonl")
    return path, {"MIYAQ_TEST_EVENTS": path}


def _started(path, task_id):
    return [e for e in basic.read_events(path) if e[0] == "sleep-start" and e[1] == task_id]


@pytest.mark.parametrize("pool", ["gevent", "threads", "processes"])
def test_killed_worker_task_is_put_back_at_once(procs, client_for, events, pool):
    """Fault: kill -9 of the worker running a task, in each pool (with the
    processes pool, of the parent: its children follow it). The node sees
    its heartbeats stop and re-queues the task at once (attempt 2) — long
    before the 300 s lease — and another worker runs it."""
    path, env = events
    node = procs.node("--heartbeat", "0.25", "--liveness", "3")
    c = client_for(node.endpoint)
    victim = procs.worker("apps.basic:app", node.endpoint, 1, "--prefetch", "0", "--pool", pool, env=env)
    handle = c.submit("sleep", [1.0], timeout=300, wait=True)
    wait_for(lambda: _started(path, handle.id), what="task started on the victim")
    victim.kill()
    procs.worker("apps.basic:app", node.endpoint, 1, env=env)
    assert handle.result(30) == 2
    assert [e[2] for e in _started(path, handle.id)] == [1, 2]
    assert c.status()["outcomes"]["lost"] == 1


def test_frozen_worker_is_forgotten_and_its_task_rerun(procs, client_for, events):
    """Fault: SIGSTOP of a worker (heartbeats stop, process still exists).
    The node forgets it after heartbeat × liveness and re-queues its task."""
    path, env = events
    node = procs.node("--heartbeat", "0.25", "--liveness", "3")
    c = client_for(node.endpoint)
    frozen = procs.worker("apps.basic:app", node.endpoint, 1, "--prefetch", "0", env=env)
    handle = c.submit("sleep", [0.5], timeout=300, wait=True)
    wait_for(lambda: _started(path, handle.id), what="task started")
    frozen.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: c.status()["totals"]["workers"] == 0, what="frozen worker forgotten")
        procs.worker("apps.basic:app", node.endpoint, 1, env=env)
        assert handle.result(30) == 2
    finally:
        frozen.signal(signal.SIGCONT)


def test_cpu_bound_handler_does_not_starve_heartbeats(node, client, thread_worker):
    """Fault: a handler that never yields for 2 s (8 heartbeat intervals).
    The worker's native heartbeat thread keeps it alive: the task is not
    re-queued."""
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1, prefetch=0)
    handle = client.submit("spin", [2.0], wait=True)
    assert handle.result(20) > 0
    assert client.status(handle.id)["attempt"] == 1
    assert client.status()["outcomes"].get("lost", 0) == 0


def test_touch_extends_the_lease(node, client, thread_worker):
    """A handler running 3× its lease survives by touching."""
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1)
    handle = client.submit("sleep", [1.2], {"touch_every": 0.05}, timeout=0.4, wait=True)
    assert handle.result(20) == 1


def test_lease_runs_out_without_touch(node, client, thread_worker):
    """Fault: a handler overruns its lease without touching. The worker stops
    it at the end of its lease (docs/semantics.md: in every pool; here the
    gevent pool, at the handler's next yield) and the node puts the task back:
    the next attempt runs and finishes it."""
    basic.EVENTS.clear()
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2)
    handle = client.submit("sleep", [0.8], timeout=0.3, max_retries=1, backoff=0.01, wait=True)
    wait_for(lambda: [e[2] for e in basic.EVENTS if e[0] == "sleep-start" and e[1] == handle.id] == [1, 2],
             what="a second attempt")
    wait_for(lambda: client.status(handle.id)["state"] in ("dead", "done"), what="task ended")
    assert not [e for e in basic.EVENTS if e[0] == "sleep-end" and e[1] == handle.id], \
        "no attempt ran to its end: each was stopped at its timeout"
    assert client.status(handle.id)["state"] == "dead"
    assert client.status(handle.id)["error"]["type"] in ("Timeout", "Lost")


def test_the_watchdog_is_woken_only_by_a_job_due_before_its_next_look(node, client, thread_worker, monkeypatch):
    """An idle worker's watchdog plans its next look WATCHDOG_IDLE ahead (30 s
    here). A job due later than that look runs and ends without waking it
    (one task at a time, tasks with the usual timeouts never do); a job due
    sooner wakes it, and it plans to look at that job's deadline."""
    monkeypatch.setattr("miyaq.worker.watchdog.WATCHDOG_IDLE", 30.0)
    w = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2)
    worker = w.worker
    wait_for(lambda: worker.watchdog.next_look - monotonic() > 20, what="the idle watchdog's next look, 30 s ahead")
    planned = worker.watchdog.next_look
    far = client.submit("sleep", [0.2], timeout=120.0, wait=True)
    assert far.result(20) == 1
    assert worker.watchdog.next_look == planned, "a job due after the watchdog's next look woke it"
    near = client.submit("sleep", [0.5], timeout=10.0, wait=True)
    wait_for(lambda: near.id in worker.running, what="the near job running")
    deadline = worker.running[near.id].deadline
    wait_for(lambda: worker.watchdog.next_look == deadline,
             what="the watchdog planning to look at the near job's deadline")
    assert near.result(20) == 1


def test_worker_reregisters_after_node_restart(procs, client_for):
    """Fault: the node is killed and restarted on the same port. The worker
    notices the silence, reconnects and registers again; new tasks run."""
    node = procs.node("--heartbeat", "0.25")
    procs.worker("apps.basic:app", node.endpoint, 2)
    c = client_for(node.endpoint)
    assert c.call("add", [1, 2], timeout=20) == 3
    node.kill()
    node2 = procs.node("--heartbeat", "0.25", port=node.port)
    c2 = client_for(node2.endpoint)
    wait_for(lambda: c2.status()["totals"]["workers"] == 1, timeout=20, what="worker re-registered")
    assert c2.call("add", [2, 3], timeout=20) == 5


def test_sigterm_on_worker_finishes_running_and_returns_the_rest(procs, client_for, events):
    """SIGTERM on a worker: its running task finishes and reports; tasks it
    held but had not started are given back and run elsewhere."""
    path, env = events
    node = procs.node("--heartbeat", "0.25")
    c = client_for(node.endpoint)
    w = procs.worker("apps.basic:app", node.endpoint, 1, "--prefetch", "3", env=env)
    handles = [c.submit("sleep", [0.6]) for _ in range(4)]
    c.flush()
    wait_for(lambda: len([e for e in basic.read_events(path) if e[0] == "sleep-start"]) == 1,
             what="first task running")
    assert c.status()["queues"]["default"]["running"] == 4      # 1 running + 3 prefetched
    assert w.terminate(20) == 0
    assert c.status()["queues"]["default"]["ready"] == 3         # given back, no attempt spent
    procs.worker("apps.basic:app", node.endpoint, 2, env=env)
    assert sorted(h.result(20) for h in handles) == [1, 1, 1, 1]


def test_sigterm_on_node_lets_running_tasks_finish(procs, client_for, events):
    """SIGTERM on a node: it refuses new submits, waits for the running task
    to report (its result is recorded) and exits cleanly. The client keeps
    the default deadline: with 1 s (before 2026-12-08) a stall of the loaded
    machine past it failed the setup's submit."""
    path, env = events
    node = procs.node("--heartbeat", "0.25")
    c = client_for(node.endpoint)
    procs.worker("apps.basic:app", node.endpoint, 1, env=env)
    handle = c.submit("sleep", [1.0], wait=True)
    wait_for(lambda: _started(path, handle.id), what="task running")
    node.signal(signal.SIGTERM)
    assert node.proc.wait(20) == 0
    ends = [e for e in basic.read_events(path) if e[0] == "sleep-end" and e[1] == handle.id]
    assert ends, "the running task finished before the node exited"
    assert "stopping: 1 running task(s)" in node.log_tail()
    assert os.path.exists(node.log_path)


# -- the worker's own parts failing (issue 8: nothing dies silently) ---------------------


class _FailingSends:
    """Stands in for a link's socket (a HubSocket): the first ``times`` sends of ``command`` raise."""

    def __init__(self, sock, command: bytes, times: int = 1) -> None:
        self._sock = sock
        self._command = command
        self.left = times

    def send(self, frames):
        if frames[1] == self._command and self.left > 0:
            self.left -= 1
            raise zmq.ZMQError(errno.ENOTSUP, "injected send failure")
        return self._sock.send(frames)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_failed_result_send_keeps_the_batch_and_sends_it_again(node, client, thread_worker, caplog):
    """Fault: the worker's socket refuses the DONE message of a finished task,
    twice. The runner's own send (it had nothing else to run) fails, is
    logged and leaves the result to the flusher; the flusher's first send
    fails too, is logged and counted, the batch goes back to the outbox, the
    flusher runs again after a backoff, and the result reaches the node."""
    w = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1).worker
    link = w.links[0]
    wait_for(lambda: client.status()["totals"]["workers"] == 1, what="worker registered")
    failing = link.sock = _FailingSends(link.sock, c.DONE, times=2)
    with caplog.at_level(logging.WARNING):
        assert client.call("add", [2, 3], timeout=20) == 5
    assert failing.left == 0
    assert link.send_errors == 2
    assert "the flusher sends it again" in caplog.text
    assert w.supervisor.crashes[f"flush {node.endpoint}"] == 1
    assert "injected send failure" in caplog.text and "restarting" in caplog.text
    assert len(link.outbox) == 0


def test_a_large_result_never_shares_a_done_message():
    """Fault: results of 3 MiB and 13 MiB wait in the outbox together. Each
    leaves in a message of its own: together (16 MiB and more) they would
    pass a node's ``max_message``, and it would refuse the DONE or drop the
    connection. Small results still go many to a message."""
    from miyaq.worker.outbox import _batch_size
    mib = 1024 * 1024
    assert _batch_size([["a", 1, b"x" * 3 * mib], ["b", 1, b"x" * 13 * mib]]) == 1
    assert _batch_size([["b", 1, b"x" * 13 * mib], ["c", 1, b"x"]]) == 1
    assert _batch_size([[str(i), 1, b"x" * 100] for i in range(300)]) == 256
    # Fault (a slow worker link, 2026-12-06): 4 MiB of results in one DONE took 34 s
    # at 1 Mbit/s, past the node's 30 s wait for a whole message; now at most 64 KiB.
    assert _batch_size([[str(i), 1, b"x" * 1000] for i in range(300)]) == 65


def test_a_lone_result_is_sent_by_its_runner_without_waking_the_flusher(node, client, thread_worker):
    """One task at a time, each runner finds the backlog empty after its task
    and sends the result itself: the flusher greenlet is never needed."""
    w = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2).worker
    for i in range(3):
        assert client.call("add", [i, 1], timeout=20) == i + 1
    link = w.links[0]
    # The worker's thread empties the outbox right after its DONE leaves; the
    # call can return before that line ran (a loaded host): wait for it.
    wait_for(lambda: len(link.outbox) == 0, timeout=10, what="the outbox emptied by the runner")
    assert not link.outbox._started, "the flusher was spawned for lone results"
    assert f"flush {node.endpoint}" not in w.supervisor.live()


def test_runner_that_dies_is_restarted_and_its_task_retried(node, client, thread_worker, caplog):
    """Fault: reporting an outcome raises inside a runner greenlet. The runner
    is logged, counted and restarted (the worker keeps every slot it grants
    credit for), and the task is reported failed so the node retries it at
    once instead of at the end of its lease."""
    w = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2).worker
    link = w.links[0]
    real = link.report_done
    calls = []

    def report_done_once_broken(*args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("injected report failure")
        real(*args)

    link.report_done = report_done_once_broken
    with caplog.at_level(logging.ERROR, logger="miyaq.runtime.supervisor"):
        handle = client.submit("add", [1, 1], backoff=0.01, wait=True)
        assert handle.result(20) == 2
    assert client.status(handle.id)["attempt"] == 2
    assert w.supervisor.crashes["runner"] == 1
    wait_for(lambda: w.supervisor.live().count("runner") == 2, what="the runner restarted")
    assert "greenlet runner died; restarting" in caplog.text
    basic.EVENTS.clear()
    handles = [client.submit("sleep", [0.5]) for _ in range(2)]
    assert [h.result(20) for h in handles] == [1, 1]
    starts = [i for i, e in enumerate(basic.EVENTS) if e[0] == "sleep-start"]
    first_end = next(i for i, e in enumerate(basic.EVENTS) if e[0] == "sleep-end")
    assert len(starts) == 2 and max(starts) < first_end, "both slots ran at once"


@pytest.mark.parametrize("pool", ["gevent", "threads"])
def test_a_pool_that_fails_to_run_a_task_has_it_retried_at_once(node, client, thread_worker, caplog, pool):
    """Fault: the pool raises instead of running a task (the threads pool
    cannot start a thread: ``RuntimeError: can't start new thread``). The
    runner is logged and restarted as for any crash, and the attempt is
    reported failed (retryable ``WorkerError``) so the node retries it at
    once. Before, nothing was reported: the task waited for its lease (300 s
    by default) and held a slot of the worker's credit meanwhile -- with
    ``--prefetch 0`` and one slot, the worker took no other task."""
    w = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1, prefetch=0, pool=pool).worker
    real = w.pool.run
    calls = []

    def run_once_broken(job):
        calls.append(job.task_id)
        if len(calls) == 1:
            raise RuntimeError("can't start new thread")
        return real(job)

    w.pool.run = run_once_broken
    with caplog.at_level(logging.ERROR, logger="miyaq.runtime.supervisor"):
        handle = client.submit("add", [1, 1], backoff=0.01, timeout=300, wait=True)
        assert handle.result(20) == 2
    status = client.status(handle.id)
    assert status["attempt"] == 2 and "pool failed to run this attempt" in str(status.get("error"))
    assert w.supervisor.crashes["runner"] == 1
    assert "can't start new thread" in caplog.text
    assert client.call("add", [2, 3], timeout=20) == 5


def test_link_reader_death_stops_the_worker(node, client, thread_worker, caplog):
    """Fault: the greenlet that reads a node's socket raises (a bug in message
    handling). It is critical: the worker logs it, stops, and marks itself
    crashed (``miyaq worker`` then exits with status 1)."""
    w = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1).worker
    wait_for(lambda: client.status()["totals"]["workers"] == 1, what="worker registered")

    def broken_accept(link, deliveries, received=None):
        raise RuntimeError("injected reader failure")

    w.accept = broken_accept
    with caplog.at_level(logging.CRITICAL):
        client.submit("add", [1, 2], wait=True)
        wait_for(lambda: w._stopped.is_set(), what="the worker stopped")
    assert w.crashed
    assert w.supervisor.fatal is not None and w.supervisor.fatal[0] == f"link {node.endpoint}"
    assert "injected reader failure" in caplog.text
    wait_for(lambda: client.status()["totals"]["workers"] == 0, what="the node saw the worker leave")


def test_a_worker_whose_reader_dies_ends_even_if_stopping_fails(node, client, thread_worker, caplog):
    """Fault: the reader dies (as above) and stopping then meets an error
    too (here: flushing the link's results raises). The worker still ends,
    marked crashed. Before, a failed stop left the process alive, registered
    nowhere and running nothing (a worker out of file descriptors did that)."""
    w = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1).worker
    wait_for(lambda: client.status()["totals"]["workers"] == 1, what="worker registered")

    def broken_accept(link, deliveries, received=None):
        raise RuntimeError("injected reader failure")

    def broken_flush():
        raise RuntimeError("injected stop failure")

    w.accept = broken_accept
    w.links[0].flush = broken_flush
    with caplog.at_level(logging.ERROR):
        client.submit("add", [1, 2], wait=True)
        wait_for(lambda: w._stopped.is_set(), what="the worker ended")
        # The supervisor logs the failed stop after the stop's own finally set
        # _stopped, in the worker's thread: wait for the line, not just the end
        # (a CI run read the log between the two).
        wait_for(lambda: "injected stop failure" in caplog.text, what="the failed stop logged")
    assert w.crashed and w.stopping_hard


@pytest.mark.parametrize("processes", ["1", "2"])
def test_an_app_that_fails_to_import_is_a_one_line_error(processes):
    """Fault: the application module raises while it is imported (it reads
    an environment variable that is not set: KeyError in ``os.py``).
    ``miyaq worker`` ends with one line naming the exception and the app's
    line that raised, exit status 2, as for a module that is not there;
    before, a traceback through runpy and miyaq, exit status 1 (the status
    of a worker that crashed while running)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    done = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "worker", "apps.broken_import:app",
                           "--processes", processes, "--pool", "threads", "--connect", "tcp://127.0.0.1:1"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.rstrip().splitlines()[-1]
    assert line.startswith("miyaq: error: cannot import 'apps.broken_import': KeyError: "
                           "'MIYAQ_TEST_A_SETTING_NOBODY_SETS' (at "), line
    assert line.endswith(f"{os.sep}apps{os.sep}broken_import.py, line 10)"), line


def test_a_worker_group_that_gives_up_on_its_dying_workers_exits_non_zero():
    """Fault: every worker process of ``miyaq worker --processes 2`` exits
    at once (status 3). The supervisor restarts them with a growing delay,
    gives up after more than 10 restarts in a minute, and exits with status
    1, so a service manager sees the failure. Before, it exited 0, as after
    a SIGTERM that stopped it cleanly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    done = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "worker", "apps.dies_in_worker:app",
                           "--processes", "2", "--pool", "threads", "--connect", "tcp://127.0.0.1:1"],
                          capture_output=True, text=True, env=env, timeout=80)
    assert "workers keep dying or cannot start (11 restarts in a minute); giving up" in done.stderr, done.stderr[-3000:]
    assert done.returncode == 1, done.stderr[-3000:]


def test_a_worker_group_kills_workers_stuck_past_grace_all_at_one_deadline(monkeypatch):
    """Fault: three worker processes of ``miyaq worker --processes 3`` do
    not exit after SIGTERM (stuck past their grace). The supervisor waits
    ``grace + CHILD_STOP_SLACK`` seconds in all, then kills every one.
    Before, it waited that long for each in turn: the third was killed
    only after three times the wait. Played on a fake clock (each wait
    moves it by the wait's timeout), so nothing here is timed."""
    from miyaq.worker import launch
    from miyaq.worker.config import CHILD_STOP_SLACK, WorkerConfig

    clock = [1000.0]
    handlers = {}

    class Stuck:
        """A worker process that ignores SIGTERM until killed."""

        def __init__(self, *args, **kwargs):
            self.pid, self.killed, self.returncode = 4242, False, None

        def poll(self):
            if not handlers.get("sent"):
                handlers["sent"] = True
                handlers[signal.SIGTERM](signal.SIGTERM, None)   # SIGTERM reaches the supervisor
            return -9 if self.killed else None

        def send_signal(self, sig):
            pass

        def wait(self, timeout=None):
            if self.killed:
                return -9
            clock[0] += timeout
            raise subprocess.TimeoutExpired("worker", timeout)

        def kill(self):
            self.killed = True

    monkeypatch.setattr(launch.subprocess, "Popen", Stuck)
    monkeypatch.setattr(launch, "monotonic", lambda: clock[0])
    monkeypatch.setattr(launch.time, "sleep", lambda s: None)
    monkeypatch.setattr(launch.signal, "signal", lambda sig, fn: handlers.__setitem__(sig, fn))
    monkeypatch.setattr("miyaq.worker.loader.load_app", lambda spec: None)
    monkeypatch.setattr("miyaq.logs.setup_logging", lambda level: None)
    config = WorkerConfig(processes=3, grace=10.0, pool="threads")
    assert launch.run_supervised("apps.basic:app", config) == 0
    assert clock[0] - 1000.0 <= config.grace + CHILD_STOP_SLACK


@pytest.mark.parametrize("moment", ["during-the-restart-delay", "while-the-restart-starts"])
def test_a_stop_signal_while_a_worker_process_is_restarted_stops_every_process(monkeypatch, moment):
    """Fault: one worker process of ``miyaq worker --processes 2`` died and
    the supervisor restarts it; SIGTERM arrives during the restart delay,
    or while the new process is being started. Before, the supervisor
    started the new process anyway and never told it to stop: it took new
    tasks and was killed mid-task at the end of the grace (an audit saw
    both). Now no process is started once the stop came, and one started
    as it came is told to stop. Played with fake processes, nothing timed."""
    from miyaq.worker import launch
    from miyaq.worker.config import WorkerConfig

    handlers: dict[Any, Any] = {}
    started: list[Any] = []
    died: list[Any] = []

    class Child:
        def __init__(self, *args, **kwargs):
            self.pid = 5000 + len(started)
            self.returncode = None
            self.signals: list[int] = []
            started.append(self)
            if moment == "while-the-restart-starts" and len(started) == 3:
                handlers[signal.SIGTERM](signal.SIGTERM, None)     # lands before it is in the list

        def poll(self):
            if self is started[0] and len(started) == 2 and self.returncode is None:
                self.returncode = 1          # the first one dies once
                died.append(self)
            return self.returncode

        def send_signal(self, sig):
            self.signals.append(sig)
            self.returncode = 0              # stops at once

        def wait(self, timeout=None):
            return self.returncode

        def kill(self):
            raise AssertionError("no process should outlive its grace here")

    def delay(seconds):
        if moment == "during-the-restart-delay" and died and not handlers.get("sent"):
            handlers["sent"] = True
            handlers[signal.SIGTERM](signal.SIGTERM, None)
        if len(started) > 4:
            raise AssertionError("the supervisor keeps starting processes")

    monkeypatch.setattr(launch.subprocess, "Popen", Child)
    monkeypatch.setattr(launch.time, "sleep", delay)
    monkeypatch.setattr(launch.signal, "signal", lambda sig, fn: handlers.__setitem__(sig, fn))
    monkeypatch.setattr("miyaq.worker.loader.load_app", lambda spec: None)
    monkeypatch.setattr("miyaq.logs.setup_logging", lambda level: None)
    assert launch.run_supervised("apps.basic:app", WorkerConfig(processes=2, grace=10.0, pool="threads")) == 0
    if moment == "during-the-restart-delay":
        assert len(started) == 2              # nothing restarted after the stop
    else:
        assert len(started) == 3 and started[2].signals == [signal.SIGTERM]
    assert started[1].signals == [signal.SIGTERM]


def test_worker_that_reaches_no_node_says_why(thread_worker, make_node, caplog):
    """Fault: the worker is pointed at a port where no node listens (the node
    is not started yet). Within seconds it logs, at WARNING, that it cannot
    reach the endpoint, why, and what to try; when a node comes up there it
    registers without a restart."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with caplog.at_level(logging.INFO, logger="miyaq.worker"):
        w = thread_worker(basic.app, endpoint, queues=["default"], concurrency=1).worker
        wait_for(lambda: "cannot reach" in caplog.text, what="the first-contact warning")
        warning = next(r for r in caplog.records if "cannot reach" in r.getMessage())
        assert warning.levelno == logging.WARNING
        assert (f"cannot reach {endpoint} \N{EM DASH} nothing is listening there; is a node running? "
                f"try `miyaq status --connect {endpoint}`") in warning.getMessage()
        assert "silent" not in caplog.text
        make_node(port=port)
        wait_for(lambda: w.links[0].heard, what="the worker registered with the late node")
    assert f"registered with node {endpoint}" in caplog.text


def test_first_contact_reasons():
    """What the first-contact message says for each kind of endpoint: a port
    nobody listens on, a port that accepts but is not a node, a unix socket
    that is not there, and an endpoint that is neither TCP nor a unix socket."""
    import socket as socketlib

    from miyaq.protocol.reach import explain, unreachable
    port = free_port()
    assert explain(f"tcp://127.0.0.1:{port}") == "nothing is listening there"
    with socketlib.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        busy = listener.getsockname()[1]
        assert "accepts connections but no miyaq node answered" in explain(f"tcp://127.0.0.1:{busy}")
    assert explain("inproc://nowhere") == "no miyaq node answered"
    # unix sockets have reasons of their own (tests/test_unix_sockets.py)
    assert explain("ipc:///nonexistent/node.sock").startswith("there is no socket /nonexistent/node.sock")
    assert unreachable("tcp://h:1", "why").startswith("cannot reach tcp://h:1 \N{EM DASH} why; is a node running?")
