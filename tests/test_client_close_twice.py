"""Closing a client twice at once, and an asyncio client from another
thread than its loop's (review30's audit, 2026-12-07).

The node is a :class:`~raw_nodes.CountingNode` that acknowledges the
submits only when the test says so: a ``close()`` is kept flushing for as
long as the test needs."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import miyaq
import miyaq.aio
from raw_nodes import CountingNode

pytestmark = pytest.mark.timeout(60)

SUBMITS = 3


def read_every_submit(node: CountingNode) -> None:
    """Pump ``node`` until it read the ``SUBMITS`` submits (bounded)."""
    for _ in range(400):
        if sum(len(ids) for _, ids in node.batches) >= SUBMITS:
            return
        node.pump(25)
    raise AssertionError(f"the node read {node.batches} of {SUBMITS} submits")


def test_a_second_close_while_the_first_flushes_waits_for_it_instead_of_dropping_the_submits() -> None:
    """Fault: two threads close one client at once (an atexit hook and a
    shutdown handler, two lifespans sharing it) while its submits are not
    yet acknowledged. The second close found the client not closed yet,
    flushed nothing (the first had taken every submit to wait for), and
    closed it: the first close's flush failed every submit ("the client
    was closed"), and the second returned as if all was flushed. Now the
    second waits for the close under way."""
    node = CountingNode()
    client = miyaq.Client(node.endpoint, green=False, ack_timeout=60.0, submit_timeout=60.0)
    try:
        handles = [client.submit("echo", [i]) for i in range(SUBMITS)]
        read_every_submit(node)
        raised: list[BaseException] = []

        def close_first() -> None:
            try:
                client.close(timeout=30)
            except BaseException as exc:     # reported below
                raised.append(exc)

        first = threading.Thread(target=close_first)
        first.start()
        for _ in range(1000):            # the first close took the submits to wait for
            if len(client._unflushed) == 0:
                break
            first.join(0.01)
        second_called = threading.Event()

        def acknowledge() -> None:
            second_called.wait(30)
            node.pump(50)                # the second close's call is under way meanwhile
            node.ack_all()

        acker = threading.Thread(target=acknowledge)
        acker.start()
        second_called.set()
        client.close(timeout=30)
        acker.join(30)
        first.join(30)
        assert raised == []
        assert all(h.accepted for h in handles)
    finally:
        client.close(flush=False)
        node.close()


def test_a_second_asyncio_close_while_the_first_flushes_waits_for_it_instead_of_dropping_the_submits() -> None:
    """Fault: ``asyncio.gather(client.close(), client.close())`` -- two
    shutdown hooks of one application -- while submits are not yet
    acknowledged. The second close returned at once, having closed the
    client under the first's flush: every submit failed ("client is
    closed"), none was delivered. Now the second waits for the first."""
    node = CountingNode()
    client = miyaq.aio.Client(node.endpoint, ack_timeout=60.0, submit_timeout=60.0)

    async def main() -> list[Any]:
        handles = [await client.submit("echo", [i]) for i in range(SUBMITS)]
        await asyncio.to_thread(read_every_submit, node)
        first = asyncio.ensure_future(client.close(timeout=30))
        await asyncio.sleep(0)           # the first close is flushing now
        second = asyncio.ensure_future(client.close(timeout=30))
        await asyncio.sleep(0)
        closed_early = second.done()
        await asyncio.to_thread(node.ack_all)
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        return [closed_early, outcomes, [h.accepted for h in handles]]

    try:
        closed_early, outcomes, accepted = asyncio.run(asyncio.wait_for(main(), 50))
        assert outcomes == [None, None]
        assert not closed_early
        assert all(accepted)
    finally:
        asyncio.run(client.close(flush=False))
        node.close()


def test_an_asyncio_close_from_another_thread_closes_in_the_clients_loop_and_flushes() -> None:
    """Fault: ``close()`` from another thread (its own event loop) while
    the client's loop runs, with a call awaiting its answer there. The
    close resolved the client's asyncio futures from the wrong thread --
    under asyncio's debug mode that raised ``RuntimeError: Non-thread-safe
    operation``, the sockets were never closed and the awaiting call hung
    until its own timeout -- and dropped the unacknowledged submits. Now
    the close is handed to the client's loop, which flushes them and fails
    the awaiting call with "client is closed"."""
    node = CountingNode()
    client = miyaq.aio.Client(node.endpoint, ack_timeout=60.0, submit_timeout=60.0, request_timeout=60.0)
    node.silent = True                   # the status request below is never answered

    async def main() -> list[Any]:
        handles = [await client.submit("echo", [i]) for i in range(SUBMITS)]
        await asyncio.to_thread(read_every_submit, node)
        waiting = asyncio.ensure_future(client.status())
        await asyncio.sleep(0)
        closer_outcome: list[Any] = []

        def close_elsewhere() -> None:
            try:
                asyncio.run(client.close(timeout=30))
                closer_outcome.append(None)
            except BaseException as exc:     # reported below
                closer_outcome.append(exc)

        closer = threading.Thread(target=close_elsewhere)
        closer.start()
        await asyncio.to_thread(node.pump, 50)      # the other thread's close is under way meanwhile
        await asyncio.to_thread(node.ack_all)
        await asyncio.to_thread(closer.join, 30)
        with pytest.raises(miyaq.MiyaqError, match="client is closed"):
            await waiting
        return [closer_outcome, [h.accepted for h in handles], client.closed]

    try:
        closer_outcome, accepted, closed = asyncio.run(asyncio.wait_for(main(), 50), debug=True)
        assert closer_outcome == [None]
        assert all(accepted)
        assert closed
    finally:
        asyncio.run(client.close(flush=False))
        node.close()
