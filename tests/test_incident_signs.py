"""What an operator paged at night sees first (docs/operations.md): the log
line or the status line an incident shows, with the ids needed to act on
it. Each test's docstring names the incident it stages."""
from __future__ import annotations

import logging
import socket
import time

import pytest

from apps import basic
from miyaq import Busy
from miyaq.cli.status_view import print_node_status as _print_node_status
from miyaq.store.task import Task
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def fresh_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines' rate limits are the modules' own: other tests in this
    process may have spent this minute's lines of a kind."""
    from miyaq.core import engine, workers
    from miyaq.logs import LogLimiter

    for module, name in ((engine, "_log"), (engine, "_full"), (workers, "_log")):
        limiter = getattr(module, name, None)
        if limiter is not None:
            monkeypatch.setattr(module, name, LogLimiter(limiter.logger, burst=limiter.burst, per=limiter.per))


def _warnings(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


def test_a_task_that_kills_its_worker_is_named_in_a_warning_and_its_dead_letter_too(make_node, procs, client_for,
                                                                                     caplog):
    """Incident: a poison task -- its handler kills the worker process
    (here kill -9 of the worker while it runs the task, as ``os._exit`` in
    the handler does). The node said only "worker W went silent; 1 task(s)
    put back", at INFO, naming no task, and nothing when the task reached
    the dead-letter queue. Now a WARNING names the task (id, handler,
    attempt), and another its dead-lettering."""
    node = make_node(liveness=3)
    client = client_for(node.endpoint)
    victim = procs.worker("apps.basic:app", node.endpoint, 1, "--prefetch", "0")
    caplog.set_level(logging.INFO)
    handle = client.submit("sleep", [60], id="poison-1", max_retries=0, wait=True)
    wait_for(lambda: client.status(handle.id)["state"] == "running", timeout=30, what="the task running")
    victim.kill()
    wait_for(lambda: client.status(handle.id)["state"] == "dead", timeout=30, what="the task dead-lettered")
    gone = _warnings(caplog, "miyaq.core.workers")
    assert any("went silent" in m and "poison-1 (sleep, attempt 1)" in m for m in gone), gone
    dead = _warnings(caplog, "miyaq.core.engine")
    assert any("poison-1 (sleep) in queue default dead-lettered after 1 attempt(s): Lost" in m for m in dead), dead


def test_a_handler_that_fails_every_time_is_named_when_it_is_dead_lettered(node, client, thread_worker, caplog):
    """Incident: a handler that raises on every attempt. Its task reached
    the dead-letter queue without a line in the node's log: the operator
    learned of it only by listing dead letters. Now a WARNING names it, its
    attempts and its error."""
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1)
    caplog.set_level(logging.INFO)
    handle = client.submit("boom", id="boom-1", max_retries=2, backoff=0.01, wait=True)
    wait_for(lambda: client.status(handle.id)["state"] == "dead", timeout=30, what="the task dead-lettered")
    wait_for(lambda: _warnings(caplog, "miyaq.core.engine"), timeout=10, what="the warning")
    dead = _warnings(caplog, "miyaq.core.engine")
    assert any("boom-1 (boom) in queue default dead-lettered after 3 attempt(s)" in m and "kaboom" in m
               for m in dead), dead


def test_a_dead_webhook_is_named_by_its_destination_without_its_path_and_query() -> None:
    """A webhook URL may carry a token in its query: the dead-letter line
    names the destination's scheme and host only, and so does the line of
    a worker lost with tasks."""
    from miyaq.core.workers import _some_tasks
    from miyaq.store.task import handler_label      # here: the other tests run against code without it

    hook = Task("h1", "hooks", None, b"", url="https://hooks.example.com:8443/in?token=s3cret")
    assert handler_label(hook) == "webhook to https://hooks.example.com:8443"
    assert handler_label(Task("t1", "default", "add", b"")) == "add"
    assert "s3cret" not in _some_tasks([hook]) and "hooks.example.com" in _some_tasks([hook])
    # a URL with credentials (refused since 2026-12-05, but an older log's or a peer's copy may hold one)
    stored = Task("h2", "hooks", None, b"", url="https://alice:pa55@hooks.example.com:8443/in")
    assert handler_label(stored) == "webhook to https://hooks.example.com:8443"
    assert handler_label(Task("h3", "hooks", None, b"", url="http://[::1]:8080/x")) == "webhook to http://[::1]:8080"


def test_lines_a_logger_hides_do_not_use_up_the_rate_of_lines_it_shows(caplog) -> None:
    """Fault (review16): 100 idle workers lost at INFO on a node run at
    ``--log-level WARNING`` used up the "worker gone" line budget (a hidden
    line was counted), so the WARNING of the busy worker lost next -- the
    sign of a poison task -- was dropped. Hidden lines are not counted
    now, and the two lines are kinds of their own."""
    from miyaq.logs import LogLimiter

    logger = logging.getLogger("miyaq.test.limiter")
    limiter = LogLimiter(logger, burst=3)
    with caplog.at_level(logging.WARNING, logger="miyaq.test.limiter"):
        for n in range(100):
            limiter.log(logging.INFO, "gone", "idle %d", n)
        assert limiter.log(logging.WARNING, "gone", "busy one") is True
    assert [r.getMessage() for r in caplog.records if r.name == "miyaq.test.limiter"] == ["busy one"]


def test_garbage_on_the_service_port_is_named_as_a_likely_stranger(make_node, caplog):
    """Incident: something that is not a ZeroMQ peer -- an HTTP request sent
    to the service port -- connects. The node's warning read "closed in the
    handshake -- likely connections closed in the middle of their
    handshake", which says nothing the first half did not. Now it names
    what it most likely is."""
    node = make_node()
    caplog.set_level(logging.WARNING, logger="miyaq.security.handshakes")
    with socket.create_connection(("127.0.0.1", node.config.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(64)       # libzmq's greeting; then it closes on the bad one
    wait_for(lambda: _warnings(caplog, "miyaq.security.handshakes"), timeout=20, what="the handshake warning")
    warning = _warnings(caplog, "miyaq.security.handshakes")[0]
    assert "service port" in warning and "not a ZeroMQ peer (an HTTP client" in warning, warning


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("kazoo.client", logging.WARNING, __file__, 1, msg, args, None)


def test_zookeeper_reconnect_lines_are_bounded_and_counted() -> None:
    """Incident: ZooKeeper stopped for 27 s under a cluster of three. kazoo
    wrote "Connecting to ..." and "Connection dropped: ..." about once a
    second on every node (54 lines a node; 7,200 an hour): miyaq's own
    "ZooKeeper connection suspended" drowned in them. Now two of each a
    minute pass; the next one let through says how many were held back;
    other kazoo lines always pass."""
    from miyaq.logs import ZooKeeperReconnects      # here: the other tests run against code without it

    quiet = ZooKeeperReconnects(burst=2, per=60.0)
    dropped = [quiet.filter(_record("Connection dropped: %s", "refused")) for _ in range(10)]
    assert dropped == [True, True] + [False] * 8
    assert quiet.filter(_record("Connecting to %s(%s):%s, use_ssl: %r", "zk", "127.0.0.1", 2181, False))
    assert quiet.filter(_record("Session has expired"))
    quiet._windows["Connection dropped: %s"][0] -= 60.0      # a minute later
    later = _record("Connection dropped: %s", "refused")
    assert quiet.filter(later)
    assert later.getMessage() == "Connection dropped: refused (8 more like it in the last 60s)"


def test_a_full_node_says_so_in_its_log_and_its_status(make_node, client_for, capsys, caplog):
    """Incident: workers gone, producers submitting: the node fills up to
    ``max_tasks`` and refuses every new task ``busy`` -- without a line in
    its log, while ``miyaq status`` said "accepting True  live 2" and
    nothing of the bound. Now a warning says so (once a minute, with the
    count), and the status shows the bound and says the node is full.
    The node is filled through a patient client, only the refused submit
    waits 1 s: a stall of the loaded machine past 1 s failed the setup's
    submits (before 2026-12-08)."""
    node = make_node(max_tasks=2)
    client = client_for(node.endpoint, submit_timeout=1.0)
    for i in range(2):
        client_for(node.endpoint).submit("add", [i, 1], countdown=600, wait=True)
    caplog.set_level(logging.WARNING, logger="miyaq.core.engine")
    with pytest.raises(Busy):
        client.submit("add", [9, 1], wait=True)
    full = _warnings(caplog, "miyaq.core.engine")
    assert any("refusing new tasks busy: the node holds 2 live tasks, its max_tasks" in m for m in full), full
    _print_node_status(client.status())
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("live 2 of 2 "), out
    assert out[2].startswith("FULL: 2 live tasks, max_tasks 2: new tasks are refused busy"), out


def test_a_node_full_of_results_says_so_in_its_log(make_node, client_for, thread_worker, caplog):
    """Incident (review16): a node refusing new tasks busy because the
    results it keeps reached ``max_result_bytes`` wrote no line (the
    ``max_tasks`` and ``max_bytes`` refusals do). Now a warning says so.
    The result is made through a patient client, only the refused submit
    waits 1 s (a stall past 1 s failed that setup, before 2026-12-08)."""
    node = make_node(max_result_bytes=1000)
    client = client_for(node.endpoint, submit_timeout=1.0)
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1)
    assert client_for(node.endpoint).submit("echo", ["x" * 2000], wait=True).result(30)
    caplog.set_level(logging.WARNING, logger="miyaq.core.engine")
    with pytest.raises(Busy):
        client.submit("add", [9, 1], wait=True)
    full = _warnings(caplog, "miyaq.core.engine")
    assert any("refusing new tasks busy: the node keeps" in m and "max_result_bytes 1000" in m for m in full), full


def test_messages_of_a_client_that_is_not_a_miyaq_client_are_logged(make_node, caplog):
    """Incident: a client that is not a miyaq client -- a REQ socket (an
    empty frame in front), a body that is not msgpack, an unknown command.
    Each was answered with an ERROR (a REQ socket drops it and waits for
    ever) and counted, but only another protocol version was logged. Now
    the first of each code is a warning, with the code (five a minute)."""
    import zmq

    from miyaq.protocol import commands as c

    node = make_node()
    caplog.set_level(logging.WARNING, logger="miyaq.core.service")
    ctx = zmq.Context()
    try:
        for frames in ([b"", c.TAG, c.STATUS, b"\x80"], [c.TAG, c.STATUS, b"\xc1"], [c.TAG, b"FROB", b"\x80"]):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 10_000)
            sock.connect(node.endpoint)
            sock.send_multipart(frames)
            assert sock.recv_multipart()[1] == b"ERROR"
            sock.close()
    finally:
        ctx.destroy(linger=0)
    refused = _warnings(caplog, "miyaq.core.service")
    for code in ("bad_frame", "bad_encoding", "unknown_command"):
        assert any(f"(1 so far, code {code})" in m for m in refused), (code, refused)


def test_a_flood_of_bad_messages_is_logged_a_few_lines_a_minute(make_node, caplog):
    """Fault (review16): one connection sending malformed messages as fast
    as it could made 55 WARNING lines a second (the first and every
    thousandth of each code: a bound that grew with the sender's rate).
    Now five lines a minute for a code, the rest counted in STATUS."""
    import zmq

    from miyaq.protocol import commands as c

    node = make_node()
    caplog.set_level(logging.WARNING, logger="miyaq.core.service")
    ctx = zmq.Context()
    sent = 8000        # before: the first and every thousandth, 8 lines
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(node.endpoint)
        for _ in range(sent):
            sock.send_multipart([c.TAG, c.STATUS, b"\xc1"])
        for _ in range(sent):
            assert sock.recv_multipart()[1] == b"ERROR"
        sock.close()
    finally:
        ctx.destroy(linger=0)
    assert node.node.status(time.time())["errors"]["bad_encoding"] == sent
    lines = [m for m in _warnings(caplog, "miyaq.core.service") if "code bad_encoding" in m]
    assert 1 <= len(lines) <= 5, lines


def test_status_into_a_pipe_whose_reader_went_away_ends_without_a_traceback(make_node):
    """Incident: an operator runs ``miyaq status | head -3``; ``head``
    exits after three lines and the command ended with a BrokenPipeError
    traceback on the terminal, below the lines asked for. Now it ends with
    141 (128 + SIGPIPE), as other commands do, and says nothing."""
    import os
    import subprocess
    import sys

    node = make_node()
    read, write = os.pipe()
    os.close(read)          # the reader is gone before the command writes a line
    try:
        proc = subprocess.run([sys.executable, "-m", "miyaq", "status", "--connect", node.endpoint],
                              stdout=write, stderr=subprocess.PIPE, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finally:
        os.close(write)
    assert b"Traceback" not in proc.stderr and b"BrokenPipeError" not in proc.stderr, proc.stderr.decode()
    assert proc.returncode == 141, (proc.returncode, proc.stderr.decode())


def test_output_to_a_full_disk_is_one_line_not_a_traceback(make_node):
    """Fault (review16): ``miyaq status > /dev/full`` (the output's disk
    full) ended with a dozen-line OSError traceback. Now one line saying
    the output could not be written, and status 1."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    node = make_node()
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "miyaq", "status", "--connect", node.endpoint],
                              stdout=full, stderr=subprocess.PIPE, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    stderr = proc.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 1 and "miyaq: error: cannot write the output: No space left on device" in stderr, \
        (proc.returncode, stderr)
