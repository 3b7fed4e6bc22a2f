"""``miyaq.aio.Client``: the producer API for asyncio code.

The same client as :class:`miyaq.Client` -- the same protocol core
(pipelining, the window, resends, BUSY backoff, first contact, discovery)
and the same request operations -- driven by the event loop instead of an
I/O thread. Every call is a coroutine; the client starts on first use and
belongs to that event loop (make one per loop). Close it with ``await
client.close()`` or ``async with``: no flush happens at interpreter exit,
since the loop is gone by then; what such a client leaves unsent is
reported then (:func:`_report_at_exit`).
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import weakref
from contextlib import nullcontext
from typing import Any, Iterable, Unpack

from ..client import operations as ops
from ..client.arguments import client_options, seconds, split_endpoints
from ..client.dialling import CLIENT_HEARTBEAT_TIMEOUT
from ..client.options import CallOptions, TaskOptions
from ..client.pending import Pending
from ..client.sizes import WINDOW_BYTES
from ..client.handle import FlushTally, Unflushed
from ..client.window import blocked_by, stayed_full
from ..client.wire import check_request, decode_outcome, submit_id, task_wire, url_wire
from ..devstate import default_connect
from ..errors import MiyaqError, Timeout
from ..protocol import commands as c
from ..protocol.commands import DEFAULT_MAX_MESSAGE
from ..runtime.clock import monotonic
from ..security.curve import client_curve
from .driver import AsyncDriver
from .futures import AioFuture
from .handles import Received, TaskHandle
from .unsent import dropped, report_dropped

logger = logging.getLogger(__name__)

_open: "weakref.WeakSet[Client]" = weakref.WeakSet()


#: Seconds a close() from another thread waits, past its ``timeout``, for
#: the client's own loop to run the close (the flush is bounded by ``timeout``;
#: stopping the readers and closing the sockets takes a pass of that loop).
CLOSE_HANDOVER = 5.0


class Client:
    """Options as :class:`miyaq.Client`'s (docs/configuration.md), without ``green``."""

    def __init__(self, endpoints: str | Iterable[str] | None = None, *, window: int = 10_000,
                 submit_timeout: float = 30.0, ack_timeout: float = 5.0, request_timeout: float = 10.0,
                 max_batch: int = 512, key: str | None = None, server_key: str | None = None,
                 heartbeat_timeout: float = CLIENT_HEARTBEAT_TIMEOUT, window_bytes: int = WINDOW_BYTES) -> None:
        source = "given"
        if endpoints is None:
            endpoints, source = default_connect()
        self.endpoints = split_endpoints(endpoints)
        client_options(window, submit_timeout, ack_timeout, request_timeout, max_batch, heartbeat_timeout,
                       window_bytes=window_bytes)
        self.window = window
        self.window_bytes = window_bytes
        self.submit_timeout = submit_timeout
        self.request_timeout = request_timeout
        self._io = AsyncDriver(self.endpoints, max_batch=max_batch, ack_timeout=ack_timeout,
                               max_message=DEFAULT_MAX_MESSAGE, security=client_curve(key, server_key),
                               endpoints_source=source, heartbeat_timeout=heartbeat_timeout)
        self.nodes = self._io.nodes
        self._unflushed = Unflushed(self.window, nullcontext())    # one event loop: no lock
        # Resolved once a close() under way in the client's loop has closed it:
        # a second close() meanwhile waits for it (see close()).
        self._closing: asyncio.Future[None] | None = None
        _open.add(self)

    @property
    def closed(self) -> bool:
        return self._io.closed

    # -- submitting ------------------------------------------------------------------
    async def submit(self, name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
                     id: str | None = None, wait: bool = False, **options: Unpack[TaskOptions]) -> "TaskHandle":
        """Submit task ``name``; returns its handle once the window has room
        (and, with ``wait=True``, once a node accepted it). Options as
        :meth:`miyaq.Client.submit`."""
        return await self._submit_wire(task_wire(name, args, kwargs, options), id, wait)

    async def submit_url(self, url: str, body: bytes = b"", *, method: str = "POST",
                         headers: dict[str, str] | None = None, id: str | None = None,
                         wait: bool = False, **options: Unpack[TaskOptions]) -> "TaskHandle":
        """Submit a webhook task: the node sends ``body`` to ``url``."""
        return await self._submit_wire(url_wire(url, body, method, headers, options), id, wait)

    async def _submit_wire(self, wire: dict[str, Any], task_id: str | None, wait: bool) -> "TaskHandle":
        io = self._io
        io.ensure_started()
        wire["id"] = submit_id(task_id)
        now = monotonic()
        deadline = now + self.submit_timeout
        future = AioFuture()
        p = Pending(wire, future, now, deadline)
        core = io.core
        counted = False
        if io.room.waiting or blocked_by(core, self.window, self.window_bytes, p.size) is not None:
            counted = await self._wait_for_room(p)
        handle = TaskHandle(wire["id"], self, future)
        # flush() and close() wait for every submit, a waited one too (its
        # wait may be cancelled); one accepted, or whose failure its caller
        # was told, is let go at once.
        self._unflushed.add(handle)
        io.submit(p, counted)
        if wait:
            await handle.wait_accepted()
        return handle

    async def _wait_for_room(self, p: Pending) -> bool:
        """Wait, behind the submits that already do (first come first served:
        :class:`~.window.WindowRoom`), until ``p`` is let in, counted in the
        window (True); Timeout at its deadline, MiyaqError if the client is
        closed meanwhile."""
        io = self._io
        core, window, window_bytes, size = io.core, self.window, self.window_bytes, p.size
        if not await io.room.wait_turn(p, lambda: blocked_by(core, window, window_bytes, size) is None, p.deadline,
                                       io.ensure_started):
            raise stayed_full(blocked_by(core, window, window_bytes, size), core, window, window_bytes, size,
                              self.submit_timeout)
        return True

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every submit so far is acknowledged; raises the first
        failure, saying how many more failed, or Timeout if some are not
        finished within ``timeout`` (the next flush waits for those again)."""
        self._io.check_loop()
        timeout = seconds(timeout, "timeout", optional=True)
        timeout = self.submit_timeout + 5 if timeout is None else timeout
        deadline = monotonic() + timeout
        handles, uncounted = self._unflushed.take()
        tally = FlushTally()
        try:
            for h in handles:
                try:
                    await h.wait_accepted(max(0.0, deadline - monotonic()))
                except MiyaqError as err:
                    tally.add(h, err)
        finally:
            self._unflushed.put_back(handles)     # those not seen resolved (timed out, cancelled)
        error = tally.error(uncounted, timeout)
        if error is not None:
            raise error

    # -- requests ----------------------------------------------------------------------
    async def request(self, command: bytes, body: dict[str, Any], *, node: str | int | None = None,
                      timeout: float | None = None) -> dict[str, Any]:
        """Send one request and wait for its REPLY (raises the node's error;
        TypeError for a command not bytes, a body msgpack cannot encode)."""
        self._io.ensure_started()
        check_request(command, body)
        timeout = seconds(timeout, "timeout", optional=True)
        timeout = self.request_timeout if timeout is None else timeout
        body["req"] = self._io.core.next_req()
        future = AioFuture()
        index = self.nodes.index(node)
        self._io.request(index, command, body, future, monotonic() + timeout)
        try:
            reply: dict[str, Any] = await future.wait(timeout + 1.0, what=command.decode().lower())
        except BaseException:
            # Cancelled (asyncio.wait_for, asyncio.timeout, a task's cancel()): nobody waits now.
            if not future.done():
                self._io.withdraw(body["req"])
            elif command == c.RECEIVE and future.ok():
                # Answered in the pass the cancel came in: the task it brings is nobody's.
                self._io.give_back(index, future.result().get("task"))
            raise
        return reply

    async def _run(self, op: ops.Operation) -> Any:
        return await ops.run_async(op, lambda ask: self.request(ask.command, ask.body, node=ask.node,
                                                                timeout=ask.timeout), asyncio.sleep)

    async def status(self, task_id: str | None = None, *, node: str | int | None = None) -> dict[str, Any]:
        """A task's status (id given) or the node's."""
        return await self._run(ops.status(self.nodes, task_id, node))

    async def cancel(self, task_id: str) -> bool:
        return await self._run(ops.cancel(self.nodes, task_id))

    async def ring(self) -> dict[str, Any]:
        answer = await self.request(c.RING, {})
        answer.pop("req", None)
        return answer

    async def wait_result(self, task_id: str, timeout: float | None, node: str | None = None) -> dict[str, Any]:
        timeout = seconds(timeout, "timeout", optional=True)
        return await self._run(ops.wait_result(self.nodes, task_id, timeout, node, self.request_timeout))

    async def result(self, task_id: str, timeout: float | None = 60.0) -> Any:
        return decode_outcome(task_id, await self.wait_result(task_id, timeout))

    async def call(self, name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
                   id: str | None = None, timeout: float | None = 60.0, **options: Unpack[CallOptions]) -> Any:
        """Submit, wait for acceptance, then for the result (``timeout``: the
        wait; ``id``: the task's id, else a new one)."""
        timeout = seconds(timeout, "timeout", optional=True)
        handle = await self.submit(name, args, kwargs, id=id, wait=True, **options)
        return await handle.result(timeout)

    async def tasks(self, queue: str | None = None, state: str | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
        return await self._run(ops.tasks(queue, state, limit))

    async def dead(self, op: str = "list", queue: str | None = None, ids: list[str] | None = None,
                   limit: int = 100) -> dict[str, Any]:
        return await self._run(ops.dead(op, queue, ids, limit))

    async def receive(self, queues: Iterable[str] | str = ("default",), timeout: float = 0.0) -> "Received | None":
        """Take one ready task, waiting up to ``timeout`` seconds; None if none came."""
        timeout = seconds(timeout, "timeout")
        task = await self._run(ops.receive(queues, timeout, self.request_timeout))
        return None if task is None else Received(self, task)

    # -- lifecycle ---------------------------------------------------------------------
    async def close(self, flush: bool = True, timeout: float = 10.0) -> None:
        """With ``flush``, wait up to ``timeout`` for every submit so far to
        be acknowledged (raising as :meth:`flush` does); then stop the I/O
        and close the sockets. Idempotent: a ``close()`` while another is
        flushing waits for that one, up to ``timeout`` (then closes,
        raising Timeout); ``close(flush=False)`` closes at once. From
        another thread than the one running the client's loop, the close
        runs in that loop and is waited for there (up to ``timeout`` plus
        ``CLOSE_HANDOVER``: Timeout if the loop did not run it by then,
        the close still to come). From another event loop once the
        client's own no longer runs (closed, or stopped), nothing can be
        waited for: it closes, and with ``flush`` raises
        :class:`MiyaqError` saying how many submits it never read an
        acknowledgement of (before 2026-12-05 they were dropped without a
        word); ``close(flush=False)`` drops them knowingly."""
        if self._io.closed:
            return
        timeout = seconds(timeout, "timeout")
        if await self._closed_in_own_loop(flush, timeout):
            return
        own_loop = self._io.in_own_loop
        under_way = self._closing if own_loop else None
        if under_way is not None and flush:
            try:
                await asyncio.wait_for(asyncio.shield(under_way), timeout)
                return
            except TimeoutError:
                await self._io.close()
                raise Timeout(f"a close() under way did not end within {timeout:g}s: the client is closed now, "
                              "its submits not yet acknowledged failed") from None
        mine = None
        if own_loop and under_way is None:
            mine = self._closing = asyncio.get_running_loop().create_future()
        unanswered = refused = 0
        if flush and not own_loop:      # counted before closing fails the unanswered ones
            handles, uncounted = self._unflushed.take()
            unanswered = sum(1 for h in handles if not h._accepted.done())
            refused = sum(1 for h in handles if h._accepted.done() and not h._accepted.ok()) + uncounted
        try:
            if flush and own_loop:
                await self.flush(timeout)
        finally:
            try:
                await self._io.close()
            finally:
                if mine is not None:
                    mine.set_result(None)
        if unanswered or refused:
            raise MiyaqError(_closed_elsewhere(unanswered, refused))

    def abandon(self) -> None:
        """Close a client whose event loop is closed (it can never run
        there again): its sockets now, unflushed, and what it held
        unacknowledged said once at ERROR, as the exit report says it.
        Nothing is waited for; a client whose loop may still run is left
        alone (close it there). ``app.aio`` calls it for the clients of the
        loops that ended (before 2026-12-07 it kept them for good)."""
        if self._io.loop is not None and not self._io.loop.is_closed():
            return
        self._io.abandon()

    async def _closed_in_own_loop(self, flush: bool, timeout: float) -> bool:
        """From another thread than the one running the client's loop: hand
        the close to that loop and wait for it (True once closed there).
        False when the client's loop is not running (or is this one): the
        caller closes. Before 2026-12-07 such a close resolved the client's
        asyncio futures from the wrong thread -- under asyncio's debug mode
        a RuntimeError that left the sockets open and a call awaiting there
        hanging to its own timeout -- and dropped its unacknowledged
        submits unflushed."""
        owner = self._io.loop
        if owner is None or owner is asyncio.get_running_loop() or not owner.is_running():
            return False
        try:
            there = asyncio.run_coroutine_threadsafe(self.close(flush, timeout), owner)
        except RuntimeError:        # its loop closed meanwhile: nothing runs there now
            return False
        try:
            # Shielded: giving up here does not cancel the close in the client's loop.
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(there)), timeout + CLOSE_HANDOVER)
        except TimeoutError:
            raise Timeout(f"the client's event loop (in another thread) did not close it within "
                          f"{timeout + CLOSE_HANDOVER:g}s; it closes once that loop runs on") from None
        return True

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close(flush=exc[0] is None)


def _closed_elsewhere(unanswered: int, refused: int) -> str:
    """What ``close()`` from another event loop says of the submits a flush
    would have reported."""
    return ("close() from another event loop than the client's cannot wait for its submits: "
            + dropped(unanswered, refused)
            + "; close the client in its own loop, or call close(flush=False) to drop them knowingly")


@atexit.register
def _report_at_exit() -> None:
    """At interpreter exit, the submits of clients never closed that no node
    acknowledged (or that failed unseen): their loop is gone, nobody sends
    or waits for them any more. Logged, one line a client; before 2026-12-07
    ``asyncio.run(main())`` with an unclosed client ended without a word,
    its tasks never sent."""
    for client in list(_open):
        if client.closed:
            continue
        handles, uncounted = client._unflushed.take()
        unanswered = sum(1 for h in handles if not h._accepted.done())
        refused = sum(1 for h in handles if h._accepted.done() and not h._accepted.ok()) + uncounted
        report_dropped(unanswered, refused)
