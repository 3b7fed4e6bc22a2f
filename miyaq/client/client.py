"""The producer API: submit, call, cancel, status, result, and pull consumers.

``submit`` is pipelined the way Kafka's producer is: it returns a
:class:`~miyaq.client.handle.TaskHandle` at once while the client's I/O loop
sends the task (batched with others), waits for the node's acknowledgement,
and resends it with the same id if the acknowledgement does not come. At
most ``window`` submits, holding at most ``window_bytes`` (a lone one may
hold more), are unacknowledged; beyond that ``submit`` blocks.
A task counts as *accepted* only when its handle's ``wait_accepted()``
returns (or ``flush()`` does): docs/semantics.md. Busy nodes are retried
transparently with backoff until ``submit_timeout``; only then does the
caller see one exception (:class:`miyaq.Busy`).

Thread-safe. In a gevent program (a miyaq worker) pass ``green=True``; in
asyncio code use :mod:`miyaq.aio`. With ``key``/``server_key`` (or
``MIYAQ_KEY``/``MIYAQ_SERVER_KEY``) every socket runs CURVE (docs/security.md).

The logic is shared with the asyncio client: :mod:`.core` (the sans-I/O
protocol core: batching, window, resends, BUSY, discovery) and
:mod:`.operations` (requests); :mod:`.io` drives the core here. How a client
ends -- its close, a fork, the process's exit -- is its base's,
:mod:`.lifecycle`.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from time import monotonic   # miyaq.runtime.monotonic, without importing the runtime (gevent) here
from typing import Any, Iterable, Iterator, Unpack

from ..devstate import default_connect
from ..errors import Busy, MiyaqError, NotFound, Timeout, Unavailable
from ..protocol import commands as c
from ..protocol.commands import DEFAULT_MAX_MESSAGE
from ..security.curve import client_curve
from . import operations as ops
from .futures import Future
from .arguments import client_options, seconds, split_endpoints
from .dialling import CLIENT_HEARTBEAT_TIMEOUT
from .handle import FlushTally, TaskHandle, Unflushed
from .io import IOLoop
from .short_path import ThreadedIOLoop
from .kit import choose
from .options import CallOptions, ClientOptions, TaskOptions
from .pending import Pending
from .received import Received
from .sizes import WINDOW_BYTES
from .window import blocked_by, stayed_full
from .wire import (TASK_OPTIONS, check_request, decode_outcome, new_id, pack_args, submit_id, task_wire,
                   url_wire)
# Last: its hooks at a fork and at exit come after those of the modules above, as when they were here.
from .lifecycle import FORKED, ClientLifecycle, _clients

__all__ = ["TASK_OPTIONS", "CallOptions", "Client", "ClientOptions", "Received", "TaskOptions", "new_id", "pack_args"]


class Client(ClientLifecycle):
    """A producer's connection to one or more nodes (docs/python-api.md).

    .. code-block:: python

        import miyaq

        client = miyaq.Client("tcp://127.0.0.1:7450")
        handle = client.submit("add", [2, 3], queue="docs")   # at once; sent in the background
        client.flush()                                         # every submit so far is accepted
        assert handle.accepted
        client.close()
    """

    def __init__(self, endpoints: str | Iterable[str] | None = None, *,
                 window: int = 10_000, submit_timeout: float = 30.0, ack_timeout: float = 5.0,
                 request_timeout: float = 10.0, max_batch: int = 512, green: bool | None = None,
                 key: str | None = None, server_key: str | None = None,
                 heartbeat_timeout: float = CLIENT_HEARTBEAT_TIMEOUT, window_bytes: int = WINDOW_BYTES) -> None:
        # No endpoints: MIYAQ_CONNECT, else the dev cluster started in this
        # directory, else tcp://127.0.0.1:7450 (miyaq.devstate).
        self.endpoints_source = "given"
        if endpoints is None:
            endpoints, self.endpoints_source = default_connect()
        endpoints = split_endpoints(endpoints)
        client_options(window, submit_timeout, ack_timeout, request_timeout, max_batch, heartbeat_timeout,
                       window_bytes=window_bytes)
        self.endpoints = endpoints
        self.window = window
        self.window_bytes = window_bytes
        self.submit_timeout = submit_timeout
        self.request_timeout = request_timeout
        self.kit = choose(green)
        # CURVE: our secret certificate and the node's public one (or MIYAQ_KEY/MIYAQ_SERVER_KEY).
        security = client_curve(key, server_key)
        loop = ThreadedIOLoop if self.kit.name == "thread" else IOLoop
        self._io = loop(self.kit, endpoints, max_batch=max_batch, ack_timeout=ack_timeout,
                        max_message=DEFAULT_MAX_MESSAGE, security=security,
                        endpoints_source=self.endpoints_source, heartbeat_timeout=heartbeat_timeout)
        self.nodes = self._io.nodes
        self._io.start()
        self._closed = False
        # Set once a close() under way has closed the client, its I/O loop
        # joined: a second close() meanwhile waits for it (see close()).
        # Guarded by _close_lock.
        self._closing: Any = None
        self._close_lock = self.kit.lock()
        self._forked = False           # set in a forked child (see _after_fork_in_child)
        self._unflushed = Unflushed(self.window, self.kit.lock())    # submits come from any thread
        _clients.add(self)
        # Dropped without close(): its I/O loop ends once its submits are
        # resolved (a thread and sockets were kept for the process's life).
        self._abandoned = weakref.finalize(self, self._io.close_when_idle)
        self._abandoned.atexit = False    # at exit, _flush_at_exit closes what is still referenced

    # -- submitting ------------------------------------------------------------------
    def submit(self, name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
               id: str | None = None, wait: bool = False, **options: Unpack[TaskOptions]) -> TaskHandle:
        """Submit task ``name`` with ``args``/``kwargs``. Options: queue,
        priority, eta (unix time or datetime), countdown (s), ttl (s),
        max_retries, backoff, backoff_max, timeout (lease, s), key, replicas,
        at_most_once, offset (s between holder ranks' timers, cluster).
        ``wait=True`` blocks until accepted."""
        return self._submit_wire(task_wire(name, args, kwargs, options), id, wait)

    def submit_url(self, url: str, body: bytes = b"", *, method: str = "POST",
                   headers: dict[str, str] | None = None, id: str | None = None,
                   wait: bool = False, **options: Unpack[TaskOptions]) -> TaskHandle:
        """Submit a webhook task: the node POSTs ``body`` to ``url``. Options
        as :meth:`submit`."""
        return self._submit_wire(url_wire(url, body, method, headers, options), id, wait)

    def _pending(self, wire: dict[str, Any], task_id: str | None,
                 wait: bool) -> tuple[Pending, TaskHandle, bool]:
        """A submit ready to hand to the I/O loop (once the window has room),
        its handle, and whether it is counted in the window already (it
        waited for room: the window's queue let it in)."""
        self._check_open()
        wire["id"] = submit_id(task_id)
        future = self.kit.waiter() if wait else Future(self._io.heard_event)
        io = self._io
        core = io.core
        now = monotonic()
        deadline = now + self.submit_timeout
        p = Pending(wire, future, now, deadline)
        counted = False
        if io.room.waiting or blocked_by(core, self.window, self.window_bytes, p.size) is not None:
            counted = self._wait_for_room(p)
        return p, TaskHandle(wire["id"], self, future), counted

    def _wait_for_room(self, p: Pending) -> bool:
        """Wait, behind the submits that already do (first come first served:
        :class:`~.window.WindowQueue`), until ``p`` is let in, counted in the
        window (True); Timeout at its deadline. A close meanwhile lets every
        waiter in at once, to raise MiyaqError "client is closed" (counted
        out again): before 2026-12-07 a waiter was let in by the room the
        close made and handed a handle whose submit had failed, seen only at
        its ``result()`` or a ``flush()``."""
        io = self._io
        core, window, window_bytes, size = io.core, self.window, self.window_bytes, p.size

        def fits() -> bool:
            return self._closed or blocked_by(core, window, window_bytes, size) is None

        if not io.room.wait_turn(p, fits, p.deadline):
            raise stayed_full(blocked_by(core, window, window_bytes, size), core, window, window_bytes, size,
                              self.submit_timeout)
        if self._closed:
            io.uncount(p)
            io.room.freed()
            self._check_open()
        return True

    def _submit_wire(self, wire: dict[str, Any], task_id: str | None, wait: bool) -> TaskHandle:
        p, handle, counted = self._pending(wire, task_id, wait)
        # flush() and close() wait for every submit, a waited one too: its wait
        # may be interrupted (a gevent.Timeout, a killed greenlet, Ctrl-C, also
        # on the short path, where the caller reads the sockets); one accepted,
        # or whose failure its caller was told, is let go at once.
        self._unflushed_or_counted_out(handle, p, counted)
        self._io.submit(p, wait, counted)
        if wait:
            handle.wait_accepted()
        return handle

    def _unflushed_or_counted_out(self, handle: TaskHandle, p: Pending, counted: bool) -> None:
        """Keep ``handle`` for flush() and close(). Interrupted here (Ctrl-C
        landing while another thread holds the set's lock, a gevent kill),
        a submit the window's queue let in is counted out again and the next
        waiter let in: before 2026-12-07 (review35) its room stayed taken
        for the client's life, never handed over nor acknowledged."""
        try:
            self._unflushed.add(handle)
        except BaseException:
            if counted:
                self._io.uncount(p)
                self._io.room.freed()
            raise

    def flush(self, timeout: float | None = None) -> None:
        """Block until every submit so far is acknowledged. Raises the first
        failure (Busy, Unavailable, Timeout) if any submit could not be placed,
        or Timeout if some are not finished within ``timeout`` (the next flush
        waits for those again)."""
        if self._forked:
            raise MiyaqError(FORKED)
        timeout = seconds(timeout, "timeout", optional=True)
        timeout = self.submit_timeout + 5 if timeout is None else timeout
        deadline = monotonic() + timeout
        handles, uncounted = self._unflushed.take()
        tally = FlushTally()
        try:
            for h in handles:
                try:
                    h.wait_accepted(max(0.0, deadline - monotonic()))
                except MiyaqError as err:
                    tally.add(h, err)
        finally:
            self._unflushed.put_back(handles)     # those not seen resolved (timed out, interrupted)
        error = tally.error(uncounted, timeout)
        if error is not None:
            raise error

    # -- requests ----------------------------------------------------------------------
    def request(self, command: bytes, body: dict[str, Any], *, node: str | int | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """Send one request and wait for its REPLY (raises the node's error;
        TypeError for a command not bytes, a body msgpack cannot encode)."""
        self._check_open()
        check_request(command, body)
        timeout = seconds(timeout, "timeout", optional=True)
        timeout = self.request_timeout if timeout is None else timeout
        body["req"] = self._io.next_req()
        future = self.kit.waiter()
        index = self.nodes.index(node)
        with self._withdrawn_if_abandoned(future, body["req"], command, index):
            # A leading caller reads the sockets in here until its reply comes.
            self._io.request(index, command, body, future, monotonic() + timeout)
            reply: dict[str, Any] = future.wait(timeout + 1.0, what=command.decode().lower())
        return reply

    @contextmanager
    def _withdrawn_if_abandoned(self, future: Any, req: int, command: bytes = b"",
                                node: int = -1) -> Iterator[None]:
        """A caller that stops waiting for request ``req`` before ``future``
        resolves (its own Timeout, a gevent.Timeout, a kill, Ctrl-C) withdraws
        it (a long-poll the node would hold for nobody otherwise). One that
        stops just as a RECEIVE's answer came gives the task it brings back
        to ``node`` unstarted, no attempt spent (before 2026-12-06 it was
        leased to nobody until its lease ran out: an attempt spent)."""
        try:
            yield
        except BaseException:
            if not future.done():
                self._io.withdraw(req)
            elif command == c.RECEIVE and node >= 0 and future.ok():
                answer = future.result()
                self._io.give_back(node, answer.get("task") if isinstance(answer, dict) else None)
            raise

    def _ask(self, ask: ops.Ask) -> dict[str, Any]:
        return self.request(ask.command, ask.body, node=ask.node, timeout=ask.timeout)

    def _pause(self, seconds: float) -> None:
        """Sleep the way this client's callers do (a thread, or a greenlet)."""
        self.kit.event().wait(seconds)

    def status(self, task_id: str | None = None, *, node: str | int | None = None) -> dict[str, Any]:
        """A task's status (id given) or the node's (queues, workers, totals)."""
        return ops.run(ops.status(self.nodes, task_id, node), self._ask)

    def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not finished; True if this call cancelled it."""
        return ops.run(ops.cancel(self.nodes, task_id), self._ask)

    def ring(self) -> dict[str, Any]:
        """The ring as a node sees it: epoch, leader, members with endpoints."""
        answer = self.request(c.RING, {})
        answer.pop("req", None)
        return answer

    def wait_result(self, task_id: str, timeout: float | None, node: str | None = None) -> dict[str, Any]:
        """Long-poll for a task's outcome (raw answer: state, result, error)."""
        timeout = seconds(timeout, "timeout", optional=True)
        return ops.run(ops.wait_result(self.nodes, task_id, timeout, node, self.request_timeout), self._ask,
                       self._pause)

    def result(self, task_id: str, timeout: float | None = 60.0) -> Any:
        """The task's decoded return value, waiting up to ``timeout`` seconds
        (None: an hour). Raises TaskFailed (dead-lettered), TaskCancelled,
        TaskExpired, Timeout (not finished yet) or NotFound (unknown or
        forgotten id)."""
        return decode_outcome(task_id, self.wait_result(task_id, timeout))

    def call(self, name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
             id: str | None = None, timeout: float | None = 60.0, **options: Unpack[CallOptions]) -> Any:
        """Submit and wait for the result (``timeout``: the wait for the
        result, in seconds; None: an hour).

        An idle client sends the RESULT long-poll right behind the SUBMIT, on
        the same connection, and reads both replies in the calling thread: one
        round trip less than ``submit(wait=True).result()``, with the same
        outcome (if the node did not store the task itself -- refused, retried
        elsewhere, a ``key`` duplicate, held by other nodes -- the result is
        asked for again the ordinary way once the task is accepted)."""
        return self._call_wire(task_wire(name, args, kwargs, options), id, timeout)

    def _call_wire(self, wire: dict[str, Any], id: str | None, timeout: float | None) -> Any:
        """:meth:`call` of a task's SUBMIT entry: ``TaskDef.call`` sends its lease in it."""
        timeout = seconds(timeout, "timeout", optional=True)
        p, handle, counted = self._pending(wire, id, True)
        self._unflushed_or_counted_out(handle, p, counted)   # flush() waits for it if this call is interrupted
        wait = min(ops.LONG_POLL, ops.RESULT_WAIT_DEFAULT if timeout is None else timeout)
        start = monotonic()
        answer = self.kit.waiter()
        body: dict[str, Any] = {"req": self._io.next_req(), "timeout": wait}
        with self._withdrawn_if_abandoned(answer, body["req"]):
            if not self._io.submit_then_ask(p, c.RESULT, body, answer, start + wait + self.request_timeout,
                                            counted):
                self._io.submit(p, True, counted)
                return handle.wait_accepted().result(timeout)
            handle.wait_accepted()
            try:
                outcome = answer.wait(wait + self.request_timeout + 1.0, what="result")
            except (NotFound, Unavailable, Timeout, Busy):
                # Not stored here, no answer, or the node holds as many long-polls
                # as it takes (busy: the task is stored): ask the ordinary way,
                # which waits on (wait_result asks again after a busy).
                outcome = None
        if outcome is not None and outcome.get("timeout"):
            if timeout is not None and monotonic() - start >= timeout:
                return decode_outcome(handle.task_id, outcome)     # Timeout: still queued/running
            outcome = None      # a long-poll shorter than the caller's wait ended: wait on
        if outcome is None:
            left = None if timeout is None else max(0.0, timeout - (monotonic() - start))
            return handle.result(left)
        return decode_outcome(handle.task_id, outcome)

    def tasks(self, queue: str | None = None, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Live and dead tasks' headers, at most ``limit`` (1 to 10,000), of
        ``queue`` and in ``state`` if given."""
        return ops.run(ops.tasks(queue, state, limit), self._ask)

    def dead(self, op: str = "list", queue: str | None = None, ids: list[str] | None = None,
             limit: int = 100) -> dict[str, Any]:
        """The dead-letter queue: ``op`` "list" (``{"tasks": [...]}``),
        "retry" (``{"retried": [ids]}``: ``ids``, else all of ``queue`` or
        of every queue) or "purge" (``{"purged": n}``)."""
        return ops.run(ops.dead(op, queue, ids, limit), self._ask)

    # -- pull consumers ----------------------------------------------------------------
    def receive(self, queues: Iterable[str] | str = ("default",), timeout: float = 0.0) -> "Received | None":
        """Take one ready task: wait up to ``timeout`` seconds (0: answer at
        once). Returns None when there is none. Ack or nack what you get
        before its lease (the task's ``timeout``) runs out, or extend the
        lease with ``touch()``."""
        timeout = seconds(timeout, "timeout")
        task = ops.run(ops.receive(queues, timeout, self.request_timeout), self._ask)
        return None if task is None else Received(self, task)
