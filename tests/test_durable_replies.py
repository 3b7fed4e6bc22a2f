"""Answers that promise a change of stored state wait for the log.

A CANCEL answered ``cancelled: true``, a pull consumer's ACK or NACK answered
``ok: true`` and a DEAD retry or purge are answered, through ZeroMQ and
HTTP, only once the node's log has the records they wrote -- the gate a
SUBMITTED waits at -- so a kill -9 right after the answer cannot undo them
(before 2026-12-05 they were answered before their record was written: an
audit saw 5 HTTP cancels in 6 undone by a kill -9 at once, ``--fsync
always`` included). While the log cannot be written they are refused
``busy`` (``storage``), nothing changed, as a submit is (docs/durability.md).

The log writer is held with an fsync that blocks (``--fsync always``: the
writer waits for it before it writes the next batch), so what an answer
waits for is a write the test lets go. "What a kill -9 at this moment
keeps" is a copy of the data dir replayed, as in tests/test_disk_faults.py.
"""
from __future__ import annotations

import errno
import json
import os
import select
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack
import pytest
import zmq
from disk_faults import FailingDisk, opened_under
from gateway_harness import Http

from miyaq.client.client import Client
from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.core.refusals import Refusals
from miyaq.errors import Busy, Timeout
from miyaq.persistence.replay import replay
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.store.log import AppendLog
from miyaq.store.table import TaskTable
from miyaq.testing.harness import ThreadNode, free_port, wait_for

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0            # a guard against a hang, never a timing assertion
NOT_YET = 0.3          # how long an answer that must not come yet is looked for (as tests/test_withdraw.py)


class HeldFsync:
    """While held, an fsync of a file under ``directory`` blocks (in the
    node's thread pool: the node's hub runs on) until :meth:`release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: str) -> None:
        self.directory = os.path.realpath(directory)
        self.open = threading.Event()
        self.open.set()
        self.waiting = 0
        self._lock = threading.Lock()
        real = os.fsync

        def fsync(fd: int) -> None:
            if not self.open.is_set() and self._ours(fd):
                with self._lock:
                    self.waiting += 1
                try:
                    self.open.wait(4 * WAIT)
                finally:
                    with self._lock:
                        self.waiting -= 1
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def _ours(self, fd: int) -> bool:
        return opened_under(fd, self.directory)

    def hold(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()


class Durable:
    """A node with a data dir (``--fsync always``), its held fsync, a
    client, a raw DEALER and an HTTP connection; all closed at the end."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.data = tmp_path / "data"
        self.scratch = tmp_path
        self.fsync = HeldFsync(monkeypatch, str(self.data))
        self.node = ThreadNode(data_dir=str(self.data), fsync="always", http_port=free_port(),
                               heartbeat=0.25).start()
        self.client = Client(self.node.endpoint, submit_timeout=10.0, request_timeout=WAIT)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.node.endpoint)
        self.http = Http(self.url)
        self._req = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.config.http_port}"

    def close(self) -> None:
        self.fsync.release()          # before the node stops: its last fsync must not wait
        self.http.close()
        self.sock.close(linger=0)
        self.ctx.term()
        self.client.close(flush=False)
        self.node.stop()

    # -- ZeroMQ, raw -------------------------------------------------------------------
    def send(self, command: bytes, body: dict[str, Any]) -> int:
        self._req += 1
        self.sock.send_multipart(codec.encode(command, {**body, "req": self._req}))
        return self._req

    def recv(self, timeout: float = WAIT) -> tuple[bytes, dict[str, Any]] | None:
        """The next answer (heartbeats and probes skipped); None if none came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sock.poll(left):
                return None
            _, command, packed = self.sock.recv_multipart()
            body = msgpack.unpackb(packed, raw=False)
            if command == c.HEARTBEAT or "req" not in body:
                continue
            return command, body

    def ask(self, command: bytes, body: dict[str, Any]) -> dict[str, Any]:
        req = self.send(command, body)
        answer = self.recv()
        assert answer is not None and answer[1]["req"] == req, answer
        return answer[1]

    # -- setting up ----------------------------------------------------------------------
    def scheduled(self) -> str:
        return self.client.submit("echo", [1], countdown=3600, wait=True).id

    def received(self, queue: str, **options: Any) -> tuple[str, int]:
        """A task received over ZeroMQ (leased to the DEALER's connection): id, attempt."""
        task_id = self.client.submit("echo", [1], queue=queue, wait=True, **options).id
        task = self.ask(c.RECEIVE, {"queues": [queue]})["task"]
        assert task["id"] == task_id
        return task_id, task["attempt"]

    def received_http(self, queue: str, **options: Any) -> tuple[str, int]:
        task_id = self.client.submit("echo", [1], queue=queue, wait=True, **options).id
        status, answer, _ = self.http.post("/receive", {"queues": [queue]})
        assert status == 200 and answer["task"]["id"] == task_id, answer
        return task_id, answer["task"]["attempt"]

    def dead(self, queue: str) -> str:
        task_id, attempt = self.received(queue, max_retries=0)
        assert self.ask(c.NACK, {"id": task_id, "attempt": attempt, "retry": False,
                                 "error": {"type": "Nack", "message": "no"}})["ok"] is True
        return task_id

    def writer_busy(self) -> None:
        """Let everything so far be written, then hold the fsync of the next
        batch (a task submitted now): what is logged after it waits."""
        self.scheduled()              # acknowledged: every record before it is written
        self.fsync.hold()
        self.client.submit("echo", [2], countdown=3600)
        wait_for(lambda: self.fsync.waiting > 0, timeout=WAIT, what="the log writer to wait for its fsync")

    def logged(self) -> TaskTable:
        """The table a node restarted from a copy of the data dir *now* would
        hold: what a kill -9 at this moment keeps."""
        copy = self.scratch / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.data, copy, ignore=shutil.ignore_patterns("LOCK"))
        engine = Engine(NodeConfig(node_id="replay"))
        log = AppendLog(copy)
        replay(engine, log, time.time(), Refusals())
        log.close()
        return engine.table


@pytest.fixture
def durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Durable]:
    d = Durable(tmp_path, monkeypatch)
    try:
        yield d
    finally:
        d.close()


def stone_state(table: TaskTable, task_id: str) -> str | None:
    stone = table.tombstone(task_id)
    return stone.state if stone is not None else None


# -- ZeroMQ -------------------------------------------------------------------------------

def state_of(d: Durable, task_id: str) -> str | None:
    """The task's state as the node shows it now (None: not known), asked over HTTP."""
    status, answer, _ = d.http.get(f"/tasks/{task_id}")
    return answer["task"]["state"] if status == 200 else None


Setup = Callable[[Durable], tuple[bytes, dict[str, Any], dict[str, Any], Callable[[], bool],
                                  Callable[[TaskTable], bool]]]


def zmq_cancel(d: Durable) -> Any:
    task_id = d.scheduled()
    return (c.CANCEL, {"id": task_id}, {"cancelled": True}, lambda: state_of(d, task_id) == "cancelled",
            lambda t: stone_state(t, task_id) == "cancelled")


def zmq_ack(d: Durable) -> Any:
    task_id, attempt = d.received("zack")
    return (c.ACK, {"id": task_id, "attempt": attempt, "result": b"\x07"}, {"ok": True},
            lambda: state_of(d, task_id) == "done", lambda t: stone_state(t, task_id) == "done")


def zmq_nack(d: Durable) -> Any:
    task_id, attempt = d.received("znack")
    return (c.NACK, {"id": task_id, "attempt": attempt, "retry": False, "error": {"type": "Nack", "message": "x"}},
            {"ok": True}, lambda: state_of(d, task_id) == "dead", lambda t: task_id in t.dead)


def zmq_nack_returned(d: Durable) -> Any:
    # The last attempt: a restart that thinks it still running dead-letters it (Lost).
    task_id, attempt = d.received("zreturn", max_retries=0)
    return (c.NACK, {"id": task_id, "attempt": attempt, "returned": True}, {"ok": True},
            lambda: state_of(d, task_id) == "ready", lambda t: task_id in t.live and t.live[task_id].state == "ready")


def zmq_dead_retry(d: Durable) -> Any:
    task_id = d.dead("zretry")
    return (c.DEAD, {"op": "retry", "ids": [task_id]}, {"retried": [task_id]},
            lambda: state_of(d, task_id) == "ready", lambda t: task_id in t.live and task_id not in t.dead)


def zmq_dead_purge(d: Durable) -> Any:
    task_id = d.dead("zpurge")
    return (c.DEAD, {"op": "purge", "ids": [task_id]}, {"purged": 1},
            lambda: state_of(d, task_id) is None, lambda t: task_id not in t.live and task_id not in t.dead)


@pytest.mark.parametrize("setup", [zmq_cancel, zmq_ack, zmq_nack, zmq_nack_returned, zmq_dead_retry,
                                   zmq_dead_purge], ids=lambda f: f.__name__)
def test_a_zeromq_answer_that_promises_a_change_waits_for_the_log(durable: Durable, setup: Setup) -> None:
    """Fault: the log writer is held (a slow fsync) when a CANCEL, ACK, NACK
    or DEAD retry/purge changes a task. Its answer is not sent before its
    record is written -- a later request on the same connection is answered
    first, and none comes once the change shows (a DEAD operation runs in
    a greenlet of its own) -- and once it is, a kill -9 at that moment
    keeps the change. Before 2026-12-05 it was answered at once, its record
    still buffered."""
    command, body, expected, changed, kept = setup(durable)
    durable.writer_busy()
    asked = durable.send(command, body)
    later = durable.send(c.STATUS, {})
    first = durable.recv()
    assert first is not None and first[1]["req"] == later, f"answered before its record was written: {first}"
    wait_for(changed, timeout=WAIT, what="the change to be made in memory")
    early = durable.recv(NOT_YET)
    assert early is None, f"answered before its record was written: {early}"
    assert not kept(durable.logged())
    durable.fsync.release()
    answer = durable.recv()
    assert answer is not None and answer[0] == c.REPLY and answer[1]["req"] == asked, answer
    assert {k: answer[1][k] for k in expected} == expected
    assert kept(durable.logged()), "answered, but a kill -9 now would undo it"


def test_a_cancel_whose_answer_waits_past_the_clients_timeout_says_it_may_be_made(durable: Durable) -> None:
    """Fault (a review audit): the log writer is held past the client's
    ``request_timeout`` when it cancels a task. The node cancels it and
    holds the answer for the log; the client raised the bare "the node did
    not answer in time", and a second ``cancel()`` found it done (False):
    it read as a cancel that failed. The Timeout now says it may have been
    made."""
    client = Client(durable.node.endpoint, request_timeout=1.0)
    try:
        task_id = durable.scheduled()
        durable.writer_busy()
        with pytest.raises(Timeout, match="may have been made"):
            client.cancel(task_id)
    finally:
        durable.fsync.release()
        client.close(flush=False)


def test_a_zeromq_answer_that_promises_nothing_does_not_wait(durable: Durable) -> None:
    """A CANCEL of a finished task (``cancelled: false``) and an ACK of a
    task not leased to the caller (``ok: false``) change nothing: answered
    at once, the log writer held or not."""
    task_id = durable.scheduled()
    assert durable.ask(c.CANCEL, {"id": task_id})["cancelled"] is True
    durable.writer_busy()
    again = durable.ask(c.CANCEL, {"id": task_id})
    assert (again["cancelled"], again["state"]) == (False, "cancelled")
    assert durable.ask(c.ACK, {"id": task_id, "attempt": 1})["ok"] is False


# -- HTTP ------------------------------------------------------------------------------------

def raw_request(d: Durable, method: str, path: str, body: Any = None) -> socket.socket:
    """Send one request (Connection: close) on a socket of its own; the answer is read later."""
    sock = socket.create_connection(("127.0.0.1", d.node.config.http_port), timeout=WAIT)
    data = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
            + ("Content-Type: application/json\r\n" if data else "") + "\r\n")
    sock.sendall(head.encode() + data)
    return sock


def answered(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def read_answer(sock: socket.socket) -> tuple[int, Any]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


HttpSetup = Callable[[Durable], tuple[str, str, Any, dict[str, Any], Callable[[], bool], Callable[[TaskTable], bool]]]


def http_cancel(d: Durable) -> Any:
    task_id = d.scheduled()
    return ("DELETE", f"/tasks/{task_id}", None, {"cancelled": True}, lambda: state_of(d, task_id) == "cancelled",
            lambda t: stone_state(t, task_id) == "cancelled")


def http_ack(d: Durable) -> Any:
    task_id, attempt = d.received_http("hack")
    return ("POST", f"/tasks/{task_id}/ack", {"attempt": attempt, "result": 7}, {"ok": True},
            lambda: state_of(d, task_id) == "done", lambda t: stone_state(t, task_id) == "done")


def http_nack(d: Durable) -> Any:
    task_id, attempt = d.received_http("hnack")
    return ("POST", f"/tasks/{task_id}/nack", {"attempt": attempt, "retry": False}, {"ok": True},
            lambda: state_of(d, task_id) == "dead", lambda t: task_id in t.dead)


def http_nack_returned(d: Durable) -> Any:
    task_id, attempt = d.received_http("hreturn", max_retries=0)
    return ("POST", f"/tasks/{task_id}/nack", {"attempt": attempt, "returned": True}, {"ok": True},
            lambda: state_of(d, task_id) == "ready",
            lambda t: task_id in t.live and t.live[task_id].state == "ready")


def http_dead_retry(d: Durable) -> Any:
    task_id = d.dead("hretry")
    return ("POST", "/dead/retry", {"ids": [task_id]}, {"retried": [task_id]},
            lambda: state_of(d, task_id) == "ready", lambda t: task_id in t.live and task_id not in t.dead)


def http_dead_purge(d: Durable) -> Any:
    task_id = d.dead("hpurge")
    return ("POST", "/dead/purge", {"ids": [task_id]}, {"purged": 1},
            lambda: state_of(d, task_id) is None, lambda t: task_id not in t.live and task_id not in t.dead)


@pytest.mark.parametrize("setup", [http_cancel, http_ack, http_nack, http_nack_returned, http_dead_retry,
                                   http_dead_purge], ids=lambda f: f.__name__)
def test_an_http_answer_that_promises_a_change_waits_for_the_log(durable: Durable, setup: HttpSetup) -> None:
    """Fault: the log writer is held (a slow fsync) when an HTTP cancel, ack,
    nack or dead-letter retry/purge changes a task. The change is made (the
    task's state shows it) but the answer waits until its record is
    written; once it comes, a kill -9 at that moment keeps the change.
    Before 2026-12-05 it was answered at once, its record still buffered."""
    method, path, body, expected, changed, kept = setup(durable)
    durable.writer_busy()
    sock = raw_request(durable, method, path, body)
    try:
        wait_for(changed, timeout=WAIT, what="the change to be made in memory")
        assert not answered(sock, NOT_YET), "answered before its record was written"
        assert not kept(durable.logged())
        durable.fsync.release()
        status, answer = read_answer(sock)
    finally:
        sock.close()
    assert status == 200 and {k: answer[k] for k in expected} == expected, (status, answer)
    assert kept(durable.logged()), "answered, but a kill -9 now would undo it"


# -- a disk that fails ----------------------------------------------------------------------

def test_a_failing_log_refuses_cancels_acks_and_nacks_and_changes_nothing(
        durable: Durable, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: the node's log writes fail (ENOSPC). A cancel, ack or nack of
    a task held here is refused ``busy`` (``storage``, retryable) through
    both doors and changes nothing, as a submit is refused; a cancel of a
    task not held here is still ``not_found``; once the disk works again
    they are taken, and logged."""
    scheduled = durable.scheduled()
    zmq_task, zmq_attempt = durable.received("fz")
    http_task, http_attempt = durable.received_http("fh")
    disk = FailingDisk(monkeypatch, str(durable.data), errno.ENOSPC, ops=("write",))
    disk.failing = True
    durable.client.submit("echo", [3], countdown=3600)      # its write fails: the writer refuses from now on
    wait_for(lambda: not durable.client.status()["storage"]["writable"], timeout=WAIT,
             what="the log writer to see the fault")

    for command, body in ((c.CANCEL, {"id": scheduled}),
                          (c.ACK, {"id": zmq_task, "attempt": zmq_attempt}),
                          (c.NACK, {"id": zmq_task, "attempt": zmq_attempt, "retry": False,
                                    "error": {"type": "Nack", "message": "x"}}),
                          (c.NACK, {"id": zmq_task, "attempt": zmq_attempt, "returned": True})):
        req = durable.send(command, body)
        answer = durable.recv()
        assert answer is not None and answer[0] == c.ERROR, answer
        assert answer[1]["req"] == req and answer[1]["code"] == "busy" and answer[1]["reason"] == "storage", answer
    with pytest.raises(Busy):
        durable.client.cancel(scheduled)
    for method, path, body in (("DELETE", f"/tasks/{scheduled}", None),
                               ("POST", f"/tasks/{http_task}/ack", {"attempt": http_attempt}),
                               ("POST", f"/tasks/{http_task}/nack", {"attempt": http_attempt}),
                               ("POST", "/dead/retry", {}), ("POST", "/dead/purge", {})):
        status, answer, _ = durable.http.request(method, path, body)
        assert status == 503 and answer["error"]["code"] == "busy", (path, status, answer)
        assert "cannot write its log" in answer["error"]["message"]
    answer = durable.ask(c.DEAD, {"op": "purge"})
    assert answer["code"] == "busy" and answer["reason"] == "storage", answer
    assert durable.ask(c.CANCEL, {"id": "never-submitted"})["code"] == "not_found"
    assert state_of(durable, scheduled) == "scheduled"
    assert state_of(durable, zmq_task) == state_of(durable, http_task) == "running"

    disk.failing = False
    wait_for(lambda: durable.client.status()["storage"]["writable"], timeout=30, what="the log to be writable again")
    assert durable.client.cancel(scheduled) is True
    assert durable.ask(c.ACK, {"id": zmq_task, "attempt": zmq_attempt})["ok"] is True
    assert durable.http.post(f"/tasks/{http_task}/ack", {"attempt": http_attempt})[1] == {"ok": True}
    table = durable.logged()
    assert stone_state(table, scheduled) == "cancelled"
    assert stone_state(table, zmq_task) == stone_state(table, http_task) == "done"


def test_an_at_most_once_task_is_sent_only_once_its_start_is_logged(durable: Durable) -> None:
    """Fault (review18, older than it): a task with ``at_most_once`` was
    leased and sent to its consumer while its start record waited for the
    log. A node killed -9 then came back with it *ready* -- its attempt
    unspent -- and ran it again: 128 at-most-once tasks ran twice in one
    round of kill -9s. Its DISPATCH (here a RECEIVE's answer) now waits for
    the write, so a kill at any moment either keeps it unsent and ready, or
    sent and dead on restart (docs/semantics.md, "at_most_once"). A task
    without the option is sent at once, the log held or not."""
    plain = durable.client.submit("echo", [1], queue="plain", wait=True).id
    once = durable.client.submit("echo", [1], queue="once", at_most_once=True, wait=True).id
    durable.writer_busy()
    task = durable.ask(c.RECEIVE, {"queues": ["plain"]})["task"]       # not held: no at-most-once start
    assert task["id"] == plain
    asked = durable.send(c.RECEIVE, {"queues": ["once"]})
    wait_for(lambda: durable.node.node.core.engine.table.live[once].state == "running", timeout=WAIT,
             what="the at-most-once task leased")
    early = durable.recv(NOT_YET)
    assert early is None, f"sent before its start was logged: {early}"
    assert durable.logged().live[once].state == "ready"     # a kill -9 now: ready, and never sent
    durable.fsync.release()
    answer = durable.recv()
    assert answer is not None and answer[1]["req"] == asked and answer[1]["task"]["id"] == once, answer
    restarted = durable.logged()
    assert once not in restarted.live and restarted.dead[once].state == "dead"    # sent: dead on restart, never ready
