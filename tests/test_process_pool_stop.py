"""A processes-pool worker stopped while its tasks wait for a child: the
children are stand-ins that never say HELLO (as children still importing a
slow app), a raw ROUTER plays the node (tests/played_node.py) and a real
:class:`~miyaq.worker.runner.Worker` runs in a thread. No timing is
asserted: waits are bounded guards."""
from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
from fuzz_inputs import pack
from played_node import PlayedNode

import miyaq
from miyaq.protocol import commands as c
from miyaq.testing.harness import ThreadWorker, wait_for
from miyaq.worker import runner
from miyaq.worker.pools import processes
from miyaq.worker.pools.child_process import ChildProcess
from miyaq.worker.pools.processes import ProcessPool

pytestmark = pytest.mark.timeout(90)

app = miyaq.App()


@app.task(name="once", max_retries=0)
def once() -> str:
    return "ran"


class OrderedNode(PlayedNode):
    """Keeps the order of the commands the worker sent, too."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[bytes] = []

    def read(self, peer: bytes, command: bytes, data: Any) -> None:
        self.commands.append(command)
        super().read(peer, command, data)


def test_a_stop_gives_back_tasks_waiting_for_a_child_unstarted_and_waits_for_no_silent_child(monkeypatch) -> None:
    """Fault: the children never say HELLO (they take longer to import the
    app than the worker waits before it registers), and the worker is
    stopped with two tasks waiting for a child. Before 2026-12-06 they were
    counted as running: the stop waited the whole grace for them, its BYE
    had the node put them back with an attempt spent (an at-most-once task
    dead-lettered without ever running), and the pool then waited
    ``CHILD_EXIT_WAIT`` for the children, which could not read its EXIT.
    Now they are given back unstarted (RETURN, no attempt spent, before the
    BYE), nothing is reported for them, and the silent children are killed
    at once. The grace and ``CHILD_EXIT_WAIT`` are made long here (20 s
    each): a stop that waited for either would outlast the 15 s guard."""
    stand_ins: list[subprocess.Popen[bytes]] = []

    def start_silent_child(pool: ProcessPool) -> ChildProcess:
        pool.generation += 1
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        stand_ins.append(proc)
        child = ChildProcess(f"c{pool.generation}".encode(), proc)
        pool.children[child.identity] = child
        return child

    monkeypatch.setattr(ProcessPool, "_start_child", start_silent_child)
    monkeypatch.setattr(runner, "POOL_READY_WAIT", 0.2)        # registers at once, its children still silent
    monkeypatch.setattr(processes, "CHILD_EXIT_WAIT", 20.0)
    node = OrderedNode()
    running = ThreadWorker(app, [node.endpoint], pool="processes", app_spec="tests:unused", concurrency=2,
                           heartbeat=0.25, grace=20.0).start()
    stopper = threading.Thread(target=running.stop, daemon=True)
    try:
        wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
        node.send([c.TAG, c.DISPATCH, pack({"tasks": [
            ["t1", "default", "once", pack([[], {}]), 1, 30.0],
            ["t2", "default", "once", pack([[], {}]), 1, 30.0]]})])
        worker = running.worker
        wait_for(lambda: node.pump() or len(worker.running) == 2, what="both tasks waiting for a child")
        stopper.start()
        stopper.join(15.0)
        assert not stopper.is_alive(), "the stop waited for tasks never started, or for children never started"
        wait_for(lambda: node.pump() or c.BYE in node.commands, what="the worker's BYE")
        returned = sorted(task_id for body in node.returned for task_id in body["ids"])
        assert returned == ["t1", "t2"]
        assert all(body["credit"] is False for body in node.returned)
        assert node.commands.index(c.RETURN) < node.commands.index(c.BYE)
        assert node.reports == []
        assert worker.executed == 0
        assert len(stand_ins) == 2 and all(proc.poll() is not None for proc in stand_ins)
    finally:
        if not stopper.is_alive() and not stopper.ident:
            running.stop()
        stopper.join(60.0)
        for proc in stand_ins:
            proc.kill()
            proc.wait()
        node.close()
