"""Webhook attempts the node itself cannot make (audit 2026-12-06): with no
file descriptor left for the connection -- or no socket buffers or memory
to open it -- the destination is not to blame. The task is given back
without spending an attempt and delivered once the shortage ends; a
connection the destination refuses still spends one. The shortage is
simulated by making the node's outbound connect raise the OSError the
kernel would (``HTTPConnection._open``, patched process-wide: the node runs
in a thread of this process); the destination is a real local HTTP server."""
from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable

import pytest
from gateway_harness import FIXTURES, Http, NodeThread, WorkerServer, wait_for

from miyaq.gateway import outbound
from miyaq.runtime import http as http_module

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)


class ConnectFault:
    """While ``on`` is set, every connection the node opens fails with
    ``OSError(number)``; ``refused`` counts those that did."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, number: int) -> None:
        self.on = threading.Event()
        self.on.set()
        self.refused = 0
        self.lock = threading.Lock()
        real_open = http_module.HTTPConnection._open
        fault = self

        def open_or_fail(conn: http_module.HTTPConnection) -> socket.socket:
            if fault.on.is_set():
                with fault.lock:
                    fault.refused += 1
                raise OSError(number, os.strerror(number))
            return real_open(conn)

        monkeypatch.setattr(http_module.HTTPConnection, "_open", open_or_fail)

    def count(self) -> int:
        with self.lock:
            return self.refused


def _node(make_http_node: Callable[..., NodeThread]) -> tuple[NodeThread, Http]:
    node = make_http_node(default_backoff=0.01, webhook_allow_private=True)
    return node, Http(node.url)


def _enqueue(api: Http, url: str, **options: object) -> str:
    status, answer, _ = api.post("/queue", {"url": url, "params": {"n": 1}, **options})
    assert status == 200, answer
    return str(answer["id"])


def _task(api: Http, task_id: str) -> dict:
    return api.get(f"/tasks/{task_id}")[1]["task"]


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM],
                         ids=["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"])
def test_an_attempt_the_node_has_no_descriptor_for_spends_nothing_and_is_delivered_after(
        make_http_node, make_web_worker, monkeypatch, caplog, number):
    """Fault: the node's own process is short of descriptors (EMFILE, or the
    system's: ENFILE) or of socket buffers or memory (ENOBUFS, ENOMEM) when
    it opens the connection, for three attempts and more, to a healthy
    destination, with ``max_retries=1``. Before the fix each was a
    ``ConnectionError`` that spent an attempt: the task was dead at its
    second, the destination never asked. Now none is spent; the task waits
    ready, is delivered once the shortage ends (its first attempt:
    ``X-Task-Retry-Count: 0``), and the node warns once, not per attempt."""
    worker: WorkerServer = make_web_worker()
    fault = ConnectFault(monkeypatch, number)
    caplog.set_level(logging.INFO, logger="miyaq.gateway.webhooks")
    _, api = _node(make_http_node)
    try:
        task_id = _enqueue(api, f"{worker.url}/hook", max_retries=1)
        wait_for(lambda: fault.count() >= 3 or _task(api, task_id)["state"] == "dead",
                 "three attempts the node could not make")
        task = _task(api, task_id)
        assert task["state"] in ("ready", "running"), task
        assert task["attempt"] <= 1 and task.get("error") is None, task
        fault.on.clear()
        wait_for(lambda: _task(api, task_id)["state"] in ("done", "dead"), "the delivery once the shortage ended")
        task = _task(api, task_id)
        assert task["state"] == "done" and task["attempt"] == 1, task
        assert worker.count() == 1 and worker.requests[0].headers["X-Task-Retry-Count"] == "0"
    finally:
        api.close()
    warned = [r.getMessage() for r in caplog.records
              if r.name == "miyaq.gateway.webhooks" and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "no attempt is spent" in warned[0], warned
    if number in (errno.EMFILE, errno.ENFILE):
        assert '"Open files"' in warned[0] and "raise the limit" in warned[0]
    recovered = [r.getMessage() for r in caplog.records if "connections open again" in r.getMessage()]
    assert len(recovered) == 1, recovered


def test_a_connection_the_destination_refuses_still_spends_its_attempt(make_http_node, make_web_worker,
                                                                       monkeypatch):
    """Fault: the node's connect fails with ECONNREFUSED (an OSError like a
    shortage, but the destination's). Guard: each attempt is spent as a
    retryable ``ConnectionError``, as before the fix: with ``max_retries=1``
    the task is dead at its second attempt, and nothing pauses."""
    worker: WorkerServer = make_web_worker()
    fault = ConnectFault(monkeypatch, errno.ECONNREFUSED)
    _, api = _node(make_http_node)
    try:
        task_id = _enqueue(api, f"{worker.url}/hook", max_retries=1)
        wait_for(lambda: _task(api, task_id)["state"] == "dead", "both attempts to fail")
        task = _task(api, task_id)
        assert task["attempt"] == 2 and task["error"]["type"] == "ConnectionError", task
        assert "Connection refused" in task["error"]["message"] and fault.count() == 2
        assert worker.count() == 0
    finally:
        api.close()


@pytest.mark.parametrize(("exc", "opening", "shortage"), [
    (OSError(errno.EMFILE, "Too many open files"), True, True),
    (OSError(errno.ENFILE, "Too many open files in system"), False, True),
    (OSError(errno.ENOBUFS, "No buffer space available"), True, True),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), True, True),
    (OSError(errno.ENOBUFS, "No buffer space available"), False, False),   # on a connection already open
    (OSError(errno.ECONNREFUSED, "Connection refused"), True, False),
    (OSError(errno.ECONNRESET, "Connection reset by peer"), False, False),
    (OSError("resolving example.com took over 5s"), True, False),
    (socket.gaierror(errno.EMFILE, "a resolver's own code, no errno"), True, False),
    (ssl.SSLError(errno.ENOMEM, "a TLS library's own code, no errno"), True, False),
], ids=["EMFILE-opening", "ENFILE-later", "ENOBUFS-opening", "ENOMEM-opening", "ENOBUFS-later",
        "ECONNREFUSED", "ECONNRESET", "no-errno", "gaierror", "SSLError"])
def test_only_the_nodes_own_shortages_are_told_apart(exc, opening, shortage):
    """Fault: OSErrors of the node's own shortage and of the destination's
    failure, while the connection is opened and after. Only the first kind
    spares the attempt; a resolver's or TLS library's code that happens to
    equal a shortage's errno is not taken for one."""
    assert outbound.local_shortage(exc, opening) is shortage
