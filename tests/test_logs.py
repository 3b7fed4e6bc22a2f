"""miyaq.logs: the bounded rate of warnings a flood of bad input could repeat, and
records that stay one line whatever they quote."""
from __future__ import annotations

import logging
import time

import msgpack
import zmq

from miyaq import logs
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for


def test_a_flood_of_one_kind_of_warning_is_logged_at_a_bounded_rate(caplog, monkeypatch) -> None:
    """Fault: a buggy or hostile peer sends the same bad input thousands of
    times a second. LogLimiter lets ``burst`` lines of a kind through per
    window, counts the rest, and says how many it left out with the next
    window's first line; another kind has its own window."""
    now = [100.0]
    monkeypatch.setattr(logs, "monotonic", lambda: now[0])
    limiter = logs.LogLimiter(logging.getLogger("miyaq.test.flood"), burst=3, per=60.0)
    with caplog.at_level(logging.WARNING, logger="miyaq.test.flood"):
        told = [limiter.warning("bad", "bad input %d", i) for i in range(1000)]
        assert limiter.warning("other", "another kind")
        now[0] += 60.0
        assert limiter.warning("bad", "bad input again")
    assert told == [True] * 3 + [False] * 997
    assert [r.getMessage() for r in caplog.records] == [
        "bad input 0", "bad input 1", "bad input 2", "another kind",
        "997 more bad line(s) were not logged in the last 60s", "bad input again"]


FORGED = "2026-12-04 00:00:00,000 CRITICAL miyaq.node: node stopped by the operator"


def test_a_line_break_in_a_quoted_value_cannot_forge_a_log_line() -> None:
    """Fault: a message of miyaq's quotes a value from the other side of a
    socket (here a worker id) holding a line break, a carriage return, a
    terminal escape and a Unicode line separator. The record stays one line,
    those characters escaped; an application's own multi-line message (a
    handler's, in a worker) is left as it is."""
    formatter = logs.OneLineMessages(logs.FORMAT)
    record = logging.LogRecord("miyaq.core.workers", logging.INFO, __file__, 1, "worker %s registered",
                               (f"w\n{FORGED}\r\x1b[2J\u2028end",), None)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert line.endswith(f"worker w\\n{FORGED}\\r\\x1b[2J\\u2028end registered")
    mine = logging.LogRecord("shop.tasks", logging.INFO, __file__, 1, "order:\n%s", ("one\ntwo",), None)
    assert formatter.format(mine).endswith("shop.tasks: order:\none\ntwo")


def test_a_worker_id_with_a_line_break_is_logged_on_one_line_by_the_node(procs) -> None:
    """Fault: a hostile worker says READY with an id that holds a line break
    followed by what looks like a record of the node's own. The node logs the
    registration on one line with the break escaped: no line of its log
    starts with the forged record."""
    node = procs.node()
    ctx = zmq.Context()
    try:
        sock = _dealer(ctx, node.endpoint)
        sock.send_multipart([c.TAG, c.READY, msgpack.packb({"worker": f"w\n{FORGED}", "queues": ["q"]})])
        assert sock.poll(30_000), "no answer"
        assert sock.recv_multipart()[1] == c.WELCOME
    finally:
        ctx.destroy(linger=0)
    text = wait_for(lambda: _registered_line(node.log_path), timeout=30, what="the registration logged")
    assert f"worker w\\n{FORGED} registered" in text
    with open(node.log_path, encoding="utf-8", errors="replace") as fh:
        assert not any(line.startswith(FORGED) for line in fh)


def _registered_line(path: str) -> str | None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return next((line for line in fh if " registered: queues=q " in line), None)


def test_workers_registering_in_a_loop_are_logged_at_a_bounded_rate(procs) -> None:
    """Fault: a client registering as a worker in a loop (or a worker
    crash-looping) had the node write a line for each registration and each
    loss without a bound -- 1,000 flaps wrote 2,000 lines in half a second.
    Workers coming and going are logged one by one up to
    ``WORKER_LINES_PER_MINUTE`` lines a minute of each kind, then counted."""
    from miyaq.core.workers import WORKER_LINES_PER_MINUTE

    node = procs.node()
    ctx = zmq.Context()
    try:
        sock = _dealer(ctx, node.endpoint)
        for i in range(3 * WORKER_LINES_PER_MINUTE):
            sock.send_multipart([c.TAG, c.READY, msgpack.packb({"worker": f"flap-{i}", "queues": ["q"]})])
        sock.send_multipart([c.TAG, c.STATUS, msgpack.packb({"req": 1})])    # read after every READY
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert sock.poll(30_000), "no answer"
            if sock.recv_multipart()[1] == c.REPLY:
                break
    finally:
        ctx.destroy(linger=0)
    with open(node.log_path, encoding="utf-8", errors="replace") as fh:
        registered = sum(" registered: queues=q " in line for line in fh)
    assert registered == WORKER_LINES_PER_MINUTE


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A raw DEALER to a node (a hostile or buggy peer's), closed with ``ctx``."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def test_a_flood_of_task_timeouts_is_logged_at_a_bounded_rate(caplog) -> None:
    """Fault: a worker whose tasks all ran past their timeout (a slow
    dependency, a timeout set too short) logged a warning for each one
    stopped, without a bound -- at the rate of its tasks. One by one up to
    ``TIMEOUT_LINES_PER_MINUTE`` lines a minute now, the rest counted; every
    task is still stopped."""
    from types import SimpleNamespace

    from miyaq.runtime import green
    from miyaq.worker import watchdog as watchdog_module

    jobs = [SimpleNamespace(task_id=f"t{i}", name="job", timeout=1.0, deadline=0.0, stop_reason=None,
                            executor=SimpleNamespace(name="gevent"))
            for i in range(3 * watchdog_module.TIMEOUT_LINES_PER_MINUTE)]

    def interrupt(job, reason) -> None:
        job.stop_reason = reason

    watchdog = watchdog_module.Watchdog("w1", lambda: jobs, interrupt)
    with caplog.at_level(logging.WARNING, logger="miyaq.worker.watchdog"):
        loop = green.Greenlet.spawn(watchdog.run)
        try:
            for _ in range(1000):       # the loop's first pass stops every job past its deadline
                if all(job.stop_reason is not None for job in jobs):
                    break
                green.sleep(0.01)
        finally:
            loop.kill()
    assert all(job.stop_reason is not None for job in jobs)
    lines = [r for r in caplog.records if "ran past its 1s timeout" in r.getMessage()]
    assert len(lines) == watchdog_module.TIMEOUT_LINES_PER_MINUTE
