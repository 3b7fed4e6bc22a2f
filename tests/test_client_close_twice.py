"""Closing a client twice at once, and an asyncio client from another
thread than its loop's (review30's audit, 2026-12-07).

The node is a :class:`~raw_nodes.CountingNode` that acknowledges the
submits only when the test says so: a ``close()`` is kept flushing for as
long as the test needs."""
from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

import miyaq
import miyaq.aio
from process_tree import forked_exit_code
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


class HeldIOClose:
    """Holds the first ``close()`` inside ``client._io.close()`` -- the
    client already marked closed, its I/O thread not yet joined -- until
    :meth:`release`, and watches the close's ``_closing`` event for a second
    close that waits on it (``waiting``)."""

    def __init__(self, client: miyaq.Client) -> None:
        self.client = client
        self.entered = threading.Event()
        self.released = threading.Event()
        self.waiting = threading.Event()
        self.io_close = client._io.close
        client._io.close = self._held           # type: ignore[method-assign]

    def _held(self, *args: Any, **kwargs: Any) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.released.wait(30), "never released"
        self.io_close(*args, **kwargs)

    def watch_closing(self) -> None:
        """Once the first close is held: its event, as a second close sees it."""
        event, waiting = self.client._closing, self.waiting

        class Watched:
            def wait(self, timeout: float | None = None) -> bool:
                waiting.set()
                return bool(event.wait(timeout))

            def set(self) -> None:
                event.set()

            def is_set(self) -> bool:
                return bool(event.is_set())

        self.client._closing = Watched()

    def release(self) -> None:
        self.released.set()


def in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    """``call()`` in a thread of its own: the thread, and the list that gets
    "returned" or the exception once it ends."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            call()
            outcome.append("returned")
        except BaseException as exc:         # reported by the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("flush", [True, False])
def test_a_second_close_while_the_first_joins_the_io_thread_waits_for_its_end(flush: bool) -> None:
    """Fault: a second ``close()`` arriving once the first marked the client
    closed but while it still joined the I/O thread (up to a second) returned
    at once: its caller could exit, or go on, taking the client for closed
    and everything for sent, while the first close was not over. Now it
    waits for the first's end, ``close(flush=False)`` too. The first close
    is held inside ``_io.close()`` until the test releases it: the second
    must still be waiting then, and return once released."""
    node = CountingNode()
    client = miyaq.Client(node.endpoint, green=False)
    held = HeldIOClose(client)
    first = second = None
    try:
        first, first_outcome = in_thread(lambda: client.close(timeout=30))
        assert held.entered.wait(30), "the first close never reached _io.close()"
        held.watch_closing()
        second, second_outcome = in_thread(lambda: client.close(flush=flush, timeout=30))
        for _ in range(3000):                # bounded: until it waits, or returned
            if held.waiting.is_set() or not second.is_alive():
                break
            second.join(0.01)
        assert second_outcome == [] and held.waiting.is_set(), second_outcome
        assert second.is_alive()             # waiting on the held first close
        held.release()
        first.join(30)
        second.join(30)
        assert first_outcome == ["returned"] and second_outcome == ["returned"], (first_outcome, second_outcome)
        assert client._io.stopped
    finally:
        held.release()
        for thread in (first, second):
            if thread is not None:
                thread.join(30)
        client.close(flush=False)
        node.close()


def test_a_forked_child_closing_does_not_wait_for_the_parents_close_under_way() -> None:
    """Fault guarded against: a child forked while a thread of the parent
    was inside ``close()`` inherits the client closed, with that close's
    event never to be set (the closing thread stayed in the parent). The
    child's ``close()`` must return at once, not wait for it (here: up to
    20 s, then Timeout, exit status 1)."""
    node = CountingNode()
    client = miyaq.Client(node.endpoint, green=False)
    held = HeldIOClose(client)
    first = None
    try:
        first, first_outcome = in_thread(lambda: client.close(timeout=30))
        assert held.entered.wait(30), "the first close never reached _io.close()"
        pid = os.fork()
        if pid == 0:                         # the child: never returns into pytest
            code = 2
            try:
                client.close(timeout=20)
                code = 0 if client.forked else 3
            except BaseException:            # its exit status says so
                code = 1
            finally:
                os._exit(code)
        assert forked_exit_code(pid, 40.0, "the forked child hung in close()") == 0
        held.release()
        first.join(30)
        assert first_outcome == ["returned"]
    finally:
        held.release()
        if first is not None:
            first.join(30)
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
