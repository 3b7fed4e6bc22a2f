"""The producer API: submit, call, cancel, status, result, and pull consumers.

``submit`` is pipelined the way Kafka's producer is: it returns a
:class:`~miyaq.client.handle.TaskHandle` at once while the client's I/O loop
sends the task (batched with others), waits for the node's acknowledgement,
and resends it with the same id if the acknowledgement does not come. At
most ``window`` submits are unacknowledged; beyond that ``submit`` blocks.
A task counts as *accepted* only when its handle's ``wait_accepted()``
returns (or ``flush()`` does): docs/semantics.md. Busy nodes are retried
transparently with backoff until ``submit_timeout``; only then does the
caller see one exception (:class:`miyaq.Busy`).

Thread-safe. In a gevent program (a miyaq worker) pass ``green=True``.
"""
from __future__ import annotations

import atexit
import logging
import time
import os
import weakref
from typing import Any, Iterable

import msgpack

from ..devstate import default_connect
from ..errors import ConfigError, MiyaqError, NotFound, Timeout, Unavailable
from ..protocol import commands as c
from ..protocol.commands import DEFAULT_MAX_MESSAGE
from .futures import Future
from .handle import TaskHandle, decode_outcome
from .io import IOLoop, Pending
from .kit import choose

logger = logging.getLogger(__name__)

TASK_OPTIONS = ("queue", "priority", "eta", "countdown", "ttl", "max_retries", "backoff",
                "backoff_max", "timeout", "key", "replicas", "at_most_once")
_OPTION_SET = frozenset(TASK_OPTIONS)
_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def new_id() -> str:
    """A fresh random 128-bit task id (32 hex digits)."""
    return os.urandom(16).hex()


def pack_args(args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None) -> bytes:
    return msgpack.packb([list(args), kwargs or {}], use_bin_type=True)


class Client:
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
                 request_timeout: float = 10.0, max_batch: int = 512, green: bool | None = None) -> None:
        # No endpoints: MIYAQ_CONNECT, else the dev cluster started in this
        # directory, else tcp://127.0.0.1:7450 (miyaq.devstate).
        self.endpoints_source = "given"
        if endpoints is None:
            endpoints, self.endpoints_source = default_connect()
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        endpoints = list(endpoints)
        if not endpoints:
            raise ConfigError("a Client needs at least one node endpoint")
        if window < 1:
            raise ConfigError("window must be at least 1")
        self.endpoints = endpoints
        self.window = window
        self.submit_timeout = submit_timeout
        self.request_timeout = request_timeout
        self.kit = choose(green)
        self._io = IOLoop(self.kit, endpoints, max_batch=max_batch, ack_timeout=ack_timeout,
                          max_message=DEFAULT_MAX_MESSAGE, endpoints_source=self.endpoints_source)
        self._io.start()
        self._closed = False
        self._unflushed: list[TaskHandle] = []
        _clients.add(self)

    # -- submitting ------------------------------------------------------------------
    def submit(self, name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
               id: str | None = None, wait: bool = False, **options: Any) -> TaskHandle:
        """Submit task ``name`` with ``args``/``kwargs``. Options: queue,
        priority, eta (unix time or datetime), countdown (s), ttl (s),
        max_retries, backoff, backoff_max, timeout (lease, s), key, replicas,
        at_most_once. ``wait=True`` blocks until accepted."""
        wire = self._wire(options)
        wire["name"] = name
        wire["body"] = pack_args(args, kwargs)
        return self._submit_wire(wire, id, wait)

    def submit_url(self, url: str, body: bytes = b"", *, method: str = "POST",
                   headers: dict[str, str] | None = None, id: str | None = None,
                   wait: bool = False, **options: Any) -> TaskHandle:
        """Submit a webhook task: the node POSTs ``body`` to ``url``."""
        wire = self._wire(options)
        wire.update(url=url, body=body, method=method)
        if headers:
            wire["headers"] = headers
        return self._submit_wire(wire, id, wait)

    def _wire(self, options: dict[str, Any]) -> dict[str, Any]:
        if not options:
            return {}
        unknown = options.keys() - _OPTION_SET
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
        wire = {k: v for k, v in options.items() if v is not None}
        eta = wire.get("eta")
        if eta is not None and hasattr(eta, "timestamp"):
            wire["eta"] = eta.timestamp()
        return wire

    def _submit_wire(self, wire: dict[str, Any], task_id: str | None, wait: bool) -> TaskHandle:
        if self._closed:
            raise MiyaqError("client is closed")
        wire["id"] = task_id or new_id()
        future = Future(self.kit.event)
        handle = TaskHandle(wire["id"], self, future)
        io = self._io
        deadline = time.time() + self.submit_timeout
        while io.in_flight >= self.window:
            io.room.clear()
            if io.in_flight < self.window:
                break
            if not io.room.wait(min(1.0, max(0.0, deadline - time.time()))) and time.time() >= deadline:
                raise Timeout(f"submit window ({self.window}) stayed full for {self.submit_timeout:g}s")
        with io.count_lock:
            io.submitted += 1
        io.put(("submit", Pending(wire, future, deadline)))
        if wait:
            handle.wait_accepted()
        else:
            self._unflushed.append(handle)
            if len(self._unflushed) > self.window:
                self._unflushed = [h for h in self._unflushed if not h._accepted.done()
                                   or not h.accepted]
        return handle

    def flush(self, timeout: float | None = None) -> None:
        """Block until every submit so far is acknowledged. Raises the first
        failure (Busy, Unavailable, Timeout) if any submit could not be placed."""
        timeout = self.submit_timeout + 5 if timeout is None else timeout
        deadline = time.time() + timeout
        handles, self._unflushed = self._unflushed, []
        failures: list[MiyaqError] = []
        for h in handles:
            try:
                h.wait_accepted(max(0.0, deadline - time.time()))
            except MiyaqError as err:
                failures.append(err)
        if failures:
            first = failures[0]
            if len(failures) > 1:
                first.message = f"{first.message} (and {len(failures) - 1} more submits failed)"
                first.args = (first.message,)
            raise first

    # -- requests ----------------------------------------------------------------------
    def request(self, command: bytes, body: dict[str, Any], *, node: str | int | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """Send one request and wait for its REPLY (raises the node's error)."""
        timeout = self.request_timeout if timeout is None else timeout
        index = self._node_index(node)
        body["req"] = self._io.next_req()
        future = Future(self.kit.event)
        self._io.put(("request", index, command, body, future, time.time() + timeout))
        return future.wait(timeout + 1.0, what=command.decode().lower())

    def _node_index(self, node: str | int | None) -> int:
        if node is None:
            return 0
        if isinstance(node, int):
            return node
        try:
            return self._io.endpoints.index(node)
        except ValueError:
            return 0

    def _any_node(self, command: bytes, body: dict[str, Any], first: str | int | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
        """Ask ``first`` (or the first node); in a cluster, where that node does
        not hold the task, ask the others in turn."""
        order = [self._node_index(first)] + [i for i in range(len(self._io.endpoints))
                                             if i != self._node_index(first)]
        last: MiyaqError | None = None
        for index in order:
            try:
                return self.request(command, dict(body), node=index, timeout=timeout)
            except (NotFound, Unavailable, Timeout) as err:
                last = err
        assert last is not None
        raise last

    def status(self, task_id: str | None = None, *, node: str | int | None = None) -> dict[str, Any]:
        """A task's status (id given) or the node's (queues, workers, totals)."""
        if task_id is None:
            return self.request(c.STATUS, {}, node=node)
        return self._any_node(c.TASK, {"id": task_id}, node)["task"]

    def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not finished; True if this call cancelled it."""
        return bool(self._any_node(c.CANCEL, {"id": task_id})["cancelled"])

    def ring(self) -> dict[str, Any]:
        """The ring as a node sees it: epoch, leader, members with endpoints."""
        return self.request(c.RING, {})

    def wait_result(self, task_id: str, timeout: float | None, node: str | None = None) -> dict[str, Any]:
        """Long-poll for a task's outcome (raw answer: state, result, error)."""
        limit = 3600.0 if timeout is None else timeout
        deadline = time.time() + limit
        while True:
            left = max(0.0, deadline - time.time())
            answer = self._any_node(c.RESULT, {"id": task_id, "timeout": min(left, 300.0)},
                                    node, timeout=min(left, 300.0) + self.request_timeout)
            if not answer.get("timeout") or time.time() >= deadline:
                return answer

    def result(self, task_id: str, timeout: float | None = 60.0) -> Any:
        return decode_outcome(task_id, self.wait_result(task_id, timeout))

    def call(self, name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
             timeout: float | None = 60.0, **options: Any) -> Any:
        """Submit and wait for the result."""
        return self.submit(name, args, kwargs, wait=True, **options).result(timeout)

    def tasks(self, queue: str | None = None, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"limit": limit}
        if queue:
            body["queue"] = queue
        if state:
            body["state"] = state
        return self.request(c.TASKS, body)["tasks"]

    def dead(self, op: str = "list", queue: str | None = None, ids: list[str] | None = None,
             limit: int = 100) -> dict[str, Any]:
        body: dict[str, Any] = {"op": op}
        if queue:
            body["queue"] = queue
        if ids is not None:
            body["ids"] = ids
        if op == "list":
            body["limit"] = limit
        return self.request(c.DEAD, body)

    # -- pull consumers ----------------------------------------------------------------
    def receive(self, queues: Iterable[str] | str = ("default",), timeout: float = 0.0) -> "Received | None":
        """Take one ready task: wait up to ``timeout`` seconds (0: answer at
        once). Returns None when there is none. Ack or nack what you get
        before its lease (the task's ``timeout``) runs out."""
        queues = [queues] if isinstance(queues, str) else list(queues)
        answer = self.request(c.RECEIVE, {"queues": queues, "timeout": timeout},
                              timeout=timeout + self.request_timeout)
        task = answer.get("task")
        return None if task is None else Received(self, task)

    # -- lifecycle ---------------------------------------------------------------------
    def close(self, flush: bool = True, timeout: float = 10.0) -> None:
        if self._closed:
            return
        try:
            if flush:
                self.flush(timeout)
        finally:
            self._closed = True
            self._io.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(flush=exc[0] is None)


class Received:
    """A task taken by :meth:`Client.receive`: ``args``, ``kwargs``, then
    ``ack(result)`` or ``nack(error, retry=True)``."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self.client = client
        self.info = info
        self.id: str = info["id"]
        self.name: str | None = info.get("name")
        self.queue: str = info["queue"]
        self.attempt: int = info["attempt"]
        body = info.get("body") or b""
        try:
            self.args, self.kwargs = msgpack.unpackb(body, raw=False, strict_map_key=False) if body else ([], {})
        except Exception:
            self.args, self.kwargs = [body], {}

    def ack(self, result: Any = None) -> bool:
        return bool(self.client.request(c.ACK, {"id": self.id, "attempt": self.attempt,
                                                "result": msgpack.packb(result, use_bin_type=True)})["ok"])

    def nack(self, error: str = "", *, retry: bool = True, delay: float | None = None) -> bool:
        body: dict[str, Any] = {"id": self.id, "attempt": self.attempt, "retry": retry,
                                "error": {"type": "Nack", "message": error}}
        if delay is not None:
            body["delay"] = delay
        return bool(self.client.request(c.NACK, body)["ok"])


@atexit.register
def _flush_at_exit() -> None:
    for client in list(_clients):
        try:
            client.close(flush=True, timeout=10.0)
        except MiyaqError as err:
            logger.error("miyaq: unflushed submits at exit: %s", err.message)
