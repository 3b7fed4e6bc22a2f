"""A node and its limit on open files (miyaq/runtime/open_files.py,
miyaq/node/open_files.py).

Every connection a node accepts is a file descriptor. A node at its limit
accepts nothing more (clients and workers time out) while libzmq retries
the accept in a tight loop; before, nothing said so. Now ``miyaq node``
raises its soft limit to the hard one, warns at start when the limit is
low, logs an error when it is near the limit and that it recovered, and
reports both in STATUS (``open_files``) and ``/metrics``.
"""
from __future__ import annotations

import logging
import re
import resource
import subprocess
import sys
import urllib.request

import pytest
import zmq

from miyaq import Client
from miyaq.node import open_files as watch_module
from miyaq.node.open_files import REPEAT, OpenFilesWatch
from miyaq.runtime import Supervisor, open_files
from miyaq.testing.harness import NodeProc, WorkerProc, free_port, wait_for

pytestmark = pytest.mark.timeout(90)

#: Runs ``miyaq.cli.main`` with its limit on open files set first (soft, hard).
WITH_LIMIT = ("import os, resource, sys; "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
              "os.execv(sys.executable, [sys.executable, '-m', 'miyaq.cli.main', *sys.argv[3:]])")


class LimitedNode(NodeProc):
    """A node subprocess started with a given limit on open files."""

    def __init__(self, soft: int, hard: int, **kw) -> None:
        super().__init__(**kw)
        self.limits = (soft, hard)

    def start(self) -> "LimitedNode":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", WITH_LIMIT, *map(str, self.limits), *self.args],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        return self


@pytest.fixture
def limited(request, tmp_path):
    started: list[LimitedNode] = []

    def make(soft: int, hard: int, *extra: str) -> LimitedNode:
        node = LimitedNode(soft, hard, extra=list(extra), log_dir=str(tmp_path))
        started.append(node)
        return node.start().wait_ready()

    yield make
    rep = getattr(request.node, "rep_call", None)
    for node in started:
        node.kill()
        if rep is None or rep.failed:
            sys.stderr.write(f"\n----- log of {node.name} -----\n{node.log_tail()}\n")


def _status(node: NodeProc) -> dict:
    client = Client(node.endpoint, request_timeout=5)
    try:
        return client.status()
    finally:
        client.close(flush=False)


def test_a_node_raises_its_soft_limit_on_open_files_to_the_hard_one(limited):
    """A node started with a soft limit of 256 and a hard one of 4,096 (a
    shell's usual 1,024 and a higher hard limit, scaled down) may open
    4,096: it says so in its log and STATUS."""
    _, ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 4096 if ours == resource.RLIM_INFINITY else min(4096, ours)     # a child cannot go above ours
    node = limited(256, hard)
    assert f"open files limit raised from 256 to {hard}" in node.log_tail()
    files = _status(node)["open_files"]
    assert files["limit"] == hard and not files["near"] and 0 < files["open"] < hard


def test_a_node_whose_limit_is_too_low_to_start_says_so(tmp_path):
    """Fault: a node started where it may open only 32 files. It exits with
    status 2 and one line naming the limit and how to raise it; before, it
    went on until gevent's loop could not make its pipes and aborted the
    process (a core dump, no word of why) -- at 12 files here."""
    node = LimitedNode(32, 32, log_dir=str(tmp_path)).start()
    assert node.proc is not None and node.proc.wait(30) == 2
    assert node.log_tail().strip().splitlines()[-1] == (
        "miyaq: error: a node needs to open at least 64 files, and this process may open 32 (its limit on open "
        "files): raise it (ulimit -n, systemd's LimitNOFILE, docker's --ulimit nofile)")


def test_a_node_out_of_file_descriptors_says_so_and_recovers(limited, ctx):
    """Fault: a node that runs out of file descriptors. Its hard limit is 96
    (it cannot raise it: it warns at start), and 150 connections come in.
    The ones past the limit are not accepted; the node logs an error naming
    its limit and how to raise it. An HTTP request then waits unanswered,
    and the gateway pauses accepting without a traceback per attempt. When
    the connections go, the node says it is back under its limit, serves
    again, and STATUS and /metrics count the episode."""
    http = free_port()
    node = limited(96, 96, "--http-port", str(http))
    assert "may open at most 96 files (its soft limit)" in node.log_tail()
    sockets = [ctx.socket(zmq.DEALER) for _ in range(150)]
    try:
        for sock in sockets:
            sock.connect(node.endpoint)
        wait_for(lambda: "files open of its limit of 96" in node.log_tail(), timeout=40,
                 what="the node's error about its open files")
        assert "raise the limit (ulimit -n, systemd's LimitNOFILE" in node.log_tail()
        with pytest.raises(OSError):       # accepted by the kernel, never answered: a timeout
            urllib.request.urlopen(f"http://127.0.0.1:{http}/status", timeout=2).read()
    finally:
        for sock in sockets:
            sock.close(0)
    wait_for(lambda: "back under its limit on open files" in node.log_tail(), timeout=40,
             what="the node to say it recovered")
    files = _status(node)["open_files"]
    assert files["limit"] == 96 and files["times_near"] == 1 and not files["near"]
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert "process_max_fds 96.0" in metrics
    refused = re.search(r'miyaq_http_refused_total\{reason="open_files"\} (\d+)', metrics)
    assert refused is not None and int(refused.group(1)) >= 1, metrics
    assert "Traceback" not in node.log_tail(400) and node.alive()


class LimitedWorker(WorkerProc):
    """A worker subprocess started with a given limit on open files."""

    def __init__(self, soft: int, hard: int, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.limits = (soft, hard)

    start = LimitedNode.start


def test_a_worker_out_of_file_descriptors_when_its_node_restarts_keeps_trying(procs, tmp_path):
    """Fault: a worker's handlers hold every file descriptor it may open (a
    leak) when its node restarts. The worker cannot open a socket to the new
    node: it says so (naming its open files and limit) and tries again every
    heartbeat; once the files are freed it registers and runs tasks again.
    Before, the failed reopen left the link without a socket, its reader
    died, stopping failed on the same missing socket, and the process lived
    on, registered nowhere and running nothing."""
    node = procs.node()
    worker = LimitedWorker(128, 128, "apps.leaky", [node.endpoint], log_dir=str(tmp_path)).start()
    client = Client(node.endpoint, request_timeout=10)
    try:
        assert client.call("ping", timeout=20) == "pong"
        assert client.call("hold", [6.0], timeout=20) > 0      # every descriptor taken, for 6 s
    finally:
        client.close(flush=False)
    port = node.port
    node.kill()
    node = procs.node(port=port)
    wait_for(lambda: "cannot open a socket to node" in worker.log_tail(), timeout=30,
             what="the worker to say it cannot open a socket")
    assert "files open of a limit of 128" in worker.log_tail() and worker.alive()
    client = Client(node.endpoint, request_timeout=10)
    try:
        assert client.call("ping", timeout=40) == "pong"      # registered again once the files were freed
    finally:
        client.close(flush=False)
    assert worker.alive() and "AttributeError" not in worker.log_tail(400)
    worker.kill()


def test_near_the_limit_the_error_is_repeated_at_a_bounded_rate(monkeypatch, caplog):
    """A node that stays near its limit logs the error once a ``REPEAT``, not
    at every count; it says once that it recovered, and counts each time it
    came near."""
    watch = OpenFilesWatch("n1", Supervisor("test"))
    counts = iter([95, 96, 96, 96, 70, 50, 99])
    monkeypatch.setattr(watch_module, "open_count", lambda: next(counts))
    monkeypatch.setattr(watch_module, "soft_limit", lambda: 100)
    caplog.set_level(logging.WARNING, logger=watch_module.__name__)
    for now in (0.0, 5.0, REPEAT - 1, REPEAT + 1, REPEAT + 6, REPEAT + 11, REPEAT + 16):
        watch.check(now)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" has ")[0] for line in lines if " files open " in line] == ["node n1"] * 3
    assert sum("back under its limit" in line for line in lines) == 1
    assert watch.stats() == {"open": 99, "limit": 100, "near": True, "times_near": 2}


def test_the_soft_limit_is_never_lowered_and_a_refusal_is_not_an_error(monkeypatch):
    """Raising never lowers a soft limit already at or above the hard one,
    and a kernel that refuses the raise leaves the limit as it was."""
    monkeypatch.setattr(resource, "getrlimit", lambda which: (8192, 4096))
    assert open_files.raise_soft_limit() == (8192, 8192)

    def refuse(which, limits):
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 65536))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert open_files.raise_soft_limit() == (1024, 1024)
