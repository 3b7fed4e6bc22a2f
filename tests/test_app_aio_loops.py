"""``app.aio`` across event loops: each ``asyncio.run()`` that submits
through the app (``submit_async``, ``call_async``) gets a client of its own,
and the client of a loop that has ended is closed, not kept for good."""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import miyaq
from miyaq.testing.harness import free_port
from process_tree import forked_exit_code


def counts() -> tuple[int, int]:
    """This process's open file descriptors and OS threads (libzmq's included)."""
    return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))


def test_the_clients_of_ended_event_loops_are_closed(node):
    """Fault: ``asyncio.run(task.submit_async(...))`` over and over (a sync
    view or a sync handler wrapping async code, a test suite with a loop
    per test), never ``await app.aclose()``. Before, the app kept each
    ended loop's client for good (its client held the loop, the app's weak
    key): 9 descriptors and 2 libzmq threads more for every run, until the
    process ran out of files. Now a new loop's first use closes the clients
    of the loops that ended: at most one such client stays open."""
    app = miyaq.App(node.endpoint)
    add = app.task(lambda a, b: a + b, name="add", queue="loops")

    async def submit(i: int) -> str:
        return (await add.submit_async(i, 1, wait=True)).id

    asyncio.run(submit(-1))
    asyncio.run(submit(-2))           # the first run's client is closed here
    before = counts()
    ids = [asyncio.run(submit(i)) for i in range(12)]
    assert len(set(ids)) == 12
    assert counts()[0] <= before[0], "the ended loops' clients keep their descriptors"
    assert counts()[1] <= before[1], "the ended loops' clients keep their libzmq threads"
    assert len(app._aio) == 1
    assert all(task["state"] == "ready" for task in app.client.tasks(queue="loops", limit=20))
    app.close()


def test_a_client_whose_loop_ended_with_submits_unsent_says_it_dropped_them(caplog):
    """Fault: a loop that ended right after ``submit_async`` (its node not
    up: nothing acknowledged). The next loop's first use closes that client
    and says, once, what it dropped -- as the exit report would have."""
    app = miyaq.App(f"tcp://127.0.0.1:{free_port()}")
    add = app.task(lambda a, b: a + b, name="add")

    async def submit() -> Any:
        return await add.submit_async(1, 2)

    asyncio.run(submit())
    with caplog.at_level(logging.ERROR, logger="miyaq.aio.client"):
        async def touch() -> bool:
            return app.aio.closed
        assert asyncio.run(touch()) is False
    assert [r.getMessage() for r in caplog.records if "never closed" in r.getMessage()] == [
        "a miyaq.aio client never closed: 1 submit never answered was dropped (a node may or may not have stored "
        "them); await client.close() (or use `async with`) before its event loop ends"]
    assert len(app._aio) == 1


def test_loops_in_several_threads_each_get_a_client(node):
    """Threads that each run ``asyncio.run()`` at once (the threads pool's
    sync handlers wrapping async code): each loop gets its own client, none
    is closed under a loop that still runs, and the ended ones are closed."""
    app = miyaq.App(node.endpoint)
    add = app.task(lambda a, b: a + b, name="add", queue="threads")
    errors: list[BaseException] = []

    def runs() -> None:
        async def submit(i: int) -> None:
            await add.submit_async(i, 1, wait=True)
            await asyncio.sleep(0)
            await add.submit_async(i, 2, wait=True)
        try:
            for i in range(5):
                asyncio.run(submit(i))
        except BaseException as exc:      # noqa: BLE001 -- handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=runs) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(app.client.tasks(queue="threads", limit=100)) == 40
    assert len(app._aio) <= 4
    app.close()


def test_a_forked_child_lets_go_of_the_parents_ended_client(node):
    """Fault: the parent used ``app.aio`` in a loop that ended (a check at
    start-up), then forked (a pre-forking server). The child's first loop
    lets go of the parent's client without closing the parent's sockets
    (not the child's), submits through a client of its own, and exits; the
    parent's next loop still works."""
    app = miyaq.App(node.endpoint)
    add = app.task(lambda a, b: a + b, name="add", queue="forked")

    async def submit(i: int) -> str:
        return (await add.submit_async(i, 1, wait=True)).id

    asyncio.run(submit(0))
    pid = os.fork()
    if pid == 0:                                 # the child: never returns into pytest
        code = 2
        try:
            asyncio.run(submit(1))
            asyncio.run(submit(2))
            code = 0
        finally:
            os._exit(code)
    assert forked_exit_code(pid, 30.0, "the forked child hung") == 0
    asyncio.run(submit(3))
    assert len(app.client.tasks(queue="forked", limit=10)) == 4
    app.close()
