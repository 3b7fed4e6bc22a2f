"""miyaq.aio: a client dropped without close() while its event loop runs is
collected -- once the submits it holds are delivered -- and its tasks,
sockets and libzmq threads go with it."""
from __future__ import annotations

import asyncio
import gc
import os
import weakref
from typing import Any, Awaitable, Callable

import miyaq.aio
from miyaq.client import submits as client_submits
from miyaq.testing.harness import ThreadNode, free_port


def run(main: Callable[[], Awaitable[Any]], limit: float = 60.0) -> Any:
    """Run a coroutine in a fresh event loop, bounded so a hang fails the test."""
    return asyncio.run(asyncio.wait_for(main(), limit))


async def until(predicate: Callable[[], Any], what: str, limit: float = 15.0) -> None:
    """Wait (in the loop, bounded) until ``predicate()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def counts() -> tuple[int, int, int]:
    """This process's open file descriptors and OS threads (libzmq's
    included), and the running loop's tasks."""
    return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")), len(asyncio.all_tasks())


def test_clients_dropped_unclosed_while_their_loop_runs_are_stopped_and_closed(node):
    """Fault: ``miyaq.aio.Client`` made per request in a running application
    and dropped without ``close()``. Before, its reader and watcher tasks
    held it for as long as the loop ran: each dropped client kept 9 file
    descriptors, 2 libzmq threads and 2 tasks for good. Now each is
    collected, its tasks stop and its sockets and context close in its loop."""
    async def main() -> None:
        async def use(client: miyaq.aio.Client, i: int) -> weakref.ref[Any]:
            await client.submit("job", [i], queue="dropped", wait=True)
            await client.status()
            return weakref.ref(client._io)

        async with miyaq.aio.Client(node.endpoint) as first:     # what a first client opens once
            await use(first, -1)
        before = counts()
        drivers = [await use(miyaq.aio.Client(node.endpoint), i) for i in range(8)]
        assert counts()[2] > before[2]           # their readers run
        for driver in drivers:
            await collected(driver)
        await until(lambda: counts()[2] == before[2], "every dropped client's tasks stopped")
        await until(lambda: counts()[1] <= before[1], "every dropped client's libzmq threads ended")
        await until(lambda: counts()[0] <= before[0], "every dropped client's descriptors closed")

    run(main)



async def collected(driver: weakref.ref[Any], limit: float = 15.0) -> None:
    """Wait (bounded) until the driver is collected, collecting garbage at
    every pass of the loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while driver() is not None and loop.time() < deadline:
        gc.collect()
        await asyncio.sleep(0)
    assert driver() is None, "the dropped client was never collected"


def test_a_client_dropped_before_its_node_came_up_delivers_its_submits_then_is_collected(monkeypatch):
    """Fault: a client dropped without ``close()`` right after submitting, its
    node not up yet (the submits wait in the client), garbage collected at
    every pass of the loop. Its submits are delivered once the node comes
    up, as a dropped threaded client's are: a driver collected as soon as
    only its readers referred to it would close its sockets with them
    unsent. Then it is collected (before, never while the loop ran).

    A client that never reached a node fails its submits after
    ``FIRST_CONTACT`` (5 s), as documented: this test is not about that
    rule, so it waits longer here. The collections at every pass, each
    holding the GIL (0.15-0.3 s apiece on a loaded host), starve the node's
    thread in this process: its first acknowledgement came 2-5 s after the
    submits, and past 5 s they failed, the driver was collected with them,
    and the checker found no task (``NotFound``: the full suite on a host at
    load 5-10 failed so once)."""
    monkeypatch.setattr(client_submits, "FIRST_CONTACT", 30.0)    # the default submit_timeout
    port = free_port()
    ids = [f"dropped-{i:024d}" for i in range(10)]
    nodes: list[ThreadNode] = []

    async def main() -> None:
        client = miyaq.aio.Client(f"tcp://127.0.0.1:{port}")
        for i, task_id in enumerate(ids):
            await client.submit("job", [i], queue="dropped", id=task_id)
        driver = weakref.ref(client._io)
        del client
        for _ in range(10):
            gc.collect()
            await asyncio.sleep(0)
        nodes.append(await asyncio.get_running_loop().run_in_executor(
            None, lambda: ThreadNode(port=port, heartbeat=0.25).start()))
        await collected(driver)
        async with miyaq.aio.Client(nodes[0].endpoint) as checker:
            assert [(await checker.status(task_id))["state"] for task_id in ids] == ["ready"] * len(ids)

    try:
        run(main)
    finally:
        for n in nodes:
            n.stop()


def test_submits_left_unsent_when_the_loop_ends_are_reported_at_exit():
    """Fault: ``asyncio.run(main())`` where ``main`` submits through a
    ``miyaq.aio.Client`` it never closes (or flushes): the loop ends, the
    submits are never sent, and the program exited 0 without a word -- the
    task simply did not exist (the threaded client says "unflushed submits
    at exit"). Now exit reports how many were dropped and what to do; a
    client closed in its loop, or whose submits were all acknowledged, says
    nothing."""
    script = (
        "import asyncio, sys\n"
        "import miyaq.aio\n"
        "async def main():\n"
        "    left = miyaq.aio.Client(sys.argv[1])\n"
        "    await left.submit('a', [1])\n"
        "    await left.submit('b', [2])\n"
        "    closed = miyaq.aio.Client(sys.argv[1], submit_timeout=0.5)\n"
        "    await closed.submit('c', [3])\n"
        "    try:\n"
        "        await closed.close()\n"
        "    except miyaq.MiyaqError:\n"
        "        pass\n"
        "asyncio.run(main())\n")
    _one_report_of(script, 2)


def test_submits_left_unsent_are_reported_when_the_client_is_collected_after_its_loop():
    """Fault: the same unclosed client, but the garbage collector runs
    between the loop's end and the interpreter's exit (any program that goes
    on allocating after ``asyncio.run``; here ``gc.collect()``). The client,
    its driver and its handles are one garbage cycle: collected, the client
    was gone from the exit report's set, and the two submits vanished
    without a word again. Now the driver, collected with submits no node
    acknowledged, reports them itself, once."""
    script = (
        "import asyncio, gc, sys\n"
        "import miyaq.aio\n"
        "async def main():\n"
        "    left = miyaq.aio.Client(sys.argv[1])\n"
        "    await left.submit('a', [1])\n"
        "    await left.submit('b', [2], id='twice')\n"
        "    await left.submit('b', [2], id='twice')\n"
        "asyncio.run(main())\n"
        "gc.collect()\n"
        "print('collected', file=sys.stderr)\n")
    stderr = _one_report_of(script, 3)
    assert stderr.index("never closed") < stderr.index("collected"), "reported at the collection, not at exit"


def _one_report_of(script: str, dropped: int) -> str:
    """Run ``script`` (a node endpoint no node answers as its argument): it
    ends 0, and its stderr holds one miyaq line, the report of ``dropped``
    submits of a client never closed. Returns that stderr."""
    from own_interpreter import run_script
    code, _, stderr = run_script(script, f"tcp://127.0.0.1:{free_port()}", timeout=30,
                                 hung="a program whose aio client was never closed did not end")
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if "miyaq" in line]
    assert len(lines) == 1, stderr
    assert lines[0].endswith(
        f"a miyaq.aio client never closed: {dropped} submits never answered were dropped (a node may or may not "
        "have stored them); await client.close() (or use `async with`) before its event loop ends"), stderr
    return stderr
