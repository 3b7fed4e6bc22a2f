"""Fault: a handler touches its task thousands of times between two yields
(``touch()`` once per chunk of CPU work, as docs/python-api.md suggests).

Before, the worker's outbox kept every touch() and sent them all in one
TOUCH at the next flush; the node refuses a TOUCH of more than
``MAX_TOUCH_IDS`` (10,000) ids, so every lease extension was lost: the
lease ran out while the handler touched constantly and the task ran again
and again (with the processes pool one TOUCH held 514,273 ids, over 16 MiB,
and the node dropped the connection). Now a task waiting to be touched is
touched once, a TOUCH carries at most ``MAX_TOUCH_IDS`` ids, and the
processes pool's reader yields now and then while a child floods it with
touches (before, it flushed nothing until the child stopped touching).

The end-to-end tests' handler runs past its lease (1 s) touching in bursts
of 30,000 with a short yield between; it must finish on its first attempt.
"""
from __future__ import annotations

import time
from typing import Any

import pytest

import miyaq
from miyaq.errors import MiyaqError
from miyaq.protocol import commands as c
from miyaq.runtime import green
from miyaq.testing.harness import wait_for
from miyaq.worker.outbox import Outbox

pytestmark = pytest.mark.timeout(60)

BURST = 30_000          # touches between two yields: three times the node's limit
LEASE = 1.0             # the task's timeout
RUNS_FOR = 2.5          # the handler's run: past its lease, so only its touches keep it

app = miyaq.App()


@app.task(name="touch_batches.burst")
def burst(seconds: float, touches: int) -> int:
    """Touches ``touches`` times without yielding, yields briefly, again
    until ``seconds`` have passed; returns its attempt."""
    ctx = miyaq.current_task()
    pause = green.sleep if green.hub_running() else time.sleep   # the gevent pool, or a child process
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(touches):
            ctx.touch()
        pause(0.02)
    return ctx.attempt


class Wire:
    """The outbox's ``post``: records each message; ``fail_at`` makes the
    send with that index (0 the first) raise once."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[tuple[bytes, dict[str, Any]]] = []
        self.fail_at = fail_at
        self.calls = 0

    def post(self, command: bytes, body: dict[str, Any]) -> None:
        n, self.calls = self.calls, self.calls + 1
        if n == self.fail_at:
            raise MiyaqError("send failed (simulated)")
        self.sent.append((command, body))

    def touched(self) -> list[list[str]]:
        assert all(command == c.TOUCH for command, _ in self.sent)
        return [body["ids"] for _, body in self.sent]


def _outbox(wire: Wire) -> Outbox:
    return Outbox(wire.post, lambda *args, **kw: None, "flush test")   # the test flushes itself


def test_touching_one_task_many_times_sends_one_id():
    wire = Wire()
    outbox = _outbox(wire)
    for _ in range(50_000):
        outbox.add_touch("t1")
    assert len(outbox) == 1
    outbox.flush()
    assert wire.touched() == [["t1"]]
    assert len(outbox) == 0


def test_many_tasks_touched_leave_in_messages_the_node_accepts():
    wire = Wire()
    outbox = _outbox(wire)
    ids = [f"t{i}" for i in range(25_000)]
    for _ in range(2):
        for task_id in ids:
            outbox.add_touch(task_id)
    outbox.flush()
    messages = wire.touched()
    assert len(messages) == 3
    assert all(len(m) <= c.MAX_TOUCH_IDS for m in messages)
    assert [i for m in messages for i in m] == ids          # each once, in order
    assert len(outbox) == 0


def test_a_failed_touch_send_keeps_what_it_did_not_send():
    """The second of three messages fails: the flush raises, the ids not
    sent stay queued (in order, a touch added meanwhile once), and the next
    flush sends them."""
    wire = Wire(fail_at=1)
    outbox = _outbox(wire)
    ids = [f"t{i}" for i in range(25_000)]
    for task_id in ids:
        outbox.add_touch(task_id)
    with pytest.raises(MiyaqError):
        outbox.flush()
    assert [i for m in wire.touched() for i in m] == ids[:c.MAX_TOUCH_IDS]
    outbox.add_touch(ids[-1])
    outbox.add_touch("late")
    outbox.flush()
    messages = wire.touched()
    assert all(len(m) <= c.MAX_TOUCH_IDS for m in messages)
    assert [i for m in messages for i in m] == ids + ["late"]


def test_a_handler_touching_in_bursts_keeps_its_lease(node, client, thread_worker):
    """The gevent pool: 30,000 touches between two yields, for longer than
    the lease. Before, every TOUCH was refused and the lease ran out."""
    thread_worker(app, node.endpoint, queues=["default"], concurrency=1, prefetch=0)
    handle = client.submit("touch_batches.burst", [RUNS_FOR, BURST], timeout=LEASE, max_retries=0, wait=True)
    assert handle.result(30) == 1
    assert client.status(handle.id)["attempt"] == 1


def test_a_child_process_touching_in_bursts_keeps_its_lease(procs, node, client):
    """The processes pool: the parent reads a child's touches one message
    each. Before, its reader read them without yielding while the child
    touched, so nothing was flushed until the lease had run out, and then
    one TOUCH took every touch read meanwhile. Either fault alone loses the
    lease here."""
    w = procs.worker("test_worker_touch_batches:app", node.endpoint, 1, "--pool", "processes", "--prefetch", "0")
    wait_for(lambda: "child process(es) ready" in w.log_tail(400), timeout=30, what="the pool's child")
    handle = client.submit("touch_batches.burst", [RUNS_FOR, BURST], timeout=LEASE, max_retries=0, wait=True)
    assert handle.result(30) == 1
    assert client.status(handle.id)["attempt"] == 1
