"""Stopping with signals: a second SIGTERM or SIGINT cuts every wait of a
stop short (the node's, for running tasks and for webhook deliveries in
flight; a worker's, in every pool and under the ``--processes N``
supervisor), SIGHUP stops a worker as SIGTERM does, and a worker's
``--grace`` is the whole of its wait for handlers.

No test here asserts a duration: each stop is given a grace far longer
than the test waits for it to end (a stop that waits its whole grace
fails the test)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import uuid

import pytest
from apps import pools
from gateway_harness import FIXTURES, Http, wait_for
from loopback_server import read_head
from loopback_server import LoopbackServer
import test_worker_pools as pool_fixtures

from miyaq.core.gate import SHUTTING_DOWN
from miyaq.runtime import Supervisor, green
from miyaq.worker.pools.base import PoolParts

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals
node, events = pool_fixtures.node, pool_fixtures.events       # the pool tests' node and event file

pytestmark = pytest.mark.timeout(120)

LONG_GRACE = 60.0     # a stop that waits this long fails the test
STOP_WAIT = 20.0      # how long a test waits for a hurried stop to end


class NeverAnswers(LoopbackServer):
    """A loopback webhook destination that reads requests and answers none
    until it is closed; counts the requests it holds."""

    def __init__(self) -> None:
        self.held = 0
        self.closing = threading.Event()
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while read_head(conn) is not None:
                with self.lock:
                    self.held += 1
                self.closing.wait()
                return
        except OSError:
            return

    def close(self) -> None:
        self.closing.set()
        super().close()


@pytest.fixture
def never_answers():
    server = NeverAnswers()
    yield server
    server.close()


def test_a_second_stop_signal_ends_the_wait_for_webhooks_in_flight(make_http_node, never_answers) -> None:
    """Fault: three webhooks are in flight to a destination that never
    answers when the node is stopped with a long ``shutdown_grace`` and
    ``webhook_timeout``, and the operator sends a second SIGTERM. Before
    2026-12-05 the node logged that it waited no longer, then waited for
    the deliveries up to min(webhook_timeout, shutdown_grace) anyway; now
    the second signal ends that wait too and the node stops."""
    node = make_http_node(shutdown_grace=LONG_GRACE, webhook_timeout=LONG_GRACE, webhook_allow_private=True)
    http = Http(node.url)
    for n in range(3):
        status, answer, _ = http.post("/queue/hooks", {"url": f"http://127.0.0.1:{never_answers.port}/hook/{n}",
                                                       "params": {"n": n}})
        assert status == 200, answer
    wait_for(lambda: never_answers.held == 3, "three deliveries in flight")
    inner = node.node
    assert inner is not None
    deliverer = inner.part("gateway").deliverer
    node.call(lambda: inner.supervisor.spawn("signal stop", inner.ask_stop))          # the first SIGTERM
    wait_for(lambda: node.call(lambda: deliverer.stopping and inner.core.gate.holds(SHUTTING_DOWN)),
             "the node waiting for its deliveries in flight")
    node.call(lambda: inner.supervisor.spawn("signal stop", inner.ask_stop))          # the second
    node.thread.join(STOP_WAIT)
    assert not node.thread.is_alive(), "the node still waits for its webhooks after a second signal"


def test_a_node_stopped_without_grace_does_not_wait_for_webhooks_in_flight(make_http_node, never_answers) -> None:
    """Fault: a node stopped with no grace -- a critical greenlet died, a
    start that failed -- while webhooks are in flight to a destination that
    never answers. Its stop still waited for them up to min(webhook_timeout,
    shutdown_grace) (a review's observation); now no grace means no wait."""
    node = make_http_node(shutdown_grace=LONG_GRACE, webhook_timeout=LONG_GRACE, webhook_allow_private=True)
    http = Http(node.url)
    for n in range(2):
        status, answer, _ = http.post("/queue/hooks", {"url": f"http://127.0.0.1:{never_answers.port}/hook/{n}"})
        assert status == 200, answer
    wait_for(lambda: never_answers.held == 2, "two deliveries in flight")
    inner = node.node
    assert inner is not None
    node.call(lambda: inner.supervisor.spawn("stop now", inner.stop, 0))
    node.thread.join(STOP_WAIT)
    assert not node.thread.is_alive(), "the node stopped without grace still waits for its webhooks"


# -- workers ---------------------------------------------------------------------------------

POOLS = ["gevent", "threads", "processes"]




def _worker(procs, node, pool, *extra, env):
    """A worker process of ``apps.pools`` with a long grace; with the
    processes pool, once its children are up."""
    w = procs.worker("apps.pools:app", node.endpoint, 1, "--pool", pool, "--prefetch", "0",
                     "--grace", str(LONG_GRACE), *extra, env=env)
    if pool == "processes":
        wait_for(lambda: "child process(es) ready" in w.log_tail(400), "the pool's children", timeout=60)
    return w


def _started(path, tag, n=1):
    wait_for(lambda: len([e for e in pools.read_events(path) if e[0] == "start" and e[1] == tag]) >= n,
             f"{n} handler(s) of {tag} started")


def _ended(path, tag):
    return [e for e in pools.read_events(path) if e[0] == "end" and e[1] == tag]


def _exit_code(w) -> int | None:
    """The worker's exit code once it exited, waiting at most STOP_WAIT."""
    try:
        return w.proc.wait(STOP_WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within {STOP_WAIT:.0f}s (its grace: {LONG_GRACE:.0f}s):\n"
                    f"{w.log_tail(30)}")


def _stopping(w, n=1):
    wait_for(lambda: w.log_tail(400).count(" stopping: ") >= n, f"{n} worker process(es) stopping")


@pytest.mark.parametrize("pool", POOLS)
def test_a_second_stop_signal_ends_a_workers_wait_for_running_handlers(procs, node, client, events, pool):
    """Fault: a handler never ends while its worker drains with a long
    ``--grace``, and the operator sends SIGTERM again. Before 2026-12-05 the
    worker ignored the second signal and waited the whole grace (the node
    documents that a second signal ends its wait); now it says BYE at once
    -- its node puts the task back -- and exits 0."""
    path, env = events
    w = _worker(procs, node, pool, env=env)
    tag = uuid.uuid4().hex
    client.submit("hang", [tag], timeout=3600, wait=True)
    _started(path, tag)
    w.signal(signal.SIGTERM)
    _stopping(w)
    w.signal(signal.SIGTERM)
    assert _exit_code(w) == 0
    assert "asked again to stop: not waiting for the 1 running task(s)" in w.log_tail(200)
    wait_for(lambda: client.status()["queues"]["default"]["running"] == 0, "the task given back by the BYE")


def test_a_second_stop_signal_to_the_supervisor_ends_its_processes_wait(procs, node, client, events):
    """Fault: ``miyaq worker -p 2`` drains handlers that never end, and the
    operator sends the supervisor SIGTERM again. Before 2026-12-05 its
    processes waited their whole grace; now the supervisor passes the second
    request on and every process says BYE at once and exits."""
    path, env = events
    w = _worker(procs, node, "threads", "--processes", "2", env=env)
    wait_for(lambda: client.status()["totals"]["workers"] == 2, "two worker processes registered")
    tag = uuid.uuid4().hex
    for _ in range(2):
        client.submit("hang", [tag], timeout=3600, wait=True)
    _started(path, tag, 2)
    w.signal(signal.SIGTERM)
    _stopping(w, 2)
    w.signal(signal.SIGTERM)
    assert _exit_code(w) == 0
    assert w.log_tail(400).count("asked again to stop: not waiting for the 1 running task(s)") == 2


@pytest.mark.parametrize("pool", POOLS)
def test_sighup_drains_a_worker_like_sigterm(procs, node, client, events, pool):
    """Fault: the terminal of a foreground ``miyaq worker`` closes (SIGHUP to
    its process group). Before 2026-12-05 SIGHUP killed the worker -- and
    the processes pool's children -- at once (exit -1), its running task
    left running at the node until its heartbeats were missed; now the
    worker drains as on SIGTERM: the handler finishes and reports, exit 0."""
    path, env = events
    w = _worker(procs, node, pool, env=env)
    tag = uuid.uuid4().hex
    handle = client.submit("slow_first", [tag, 2.0], wait=True)
    _started(path, tag)
    os.killpg(w.pid, signal.SIGHUP)
    assert _exit_code(w) == 0
    assert len(_ended(path, tag)) == 1, "the running handler finished before the worker exited"
    assert handle.result(10) == 1


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_a_terminal_signal_to_a_supervised_group_drains_once(procs, node, client, events, sig):
    """Fault: the terminal of ``miyaq worker -p 2 --pool processes`` closes
    or gets Ctrl-C: the signal reaches the supervisor, its worker processes
    and their pool's children. Before 2026-12-05 SIGHUP killed them all at
    once. A worker process must not take the signal and the supervisor's
    SIGTERM as two requests (the second would end the drain): each running
    handler finishes and reports, and the supervisor exits 0. (With SIGINT
    this guards the drain against the second-signal rule: it passed before.)"""
    path, env = events
    w = _worker(procs, node, "processes", "--processes", "2", env=env)
    wait_for(lambda: client.status()["totals"]["workers"] == 2, "two worker processes registered")
    tag = uuid.uuid4().hex
    handles = [client.submit("slow_first", [tag, 2.0], wait=True) for _ in range(2)]
    _started(path, tag, 2)
    os.killpg(w.pid, sig)
    assert _exit_code(w) == 0
    assert len(_ended(path, tag)) == 2, "both running handlers finished before the workers exited"
    assert [h.result(10) for h in handles] == [1, 1]
    assert "asked again" not in w.log_tail(400)


def test_a_handlers_subprocess_can_be_interrupted_under_a_supervisor_and_a_processes_pool(procs, node, client,
                                                                                            events):
    """Fault (a review audit): under ``miyaq worker -p 2`` (and in a
    processes pool's children) SIGINT, SIGHUP -- and in the children
    SIGTERM -- were set to SIG_IGN, which every program a handler starts
    inherits: an ffmpeg or a Python the handler ran could never be
    interrupted with SIGINT or ended by SIGHUP. They are now disregarded by
    a handler that does nothing, which a started program does not inherit."""
    path, env = events
    _worker(procs, node, "processes", "--processes", "2", env=env)
    wait_for(lambda: client.status()["totals"]["workers"] == 2, "two worker processes registered")
    ignored = client.call("ignored_in_subprocess", timeout=30)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} ignored in the handler's subprocess: {ignored:#x}"


def _gone(pid: int) -> bool:
    """The process ``pid`` exited (or is a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", ["SIGUSR1", "SIGKILL"])
def test_the_processes_of_a_supervisor_that_is_gone_or_hurried_stop(procs, node, client, events, how):
    """Faults (a review audit): the supervisor of ``miyaq worker -p 2`` is
    sent SIGUSR1 -- the signal it sends its processes to end their wait --
    or is SIGKILLed. SIGUSR1's default action killed it; either way its
    worker processes ran on for good, registered and taking tasks, and they
    disregard a terminal's SIGINT and SIGHUP. Now SIGUSR1 to the supervisor
    stops everything and ends the wait (exit 0), and a worker process whose
    supervisor is gone stops by itself."""
    path, env = events
    w = _worker(procs, node, "threads", "--processes", "2", env=env)
    wait_for(lambda: client.status()["totals"]["workers"] == 2, "two worker processes registered")
    pids = [wk["pid"] for wk in client.status()["workers"]]
    try:
        if how == "SIGUSR1":
            w.signal(signal.SIGUSR1)
            assert _exit_code(w) == 0
        else:
            w.signal(signal.SIGKILL)
            w.proc.wait(STOP_WAIT)
        wait_for(lambda: all(_gone(pid) for pid in pids), "the worker processes to exit", timeout=STOP_WAIT)
        wait_for(lambda: client.status()["totals"]["workers"] == 0, "no worker registered")
    finally:
        for pid in pids:             # none left running, whatever happened (the procs fixture knows the supervisor)
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_threads_pool_waits_for_no_thread_stuck_in_a_handler(monkeypatch, caplog):
    """Fault: a handler thread that never returns when the worker stops.
    Python cannot kill a thread; before 2026-12-05 the threads pool's stop
    still waited ``STOP_WAIT`` (2 s) for it after the whole grace, so the
    worker exited 2 s past its ``--grace``. Now the pool tells its idle
    threads to end and waits for none (here ``STOP_WAIT`` is an hour: a
    stop that waited for the stuck thread would fail the test)."""
    from miyaq.worker.jobs import Job
    from miyaq.worker.pools import threads

    monkeypatch.setattr(threads, "STOP_WAIT", 3600.0)
    release = threading.Event()
    started = threading.Event()

    def stuck():
        started.set()
        release.wait()

    inbox = green.HubInbox("test")
    pool = threads.ThreadsPool(PoolParts(concurrency=2, supervisor=Supervisor("test"), touch=lambda _: None,
                                         inbox=inbox, app_spec=None, max_tasks_per_child=0, log_level="INFO"))
    job = Job(["t1", "q", "stuck", b"", 1, 3600.0], stuck, False, "tcp://127.0.0.1:1", 0.0)
    try:
        runner = green.Greenlet.spawn(pool.run, job)
        with green.Timeout(STOP_WAIT):
            while not started.is_set():
                green.sleep(0.01)
            done = green.Greenlet.spawn(pool.stop)
            done.join()
        assert done.successful() and not runner.dead
        assert "1 handler thread(s) still running are abandoned" in caplog.text
    finally:
        release.set()
        runner.join(STOP_WAIT)
        inbox.close()
