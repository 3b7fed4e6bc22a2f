"""The processes pool's parent and what its children say, without a real
child: a process of the test connects to the pool's socket under a child's
identity (as only this user can: the socket is in a 0700 directory)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import zmq

from miyaq.runtime import Supervisor, green
from miyaq.runtime.green import HubInbox
from miyaq.testing.harness import wait_for
from miyaq.worker.pools.base import PoolParts
from miyaq.worker.pools.child import HELLO, TOUCH, pack
from miyaq.worker.pools.child_process import ChildProcess
from miyaq.worker.pools.processes import ProcessPool

pytestmark = pytest.mark.timeout(60)


def test_a_child_that_says_hello_twice_is_queued_idle_once(ctx):
    """Fault: a child says HELLO twice (a bug in a child, or another
    process of the same user on the pool's socket). The parent put it in
    the idle queue at each HELLO, so it would have been given two tasks at
    once, the second while it ran the first. It is queued once."""
    touched: list[str] = []
    inbox = HubInbox("pool test")
    supervisor = Supervisor("pool test")
    parts = PoolParts(concurrency=1, supervisor=supervisor, touch=touched.append,
                      inbox=inbox, app_spec="tests:app", max_tasks_per_child=0, log_level="WARNING")
    pool = ProcessPool(parts)
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pool.children[b"c1"] = ChildProcess(b"c1", stand_in)
    supervisor.spawn("pool reader", pool._read)
    child = ctx.socket(zmq.DEALER)
    child.setsockopt(zmq.LINGER, 0)
    child.setsockopt(zmq.IDENTITY, b"c1")
    child.connect(pool.endpoint)
    try:
        child.send_multipart(pack(HELLO, {"pid": stand_in.pid}))
        child.send_multipart(pack(HELLO, {"pid": stand_in.pid}))
        child.send_multipart(pack(TOUCH, {"id": "after-the-hellos"}))     # read after both
        wait_for(lambda: green.sleep(0.01) or touched == ["after-the-hellos"], what="the child's messages read")
        assert pool.children[b"c1"].ready
        assert pool.idle.qsize() == 1
    finally:
        child.close()
        supervisor.kill()
        stand_in.kill()
        pool.stop()
        inbox._wake.close()
