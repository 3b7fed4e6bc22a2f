"""Execution pools (issue 13): the same handlers under ``--pool gevent``,
``threads`` and ``processes``, and ``async def`` handlers beside sync ones.

Overlap is counted, never timed: a gathering handler blocks with
``time.sleep`` until ``--concurrency`` of its kind have started, so the
count of handlers in flight at once reaches ``--concurrency`` only if the
pool really runs them side by side. Each fault test's docstring names the
fault; what must happen is what docs/semantics.md says for every pool.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

import miyaq

from apps import pools
from miyaq.errors import TaskCancelled
from miyaq.runtime import green
from miyaq.testing.harness import ThreadNode, ThreadWorker, wait_for

pytestmark = pytest.mark.timeout(90)

POOLS = ["gevent", "threads", "processes"]


@pytest.fixture
def node():
    """A node in this process with a relaxed heartbeat: these tests are about
    pools, and a loaded CI machine must not get a worker declared lost."""
    with ThreadNode(heartbeat=1.0) as n:
        yield n


@pytest.fixture
def events(tmp_path):
    path = str(tmp_path / "events.jsonl")
    return path, {"MIYAQ_TEST_EVENTS": path}


def _worker(procs, node, pool, concurrency, env, *extra):
    """A worker process; with the processes pool, once its children are up
    (so a short task timeout is not spent waiting for a child to start)."""
    w = procs.worker("apps.pools:app", node.endpoint, concurrency, "--pool", pool, "--prefetch", "0",
                     *extra, env=env)
    if pool == "processes":
        wait_for(lambda: "child process(es) ready" in w.log_tail(400), timeout=60, what="the pool's children")
    return w


def _registered(client, n=1):
    wait_for(lambda: client.status()["totals"]["workers"] == n, what=f"{n} worker(s) registered")


def _starts(path, tag):
    return [e for e in pools.read_events(path) if e[0] == "start" and e[1] == tag]


@pytest.mark.parametrize("pool", POOLS)
def test_blocking_handlers_overlap_up_to_concurrency(procs, node, client, events, pool):
    """Handlers that block in time.sleep run --concurrency at a time: with the
    gevent pool because the worker patched the standard library before it
    imported the app, with the others because each has its thread or process."""
    path, env = events
    _worker(procs, node, pool, 4, env)
    tag = uuid.uuid4().hex
    handles = [client.submit("gather", [4, tag]) for _ in range(4)]
    assert [h.result(40) for h in handles] == [4, 4, 4, 4]
    assert pools.max_in_flight(pools.read_events(path), tag) == 4
    pids = {e[2] for e in _starts(path, tag)}
    assert len(pids) == (4 if pool == "processes" else 1)


@pytest.mark.parametrize("pool", POOLS)
def test_gevent_patches_before_the_app_is_imported(procs, node, client, events, pool):
    """``miyaq worker`` patches the standard library before it imports the
    app with the gevent pool (and only then), so no module of the app holds
    an unpatched socket or sleep, and gevent has nothing to warn about."""
    _, env = events
    w = _worker(procs, node, pool, 1, env)
    assert client.call("patched_at_import", timeout=30) is (pool == "gevent")
    assert "MonkeyPatchWarning" not in w.log_tail(200)
    assert f"pool={pool} " in w.log_tail(200)


def test_cpu_bound_handler_in_a_patched_worker_keeps_it_alive(procs, node, client, events):
    """Fault: a handler holds the CPU for 8 heartbeat intervals in a
    gevent-patched worker. The heartbeat thread is a real OS thread even
    though ``threading`` is patched, so the node does not declare the
    worker lost and the task runs once."""
    _, env = events
    _worker(procs, node, "gevent", 1, env)
    handle = client.submit("spin", [2.0], wait=True)
    assert handle.result(30) > 0
    assert client.status(handle.id)["attempt"] == 1
    assert client.status()["outcomes"].get("lost", 0) == 0


@pytest.mark.parametrize("pool", ["gevent", "threads"])
def test_async_handlers_overlap_up_to_concurrency(procs, node, client, events, pool):
    """``async def`` handlers run on the worker's asyncio loop, --concurrency at
    once, next to the module's sync handlers."""
    path, env = events
    _worker(procs, node, pool, 4, env)
    tag = uuid.uuid4().hex
    handles = [client.submit("agather", [4, tag]) for _ in range(4)]
    assert [h.result(40) for h in handles] == [4, 4, 4, 4]
    assert pools.max_in_flight(pools.read_events(path), tag) == 4
    assert client.call("aadd", [2, 3], timeout=20) == 5
    assert client.call("pid", timeout=20) == pools.read_events(path)[0][2]


@pytest.mark.parametrize("pool,task", [*[(p, "chain") for p in POOLS], ("gevent", "achain"),
                                       ("threads", "achain"), *[(p, "acall_async") for p in POOLS]])
def test_handlers_submit_tasks(procs, node, client, events, pool, task):
    """A handler -- in a greenlet, a thread, a child process or a coroutine --
    submits a task through the app's client (or, from a coroutine, its
    asyncio client) and waits for its result."""
    _, env = events
    _worker(procs, node, pool, 2, env)
    assert client.call(task, [2, 3], timeout=40) == 5


@pytest.mark.parametrize("pool,task", [*[(p, "overrun_once") for p in POOLS], ("gevent", "aoverrun_once")])
def test_hung_handler_is_stopped_at_its_timeout(procs, node, client, events, pool, task):
    """Fault: a handler hangs past its task's timeout without touching. The
    worker stops it (an exception at its next yield, its next bytecode, a
    cancelled coroutine, a killed child process), the slot is free again and
    the task's next attempt runs."""
    path, env = events
    w = _worker(procs, node, pool, 1, env)
    _registered(client)
    tag = uuid.uuid4().hex
    handle = client.submit(task, [tag], timeout=1.0, max_retries=3, backoff=0.01, wait=True)
    assert handle.result(40) >= 2
    wait_for(lambda: "ran past its 1s timeout; stopping it" in w.log_tail(200), what="the watchdog's warning")
    runs = _starts(path, tag)
    assert [e[3] for e in runs][:2] == [1, 2]
    if pool == "processes":
        assert runs[0][2] != runs[1][2], "the hung child was replaced"
        assert "stopped: task" in w.log_tail(200)


@pytest.mark.parametrize("pool,task", [*[(p, "hang") for p in POOLS], ("threads", "ahang")])
def test_cancel_stops_a_running_handler(procs, node, client, events, pool, task):
    """Fault: a running task is cancelled. The node sends ABORT; the worker
    stops the handler as its pool can and the slot runs the next task."""
    path, env = events
    w = _worker(procs, node, pool, 1, env)
    _registered(client)
    tag = uuid.uuid4().hex
    handle = client.submit(task, [tag], timeout=60, wait=True)
    wait_for(lambda: _starts(path, tag), what="the handler started")
    assert client.cancel(handle.id) is True
    with pytest.raises(TaskCancelled):
        handle.result(10)
    assert client.call("pid", timeout=30) > 0          # the only slot is free again
    if task == "ahang":
        assert [e for e in pools.read_events(path) if e[0] == "cancelled" and e[1] == tag]
    if pool == "processes":
        assert client.call("pid", timeout=30) != _starts(path, tag)[0][2], "the cancelled child was replaced"
    assert w.alive()


def test_a_killed_child_s_program_is_killed_with_it(procs, node, client, events):
    """Fault: a processes-pool handler that runs a program and waits for it
    (``subprocess.Popen(["sleep", "60"]).wait()``, as one that calls ffmpeg
    or a script) is cancelled. The pool kills the child with its process
    group, the program in it, and the next task runs. Before (syncteam,
    2026-12-08), the pool killed the child alone and the program ran on, an
    orphan, for its whole minute -- after a timeout, a cancel or the
    worker's stop alike."""
    path, env = events
    w = _worker(procs, node, "processes", 1, env)
    _registered(client)
    tag = uuid.uuid4().hex
    handle = client.submit("run_program", [tag], timeout=60, max_retries=0, wait=True)
    programs: list[int] = []
    try:
        wait_for(lambda: programs.extend(e[2] for e in pools.read_events(path) if e[:2] == ["program", tag])
                 or programs, what="the program started")
        assert client.cancel(handle.id) is True
        with pytest.raises(TaskCancelled):
            handle.result(10)
        wait_for(lambda: not _alive(programs[0]), timeout=10, what="the program ended")
        assert client.call("pid", timeout=30) > 0 and w.alive()
    finally:
        for pid in programs:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("pool,task", [*[(p, "touchy") for p in POOLS], ("gevent", "atouchy")])
def test_touch_keeps_a_long_handler_running(procs, node, client, events, pool, task):
    """A handler running three times its timeout survives by touching, from
    a greenlet, a thread, a child process or a coroutine."""
    _, env = events
    _worker(procs, node, pool, 1, env)
    handle = client.submit(task, [1.5, 0.1], timeout=0.5, wait=True)
    assert handle.result(30) == 1
    assert client.status(handle.id)["attempt"] == 1


@pytest.mark.parametrize("pool", POOLS)
def test_sigterm_drains_running_handlers(procs, node, client, events, pool):
    """SIGTERM on a worker: its running handler finishes and reports (in every
    pool), the tasks it had not started go back to the node, it exits 0."""
    path, env = events
    w = _worker(procs, node, pool, 1, env, "--prefetch", "2")
    _registered(client)
    tag = uuid.uuid4().hex
    handles = [client.submit("slow_first", [tag, 1.0]) for _ in range(3)]
    client.flush()
    wait_for(lambda: len(_starts(path, tag)) == 1, what="the first task running")
    assert w.terminate(30) == 0
    ends = [e for e in pools.read_events(path) if e[0] == "end" and e[1] == tag]
    assert len(ends) == 1, "the running handler finished before the worker exited"
    assert client.status()["queues"]["default"]["ready"] == 2      # given back, no attempt spent
    procs.worker("apps.pools:app", node.endpoint, 2, "--pool", pool, env=env)
    assert sorted(h.result(30) for h in handles) == [1, 1, 1]


def test_thread_stuck_in_a_c_call_does_not_hold_up_shutdown(procs, node, client, events):
    """Fault: a handler of the threads pool is inside one long C call
    (time.sleep(3600)) when it times out and when the worker gets SIGTERM.
    The thread cannot be stopped (docs/python-api.md says so); the worker
    says it tried, and still exits when its grace is over."""
    path, env = events
    w = _worker(procs, node, "threads", 1, env, "--grace", "1")
    _registered(client)
    tag = uuid.uuid4().hex
    client.submit("stuck", [tag], timeout=0.5, max_retries=0, wait=True)
    wait_for(lambda: _starts(path, tag), what="the handler started")
    wait_for(lambda: "ran past its 0.5s timeout; stopping it (pool threads)" in w.log_tail(200),
             what="the watchdog's warning")
    assert w.terminate(30) == 0
    assert "1 task(s) still running after 1.0s" in w.log_tail(200)


@pytest.mark.parametrize("pool,task", [*[(p, "leave") for p in POOLS], ("gevent", "aleave")])
def test_a_handler_that_exits_fails_its_task_and_the_worker_goes_on(procs, node, client, events, pool, task):
    """Fault: a handler calls ``sys.exit(3)``, another raises
    ``KeyboardInterrupt``, a third its own ``BaseException`` (code that stops
    the process running it), a fourth ``greenlet.GreenletExit`` (which ends
    a greenlet quietly). Each task fails (retryable, its type and a
    message saying the worker goes on), the same in every pool, and the
    worker runs the next task. Before, each one ended the whole worker in
    the gevent and threads pools -- its other tasks waited for their leases
    -- and a child of the processes pool; a GreenletExit (until 2026-12-04)
    ended the runner without a word: the task unreported until its lease
    ran out, the worker one slot short for good."""
    path, env = events
    w = _worker(procs, node, pool, 2, env)
    _registered(client)
    for how, kind in (("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt"), ("base", "Escape"),
                      ("greenlet", "GreenletExit")):
        with pytest.raises(miyaq.TaskFailed) as failed:
            client.call(task, [how], max_retries=0, timeout=30)
        assert failed.value.remote_type == kind
        assert "a task does not stop its worker" in failed.value.remote_message
    assert client.call("add", [2, 3], timeout=30) == 5 and w.alive()
    assert "died" not in w.log_tail(200)          # no child of the processes pool died either


@pytest.mark.parametrize("pool", POOLS)
def test_an_exception_whose_str_raises_fails_its_task(procs, node, client, events, pool):
    """Fault: a handler raises an exception whose ``__str__`` and
    ``__repr__`` raise, another a BaseException whose ``__repr__`` raises.
    Each task fails (retryable, its type named, the message saying its text
    could not be had) and the worker runs the next task. Before, describing
    the failure raised in turn: the runner (or the child) died, the attempt
    was never reported -- its slot held until its lease ran out -- and two
    such tasks left a worker of concurrency 2 taking no more work. And
    (until 2026-12-05) an exception whose ``__str__`` raised ``SystemExit``
    or ``KeyboardInterrupt`` ended the gevent and threads pools' worker
    process, one raising ``GreenletExit`` the runner, without a word."""
    path, env = events
    w = _worker(procs, node, pool, 2, env)
    _registered(client)
    for how, kind, text in (("exc", "Undescribable", "<Undescribable: str() failed>"),
                            ("base", "UndescribableEscape", "<UndescribableEscape: repr() failed>"),
                            ("exit", "ExitingStr", "<ExitingStr: str() failed>"),
                            ("interrupt", "ExitingStr", "<ExitingStr: str() failed>"),
                            ("greenlet", "ExitingStr", "<ExitingStr: str() failed>")):
        with pytest.raises(miyaq.TaskFailed) as failed:
            client.call("undescribable", [how], max_retries=0, timeout=15)
        assert failed.value.remote_type == kind
        assert text in failed.value.remote_message
    assert client.call("add", [2, 3], timeout=15) == 5 and w.alive()
    assert "died" not in w.log_tail(200)


@pytest.mark.parametrize("pool", POOLS)
def test_a_failure_the_node_cannot_take_as_given_still_fails_its_task(procs, node, client, events, pool):
    """Fault: handlers fail with ``Retry(b"bytes")``, ``Reject(42)``, an
    exception whose message holds a lone surrogate (bytes decoded with
    ``surrogateescape``), and ``Retry(delay=object())`` or a delay too large
    for msgpack. Each task fails with its message as text (the delay
    ignored: the backoff applies), and the worker goes on. Before, the node
    refused a FAILED whose message was no string (that task -- and any
    other reported with it -- stayed running until its lease ran out), and
    one it could not pack made the result flusher fail again and again
    until the worker stopped."""
    path, env = events
    w = _worker(procs, node, pool, 2, env)
    _registered(client)
    for how, kind, text in (("bytes", "Retry", "b'a message in bytes'"), ("int", "Reject", "42"),
                            ("surrogate", "ValueError", "caf\\udce9"), ("object", "Retry", "later"),
                            ("huge", "Retry", "later")):
        with pytest.raises(miyaq.TaskFailed) as failed:
            client.call("unsendable", [how], max_retries=0, timeout=15)
        assert (failed.value.remote_type, failed.value.remote_message) == (kind, text)
    assert client.call("add", [2, 3], timeout=15) == 5 and w.alive()
    assert "died" not in w.log_tail(200)


@pytest.mark.parametrize("pool", ["gevent", "threads"])
def test_an_async_handler_that_stops_the_event_loop_does_not_end_it(procs, node, client, events, pool):
    """Fault: an ``async def`` handler calls ``loop.stop()`` on the worker's
    asyncio loop. The loop runs on (a warning says so): that task returns,
    and later async and sync tasks run. Before, the loop's thread ended and
    closed the loop: that task failed as cancelled (not retried), and each
    later async task killed the runner that took it, unreported, until the
    worker, its credit spent, took no work at all."""
    path, env = events
    w = _worker(procs, node, pool, 2, env)
    _registered(client)
    assert client.call("astop_loop", timeout=15) == "went on"
    assert [client.call("aadd", [i, 1], timeout=15) for i in range(3)] == [1, 2, 3]
    assert client.call("add", [2, 3], timeout=15) == 5 and w.alive()
    assert "an async handler stopped the worker's asyncio loop; it runs on" in w.log_tail(200)


@pytest.mark.parametrize("pool", ["gevent", "threads"])
def test_an_async_handlers_side_task_raising_system_exit_does_not_end_the_loop(procs, node, client, events, pool):
    """Fault: an ``async def`` handler's side task raises ``SystemExit`` (or
    ``KeyboardInterrupt``; or a callback it scheduled does), which asyncio
    lets out of ``run_forever``. The loop runs on (logged) and every task
    goes on. Before 2026-12-05 the loop closed: the async handlers running on
    it were never reported and their runners blocked for good, until the
    worker ran nothing (a later sync task on a 2-slot worker never ran)."""
    path, env = events
    w = _worker(procs, node, pool, 2, env)
    _registered(client)
    for how in ("exit", "interrupt", "callback"):
        assert client.call("aexit_aside", [how], timeout=15) == "went on"
    assert [client.call("aadd", [i, 1], timeout=15) for i in range(3)] == [1, 2, 3]
    assert client.call("add", [2, 3], timeout=15) == 5 and w.alive()
    assert "out of the worker's asyncio loop; the loop runs on" in w.log_tail(200)


def test_killed_child_process_fails_its_task_and_is_replaced(procs, node, client, events):
    """Fault: kill -9 of the child process running a task (processes pool).
    The parent sees it die, reports the attempt failed (retryable, type
    WorkerLost), starts another child, and the task's next attempt runs."""
    path, env = events
    w = _worker(procs, node, "processes", 1, env)
    _registered(client)
    tag = uuid.uuid4().hex
    handle = client.submit("slow_first", [tag, 60.0], backoff=0.01, wait=True)
    wait_for(lambda: _starts(path, tag), what="the handler started")
    victim = _starts(path, tag)[0][2]
    os.kill(victim, signal.SIGKILL)
    assert handle.result(30) == 2
    assert _starts(path, tag)[1][2] != victim
    assert "died (exit -9) running task" in w.log_tail(200)


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie not yet reaped by whoever adopted it counts)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_workers_child_dies_with_it_and_runs_its_handler_no_further(procs, node, client, events, tmp_path):
    """Fault: kill -9 of a processes-pool worker while its child runs a
    handler. The child ran on until its parent watch saw the parent gone (up
    to a second): ``miyaq chaos --pool processes`` saw killed workers'
    children finish tasks after the kill, whose outcome nobody took, and
    the cluster ran them again elsewhere. The child now dies with its
    worker: the handler, told to go on just after the kill (a file it
    waits for, every 10 ms), never writes its end."""
    path, env = events
    w = _worker(procs, node, "processes", 1, env)
    _registered(client)
    tag, go = uuid.uuid4().hex, str(tmp_path / "go")
    client.submit("until_file", [tag, go])
    wait_for(lambda: _starts(path, tag), what="the handler started")
    child = _starts(path, tag)[0][2]
    assert child != w.pid
    w.kill()
    with open(go, "w"):
        pass
    wait_for(lambda: gone(child), timeout=10.0, what="the child to exit")
    assert [e[0] for e in pools.read_events(path) if e[1] == tag] == ["start"]


@pytest.mark.parametrize("pool", ["gevent", "threads"])
def test_a_result_too_large_for_a_message_fails_and_drops_no_connection(procs, node, client, events, pool):
    """Fault: a handler returns a result larger than one message to a node
    may be (16 MiB), while another task of the same worker runs. The big
    one fails at once (``ResultTooLarge``, not retried); the other finishes
    in its first attempt. Before, the DONE went out whole: the node dropped
    the connection (libzmq's MAXMSGSIZE), the worker registered again, and
    the node counted every task it held lost -- the running one was
    started a second time while its first attempt still ran."""
    message = _too_large_beside_a_running_task(procs, node, client, events, pool, 17 * 1024 * 1024)
    assert "exceeds the" in message


@pytest.mark.parametrize("pool", ["gevent", "threads"])
def test_a_result_over_the_nodes_own_max_message_fails_and_drops_no_connection(procs, client_for, events, pool):
    """Fault: a node runs with ``max_message`` 2 MB, below the 16 MiB a worker
    bounds results by, and a handler returns 3 MB while another task of the
    same worker runs. The node says its limit in WELCOME: the big result
    fails at once (``ResultTooLarge`` naming the node's limit, not retried)
    and the other task finishes in its first attempt. Before, the DONE went
    out: the node dropped the connection and counted every task the worker
    held lost."""
    with ThreadNode(heartbeat=1.0, max_message=2_000_000) as node:
        message = _too_large_beside_a_running_task(procs, node, client_for(node.endpoint), events, pool, 3_000_000)
        assert "its max_message" in message


@pytest.mark.parametrize("pool", POOLS)
def test_a_result_msgpack_cannot_pack_fails_at_once(procs, node, client, events, pool):
    """Fault: a handler (sync, and ``async def``) returns a set, which
    msgpack cannot pack. Before 2026-12-06 its task failed with a retryable
    ``TypeError`` (can not serialize 'set' object): 4 attempts by default,
    the handler's side effects run each time. It now fails at once, not
    retried (``ResultNotSerializable``, naming the type), in every pool."""
    path, env = events
    w = _worker(procs, node, pool, 1, env)
    _registered(client)
    for name in ("unpackable_result", "aunpackable_result"):
        tag = uuid.uuid4().hex
        with pytest.raises(miyaq.TaskFailed) as failed:
            client.call(name, [tag], max_retries=3, timeout=15)
        assert failed.value.remote_type == "ResultNotSerializable"
        assert "type set" in failed.value.remote_message and "'set'" in failed.value.remote_message
        assert [e[3] for e in _starts(path, tag)] == [1]
    assert client.call("add", [2, 3], timeout=15) == 5 and w.alive()


def _too_large_beside_a_running_task(procs, node, client, events, pool, size):
    """A worker of concurrency 2 runs a slow task while a handler returns
    ``size`` bytes: that task fails ResultTooLarge, the slow one finishes in
    its first attempt, nothing is lost and the worker keeps its connection.
    Returns the failure's message."""
    path, env = events
    w = _worker(procs, node, pool, 2, env)
    _registered(client)
    tag = uuid.uuid4().hex
    slow = client.submit("slow_first", [tag, 2.0], wait=True)
    wait_for(lambda: _starts(path, tag), what="the slow task started")
    handle = client.submit("sized", [size], timeout=300, wait=True)
    with pytest.raises(miyaq.TaskFailed) as failed:
        handle.result(30)
    assert failed.value.remote_type == "ResultTooLarge"
    assert slow.result(30) == 1
    assert [e[3] for e in _starts(path, tag)] == [1]
    assert client.status()["outcomes"].get("lost", 0) == 0
    assert "closed; reconnecting" not in w.log_tail(200)
    return failed.value.remote_message


def test_a_result_too_large_for_the_childs_socket_fails_at_once(procs, node, client, events):
    """Fault: a handler of the processes pool returns a result larger than
    a child may send its parent (16 MiB). The task fails at once
    (``ResultTooLarge``, not retried, as a node fails a result over its
    ``max_payload``), the child lives on and runs the next task. Before,
    the parent's socket dropped the message with the connection, and the
    task ran on as far as the worker knew until its timeout (300 s here)
    stopped it as ``Timeout`` -- and was retried, to the same end."""
    path, env = events
    w = _worker(procs, node, "processes", 1, env)
    _registered(client)
    handle = client.submit("sized", [17 * 1024 * 1024], timeout=300, backoff=0.01, wait=True)
    with pytest.raises(miyaq.TaskFailed) as failed:
        handle.result(30)
    assert failed.value.remote_type == "ResultTooLarge"
    assert "exceeds the" in failed.value.remote_message
    assert client.status(handle.id)["attempt"] == 1
    assert client.call("sized", [3], timeout=30) == b"xxx" and w.alive()
    assert "died" not in w.log_tail(200)


@pytest.mark.parametrize("pool", POOLS)
def test_a_handler_that_forks_leaves_no_copy_of_the_child_behind(procs, node, client, events, pool):
    """Fault: a handler forks and both copies return (the forked one never
    calls ``os._exit``, as code that forks for a helper and forgets to end
    it does). The process that called the handler -- the worker, or the
    processes pool's child -- reports the task; the forked copy exits as it
    returns from the handler, and the worker runs the next task. Before,
    the copy went on: in the processes pool as a second child on the
    inherited socket, which could report the task in the child's place and
    then spun on that socket at full CPU for ever, an orphan that ignores
    SIGTERM (seen for 44 minutes after its worker had stopped); in the
    gevent and threads pools (until syncteam, 2026-12-08) as a second worker
    on the first one's sockets, an orphan that outlived its worker's
    SIGTERM."""
    path, env = events
    w = _worker(procs, node, pool, 1 if pool == "processes" else 2, env)
    _registered(client)
    tag = uuid.uuid4().hex
    forked: list[int] = []
    try:
        assert client.call("fork_and_return", [tag], timeout=30) == "the child"
        wait_for(lambda: forked.extend(e[2] for e in pools.read_events(path) if e[:2] == ["forked", tag]) or forked,
                 what="the forked copy ran")
        wait_for(lambda: not _alive(forked[0]), what="the forked copy exited")
        assert client.call("add", [2, 3], timeout=30) == 5 and w.alive()
    finally:
        for pid in forked:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_forked_helper_is_not_ended_by_another_handler_s_copy(procs, node, client, events):
    """Fault: in the gevent pool a handler forks a helper that yields (a
    patched ``time.sleep``, a socket) while another handler runs. The
    helper's copy of that other handler resumes at the yield and returns;
    it is parked, and the helper runs to its own ``os._exit(7)``. Before
    (review43, 2026-12-08), the copy that returned ended the helper as a
    forked copy of its own handler, with status 0 -- its work cut short
    and reported a success."""
    path, env = events
    _worker(procs, node, "gevent", 2, env)
    _registered(client)
    tag = uuid.uuid4().hex
    bystander = client.submit("await_helper", [tag], timeout=60, max_retries=0, wait=True)
    wait_for(lambda: _starts(path, tag), what="the other handler running")
    helpers: list[int] = []
    try:
        assert client.call("fork_helper", [tag], timeout=60) == 7
        assert bystander.result(30) is True
    finally:
        helpers.extend(e[2] for e in pools.read_events(path) if e[:2] == ["helper", tag])
        for pid in helpers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_gevent_handler_s_forked_copy_never_touches_the_worker_s_sockets(procs, node, client, events):
    """Fault: in the gevent pool a handler forks, and its copy yields to
    its hub while the worker's link reader and the reader of the link's
    connection monitor (``zmq.green``) wait on descriptors the copy shares
    with the worker (a message or a connection event for the worker makes
    them readable in both: the probe wakes the copy's readers as they
    would). The copy's readers park for good without a call into the
    copied sockets, its green sockets' watchers are stopped, and the copy
    ends. Before (review43, 2026-12-08), the copy's link reader read
    the copied socket: ``ZMQError`` from ``recv_frames`` in a loop, at full
    CPU, in copies that outlived their worker."""
    path, env = events
    w = _worker(procs, node, "gevent", 2, env)
    _registered(client)
    tag = uuid.uuid4().hex
    status = client.call("fork_and_wake_readers", [tag], timeout=40, max_retries=0)
    assert status == 0, "the copy did not get back to its probe (killed): its readers spun on the worker's sockets"
    [(woken, monitors, watched, calls, names)] = [e[2:] for e in pools.read_events(path) if e[:2] == ["copy", tag]]
    assert woken >= 1 and monitors >= 1, "the probe found no reader waiting: it tested nothing"
    assert (watched, calls, names) == (0, 0, [])
    assert client.call("add", [2, 3], timeout=30) == 5 and w.alive()


@pytest.mark.parametrize("pool", POOLS)
def test_a_handler_s_forked_helper_ends_on_the_signals_it_is_sent(procs, node, client, events, pool):
    """Fault: a handler forks a helper (``os.fork()``, a ``multiprocessing``
    process started by fork) and ends it with SIGTERM, SIGINT or SIGHUP
    (``Process.terminate()``). The helper has the signals of a fresh
    Python and ends. Before (syncteam, 2026-12-08), it inherited the
    worker's: in the gevent and threads pools the worker's stop (the copy
    began a stop of its own and ran on), in the processes pool the child's
    disregard -- it outlived every one of them, in every pool."""
    _, env = events
    w = _worker(procs, node, pool, 1, env)
    _registered(client)
    for signame in ("SIGTERM", "SIGINT", "SIGHUP"):
        assert client.call("signal_forked_helper", [signame], timeout=30) is True, signame
    assert client.call("add", [2, 3], timeout=30) == 5 and w.alive()


@pytest.mark.parametrize("pool,prefetch", [("gevent", "0"), ("gevent", "4"), ("threads", "4"), ("processes", "4")])
def test_a_handler_waiting_for_a_task_its_worker_holds_says_why_it_timed_out(procs, node, client, events, pool,
                                                                             prefetch):
    """Fault: a handler waits for the result of a task of its own queue
    (``add.call()`` inside ``call_add``) on a worker whose one slot it
    holds: the task it waits for cannot start until it returns, so the
    wait runs to its timeout. The outer task's failure says so: the awaited
    task is ready (no prefetch) or held by a worker waiting for a slot, and
    a handler that waits for a result holds its slot meanwhile. Before
    (syncteam, 2026-12-08), it said only ``task ... is still running``
    with the default prefetch: the task was in the worker's prefetch,
    never started, and nothing said a handler's wait held its slot."""
    path, env = events
    w = _worker(procs, node, pool, 1, env, "--prefetch", prefetch)
    _registered(client)
    with pytest.raises(miyaq.TaskFailed) as failed:
        client.call("call_add", [2, 3, 1.0], max_retries=0, timeout=30)
    assert failed.value.remote_type == "Timeout"
    message = failed.value.remote_message
    assert ("is still ready" if prefetch == "0" else "is still running") in message
    assert "this wait runs in a handler, which holds its worker's slot while it waits" in message
    assert client.call("add", [2, 3], timeout=30) == 5 and w.alive()
    with pytest.raises(miyaq.Timeout) as outside:          # a producer's wait is told nothing of handlers
        client.call("call_add", [2, 3, 1.0], max_retries=0, timeout=0.2)
    assert "in a handler" not in str(outside.value)


@pytest.mark.parametrize("pool", POOLS)
def test_a_multiprocessing_pool_is_refused_in_the_gevent_pool_only(procs, node, client, events, pool):
    """Fault: a handler maps over a ``multiprocessing.Pool`` in the gevent
    pool. Under gevent's patching the pool's result thread blocks the hub
    and its forked children deadlock: before (syncteam, 2026-12-08), the
    whole worker hung -- its other tasks, timeouts and SIGTERM with it --
    while its heartbeats kept it registered, and the task ended ``Lost`` at
    its lease. Now the gevent worker refuses the ``Pool`` as it is made
    (``ConfigError`` naming the pools where it works), and runs on; a
    ``ThreadPool`` is not refused, and the other pools run both."""
    _, env = events
    w = _worker(procs, node, pool, 2, env)
    _registered(client)
    if pool == "gevent":
        for method in ("fork", "spawn"):          # both hung
            with pytest.raises(miyaq.TaskFailed) as failed:
                client.call("process_pool_map", [100, method], timeout=30, max_retries=0)
            assert failed.value.remote_type == "ConfigError", failed.value
            assert "--pool threads or --pool processes" in failed.value.remote_message
    else:       # spawned: a fork of a process with threads may deadlock in any pool (the page says so)
        assert client.call("process_pool_map", [100, "spawn"], timeout=30) == 10000
    assert client.call("thread_pool_map", [100], timeout=30) == 10000
    assert client.call("add", [2, 3], timeout=30) == 5 and w.alive()


def test_killed_worker_parent_takes_its_children_along(procs, node, client, events, tmp_path):
    """Fault: kill -9 of a processes-pool worker (the parent). Its children
    notice within a second and exit; the node puts the task back and another
    worker runs it. The killed worker's private directory (its children's
    socket) is removed by the next worker's pool."""
    path, env = events
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**env, "TMPDIR": str(tmp)}
    w = _worker(procs, node, "processes", 2, env)
    _registered(client)
    [left] = os.listdir(tmp)
    tag = uuid.uuid4().hex
    handle = client.submit("slow_first", [tag, 60.0], wait=True)
    wait_for(lambda: _starts(path, tag), what="the handler started")
    child = _starts(path, tag)[0][2]
    w.kill()
    wait_for(lambda: not _alive(child), what="the orphaned child exited")
    assert os.listdir(tmp) == [left]            # abandoned: its worker could not remove it
    _worker(procs, node, "processes", 1, env)
    assert handle.result(30) == 2
    [now] = os.listdir(tmp)
    assert now != left and now.startswith("miyaq-pool-")


def test_max_tasks_per_child_replaces_children(procs, node, client, events):
    """--max-tasks-per-child 2: a child runs two tasks, then a fresh one takes over."""
    _, env = events
    _worker(procs, node, "processes", 1, env, "--max-tasks-per-child", "2")
    pids = [client.call("pid", timeout=30) for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


@pytest.mark.parametrize("pool", POOLS)
def test_status_says_which_pool_runs(procs, node, client, events, pool):
    """READY carries the pool; the node's status lists each worker with it."""
    _, env = events
    _worker(procs, node, pool, 3, env)
    _registered(client)
    [worker] = client.status()["workers"]
    assert worker["pool"] == pool and worker["concurrency"] == 3
    assert client.call("where", timeout=30) == node.endpoint    # current_task().node, in every pool
    out = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "status", "--connect", node.endpoint],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    header = out.splitlines().index(next(line for line in out.splitlines() if line.startswith("worker ")))
    assert out.splitlines()[header + 1].split()[1:3] == [pool, "3"]


def _state(pid: int) -> str:
    """The process's state letter in /proc (T: stopped), or "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


#: A shell's job, in miniature: the worker leads a process group of its own
#: under a parent of another group in the same session (a group without
#: one is orphaned, and the kernel discards the SIGTSTP sent to it).
JOB = ("import subprocess, sys; p = subprocess.Popen(sys.argv[1:], process_group=0); "
       "print(p.pid, flush=True); sys.exit(p.wait())")


def test_job_control_stops_and_continues_the_processes_pool_s_children(node, client, events, tmp_path):
    """Fault: a terminal's Ctrl-Z (SIGTSTP) reaches the processes-pool worker
    alone, its children leading process groups of their own. The worker
    stops its children's groups, then itself; SIGCONT (``fg``) continues
    them all. Before (review43, 2026-12-08), since the children led their
    own groups, they ran on while their worker stood stopped -- handlers
    and the programs they run, out of the job's control."""
    _, env = events
    with open(tmp_path / "worker.log", "wb") as log:
        shell = subprocess.Popen(
            [sys.executable, "-c", JOB, sys.executable, "-m", "miyaq.cli.main", "worker", "apps.pools:app",
             "--connect", node.endpoint, "--concurrency", "1", "--pool", "processes", "--prefetch", "0",
             "--heartbeat", "0.25", "--grace", "5"],
            stdout=subprocess.PIPE, stderr=log, env={**os.environ, **env}, start_new_session=True)
    worker = 0
    try:
        worker = int(shell.stdout.readline())
        _registered(client)
        child = client.call("pid", timeout=60)
        try:
            os.kill(worker, signal.SIGTSTP)
            wait_for(lambda: _state(worker) == "T", timeout=10, what="the worker stopped")
            wait_for(lambda: _state(child) == "T", timeout=10, what="its child stopped")
        finally:
            os.kill(worker, signal.SIGCONT)
        wait_for(lambda: _state(child) not in ("T", ""), timeout=10, what="its child continued")
        assert client.call("pid", timeout=30) == child and _state(worker) not in ("T", "")
    finally:
        if worker and _alive(worker):
            os.kill(worker, signal.SIGCONT)
            os.kill(worker, signal.SIGTERM)
        try:
            shell.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(worker, signal.SIGKILL)
            shell.kill()
            shell.wait(10)
        shell.stdout.close()


def test_pool_settings_are_checked(procs, node):
    """Bad input: an unknown pool, or a processes-only setting with another
    pool, is refused with a clear error before anything starts."""
    for extra, message in ((["--pool", "fibers"], "invalid choice: 'fibers'"),
                           (["--max-tasks-per-child", "5"], "applies to the processes pool only")):
        proc = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "worker", "apps.pools:app",
                               "--connect", node.endpoint, *extra], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and message in proc.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_processes_pool_needs_the_app_spec():
    """Bad input: a Worker built in code with the processes pool but no
    ``app_spec`` (its children import the app themselves) is refused."""
    from miyaq.errors import ConfigError
    from miyaq.worker.runner import Worker
    with pytest.raises(ConfigError, match="needs the app as module:attribute"):
        Worker(pools.app, endpoints=["tcp://127.0.0.1:9"], pool="processes")


def test_worker_settings_survive_the_trip_to_a_child_process():
    """A worker process hands its settings to the process it execs or starts
    through MIYAQ_* variables; they come back unchanged (unset ones unset)."""
    from miyaq.worker.config import WorkerConfig
    config = WorkerConfig(pool="processes", concurrency=3, max_tasks_per_child=7, queues="a,b", heartbeat=0.5)
    env = config.environ({"MIYAQ_PREFETCH": "9", "PATH": "/bin"})
    assert "MIYAQ_PREFETCH" not in env and env["PATH"] == "/bin"
    assert WorkerConfig.load({}, env) == config


def test_a_tmpdir_too_long_for_the_pools_socket_is_a_clear_error(tmp_path):
    """Bad input: TMPDIR so long that the processes pool's unix socket path
    would pass the kernel's limit (107 bytes). The worker exits 2 saying so
    and what to do, not with libzmq's traceback, and leaves no directory."""
    long_dir = tmp_path / ("t" * 100)
    long_dir.mkdir()
    proc = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "worker", "apps.pools:app", "--pool", "processes",
                           "--connect", "tcp://127.0.0.1:9"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TMPDIR": str(long_dir)}, cwd=os.path.dirname(__file__))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "the processes pool cannot listen for its children in" in proc.stderr
    assert "set TMPDIR to a shorter directory" in proc.stderr
    assert os.listdir(long_dir) == []


def test_a_task_waiting_for_a_child_keeps_its_lease(node, procs):
    """Fault: a task handed to a processes-pool worker while a child was
    being replaced (here after ``--max-tasks-per-child 1``; before
    2026-12-05 also while the children first started) waited for one while
    the node's lease ran on; only the worker's own deadline was moved when
    a child came. An at-most-once task of timeout 1 s, that runs 0.3 s,
    waiting for a child that takes 2 s to start, was dead-lettered ``Lost``
    at the node. Waiting for a child now touches the task every quarter of
    its timeout: it runs once and is done."""
    procs.worker("apps.slow_children:app", node.endpoint, 1, "--pool", "processes", "--prefetch", "0",
                 "--max-tasks-per-child", "1", env={"MIYAQ_TEST_CHILD_START": "2.0"})
    with miyaq.Client(node.endpoint) as client:
        first = client.submit("nap", [0.3], timeout=1.0, at_most_once=True, wait=True)
        second = client.submit("nap", [0.3], timeout=1.0, at_most_once=True, wait=True)
        # The first child's task retires it: the second waits for its replacement.
        assert first.result(timeout=60) == second.result(timeout=60) == "rested"
        states = [client.status(h.id) for h in (first, second)]
    assert all(s["state"] == "done" and s["attempt"] == 1 for s in states), states


def test_a_processes_pool_worker_registers_once_its_children_have_started(node, procs):
    """Fault: a processes-pool worker registered its full capacity with its
    node as it started, while its children were still importing the app
    (0.2 s of a core each, seconds for many): the node leased it tasks that
    waited there for a child while another worker sat idle. It now
    registers once every child has said hello (or after
    ``POOL_READY_WAIT``); meanwhile its tasks go to the workers that can
    run them."""
    slow = procs.worker("apps.slow_children:app", node.endpoint, 2, "--pool", "processes", "--prefetch", "0",
                        env={"MIYAQ_TEST_CHILD_START": "60"})
    wait_for(lambda: "queues=default concurrency=2 pool=processes" in slow.log_tail(400),
             what="the slow worker's start")
    with miyaq.Client(node.endpoint) as client:
        procs.worker("apps.slow_children:app", node.endpoint, 2, "--prefetch", "0")
        wait_for(lambda: any(w["pool"] == "gevent" for w in client.status()["workers"]),
                 what="the gevent worker registered")
        assert [w["pool"] for w in client.status()["workers"]] == ["gevent"]
        handles = [client.submit("nap", [0], wait=True) for _ in range(4)]
        assert [h.result(timeout=30) for h in handles] == ["rested"] * 4
    assert "registering with the nodes anyway" not in slow.log_tail(400)


def test_a_pool_never_ready_registers_anyway_after_its_wait(node, monkeypatch, caplog):
    """Fault: a pool that never gets ready (a processes-pool child hanging in
    its import) would keep its worker from registering at all. Past
    ``POOL_READY_WAIT`` the worker registers anyway, says so, and its tasks
    run as the pool can."""
    from miyaq.worker import runner
    from miyaq.worker.pools.greenlets import GreenletPool

    class NeverReady(GreenletPool):
        def ready(self, timeout: float) -> bool:
            green.sleep(timeout)
            return False

    monkeypatch.setattr(runner, "POOL_READY_WAIT", 0.2)
    monkeypatch.setattr(runner, "make_pool", lambda name, parts: NeverReady(parts))
    app = miyaq.App(node.endpoint)

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    with ThreadWorker(app, [node.endpoint], concurrency=2), miyaq.Client(node.endpoint) as client:
        assert client.call("double", [21], timeout=30) == 42
    assert "pool is not ready after 0s; registering with the nodes anyway" in caplog.text


def test_stopping_the_processes_pool_kills_a_busy_child_at_once(monkeypatch):
    """Fault: at a worker's stop (after its grace, its running tasks given
    back with BYE) the pool sent EXIT to every child and waited up to 5 s
    for each to exit -- a child running a handler cannot read EXIT, so its
    handler ran on for 5 s beside the task's next attempt, and with
    ``--processes N`` the supervisor (grace + 5 s) SIGKILLed the worker
    before it ended cleanly. A busy child is now killed at once; the stop
    waits only for idle children, which exit on EXIT."""
    from miyaq.worker.pools import child_process, processes

    class Proc:
        def __init__(self) -> None:
            self.code: int | None = None
            self.pid = 4242

        def poll(self) -> int | None:
            return self.code

        def kill(self) -> None:
            self.code = -9

        def wait(self, timeout: float) -> int | None:
            return self.code

    busy, idle = child_process.ChildProcess(b"busy", Proc()), child_process.ChildProcess(b"idle", Proc())
    busy.job = object()
    busy.ready = idle.ready = True      # both said hello (one that never did is killed at once too)

    class Sock:
        def send_multipart(self, frames) -> None:
            if frames[0] == b"idle":
                idle.proc.code = 0          # an idle child exits on EXIT
            else:
                raise AssertionError(f"EXIT sent to {frames[0]!r}, a child running a handler")

    class Closed:
        def close(self) -> None:
            pass

        remove = close

    pool = processes.ProcessPool.__new__(processes.ProcessPool)
    pool.children = {b"busy": busy, b"idle": idle}
    pool.retired, pool.job_control = [], []
    pool.sock, pool.factory, pool.dir = Sock(), Closed(), Closed()
    waits: list[float] = []
    groups: list[int] = []
    monkeypatch.setattr(processes.green, "sleep", lambda seconds: waits.append(seconds))
    monkeypatch.setattr(child_process, "kill_group", groups.append)     # the fake's pid names no real group
    pool.stop()
    assert busy.proc.code == -9 and idle.proc.code == 0
    assert groups == [4242]         # the busy child's group (its handler's programs), not the idle one's
    assert waits == []              # nothing left to wait for: no 5 s spent on the busy child


def test_a_child_relays_at_most_one_touch_per_interval(monkeypatch):
    """Fault: every ``touch()`` of a handler in a processes-pool child was a
    message the parent unpacked and relayed (13.5 µs of the parent's CPU a
    touch; 8 handlers touching in a loop took 83 % of a core in the parent
    alone, and a no-op task's latency meanwhile rose from 3 to 34 ms). A
    child now relays one touch per min(50 ms, a twentieth of the timeout)."""
    from miyaq.worker.pools import child

    clock = [100.0]
    monkeypatch.setattr(child.time, "monotonic", lambda: clock[0])
    sent: list[str] = []
    relay = child.TouchRelay(sent.append, 60.0)
    for _ in range(1000):
        relay("t1")                       # a handler touching in a tight loop
    assert sent == ["t1"]
    clock[0] += 0.049
    relay("t1")
    assert sent == ["t1"]
    clock[0] += 0.002
    relay("t1")
    assert sent == ["t1", "t1"]
    short = child.TouchRelay(sent.append, 0.2)     # a short timeout: a twentieth of it, 10 ms
    short("t2")
    clock[0] += 0.011
    short("t2")
    assert sent[-2:] == ["t2", "t2"]
