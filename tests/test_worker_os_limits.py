"""A worker at its process's limits: a threads pool that cannot start a
thread, a heartbeat thread out of file descriptors. A raw ROUTER plays the
node (tests/played_node.py); a real :class:`~miyaq.worker.runner.Worker`
runs in a thread. No timing is asserted: waits are bounded guards
(``wait_for``)."""
from __future__ import annotations

import errno
import logging
import threading
from typing import Any

import gevent.threadpool
import msgpack
import pytest
import zmq
from fuzz_inputs import pack
from played_node import PlayedNode

import miyaq
from miyaq.protocol import commands as c
from miyaq.worker.pulse import Pulse
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(60)

app = miyaq.App()
release = threading.Event()
entered: list[str] = []


@app.task(name="hold")
def hold(task_id: str) -> str:
    """Runs until the test releases it (a native wait: the threads pool)."""
    entered.append(task_id)
    release.wait(30)
    return task_id


def delivery(task_id: str) -> list[Any]:
    return [task_id, "default", "hold", pack([[task_id], {}]), 1, 30.0]


@pytest.fixture
def node():
    played = PlayedNode()
    yield played
    played.close()
    release.set()


def dispatch(node: PlayedNode, *deliveries: list[Any]) -> None:
    node.send([c.TAG, c.DISPATCH, pack({"tasks": list(deliveries)})])


def test_a_thread_that_cannot_start_gives_the_task_back_unstarted(node, thread_worker, monkeypatch, caplog) -> None:
    """Fault: the threads pool cannot start its second thread (the process
    is at its limit on threads or memory: ``RuntimeError: can't start new
    thread``, as under ``prlimit --as``). Before, each task in hand was
    reported failed (``WorkerError``, an attempt spent for each), every
    runner crashed with a traceback, and the supervisor stopped the worker,
    abandoning its running handlers. Now the task is given back unstarted
    (RETURN, no credit: no attempt spent), said once, and the worker runs on
    with the one thread it has: the runners past it retire, the running
    handler finishes, the next task runs."""
    release.clear()
    entered.clear()
    worker = thread_worker(app, node.endpoint, concurrency=3, prefetch=0, pool="threads").worker
    real_start = gevent.threadpool.start_new_thread
    started: list[Any] = []

    def second_fails(fn: Any, args: Any) -> Any:
        starter = getattr(fn, "__self__", None)
        if getattr(starter, "_task_queue", None) is worker.pool.threads.task_queue:
            started.append(fn)
            if len(started) >= 2:
                raise RuntimeError("can't start new thread")
        return real_start(fn, args)

    monkeypatch.setattr(gevent.threadpool, "start_new_thread", second_fails)
    wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
    with caplog.at_level(logging.WARNING, logger="miyaq.worker.runner"):
        dispatch(node, delivery("t1"))
        wait_for(lambda: node.pump() or entered == ["t1"], what="t1 running in the first thread")
        dispatch(node, delivery("t2"), delivery("t3"))
        wait_for(lambda: node.pump() or len(node.returned) == 2, what="t2 and t3 given back")
        assert sorted(r["ids"][0] for r in node.returned) == ["t2", "t3"]
        assert all(r == {"ids": r["ids"], "credit": False} for r in node.returned)
        assert not node.reports, "nothing reported failed: no attempt spent"
        assert worker.supervisor.crashes["runner"] == 0 and not worker.crashed
        assert worker.slots_lost == 2
        wait_for(lambda: worker.supervisor.live().count("runner") == 1, what="two runners retired")
        release.set()
        wait_for(lambda: node.pump() or "t1" in node.done, what="t1 finished")
        dispatch(node, delivery("t4"))
        wait_for(lambda: node.pump() or "t4" in node.done, what="t4 run on the thread the pool has")
    shortage_lines = [r for r in caplog.records if "cannot start thread 2 of 3" in r.getMessage()]
    assert len(shortage_lines) == 1, caplog.text
    assert "ulimit -u" in shortage_lines[0].getMessage()
    assert "Traceback" not in caplog.text and not worker.running and not worker.backlog
    assert len(started) == 2, "one thread started, one refused, none tried since"


def test_the_heartbeat_thread_outlives_a_socket_it_cannot_open(monkeypatch, caplog) -> None:
    """Fault: the worker's heartbeat thread cannot make its socket to a node
    (``ZMQError: Too many open files``: a handler holds every descriptor
    for a moment). Before, the thread logged that it failed and ended for
    good: from then on a handler that holds the CPU got the worker declared
    lost. Now the node is skipped for that beat, said once, and its socket
    made at a later beat: the node hears the side heartbeats."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    pulse = Pulse("w-pulse", [endpoint], 0.02)
    real_dealer = pulse.factory.dealer
    tries: list[str] = []

    def out_of_files_twice(connect: str, **options: Any) -> Any:
        tries.append(connect)
        if len(tries) <= 2:
            raise zmq.ZMQError(errno.EMFILE)
        return real_dealer(connect, **options)

    monkeypatch.setattr(pulse.factory, "dealer", out_of_files_twice)
    heard: list[Any] = []

    def side_beat_heard() -> bool:
        while router.poll(0):
            frames = router.recv_multipart()
            body = msgpack.unpackb(frames[-1], raw=False)
            heard.append((frames[-2], body))
        return any(command == c.HEARTBEAT and body == {"worker": "w-pulse", "side": True}
                   for command, body in heard)

    with caplog.at_level(logging.WARNING, logger="miyaq.worker.pulse"):
        pulse.start()
        try:
            wait_for(side_beat_heard, what="a side heartbeat at the node")
            assert pulse.sockets == 1 and len(tries) == 3
        finally:
            pulse.stop()
            router.close(linger=0)
            ctx.term()
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "cannot open a socket to node" in m]) == 1, lines
    assert not any("heartbeat thread failed" in m for m in lines), lines
