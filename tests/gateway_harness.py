"""In-process harness for the HTTP gateway tests.

* :class:`NodeThread` runs a real node (:func:`~miyaq.node.assemble.build_node`; ZeroMQ
  service port and HTTP gateway on free loopback ports) in a native thread
  with its own gevent hub; :meth:`NodeThread.stop` schedules ``node.stop(0)``
  on that hub through an async watcher (thread-safe) and joins the thread.
* :class:`Http` is a small keep-alive JSON client on ``http.client``.
* :class:`WorkerServer` is a threaded ``http.server`` standing in for a web
  worker: it records every request and answers from a script, counting
  requests in flight so concurrency caps can be checked by counting.

Everything binds to 127.0.0.1 on random free ports and is closed by the
fixtures, pass or fail.
"""
from __future__ import annotations

import http.client
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from miyaq.config import NodeConfig
from miyaq.core.binding import port_in_use
from miyaq.errors import ConfigError, Timeout
from miyaq.node.assemble import build_node
from miyaq.node.node import Node
from miyaq.runtime import green
from miyaq.testing import ports
from miyaq.testing.ports import PORT_TRIES, free_port  # noqa: F401  (tests import free_port from here)

logger = logging.getLogger(__name__)

WAIT = 15.0   # generous upper bound for anything to happen; tests never assert durations




def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test (naming ``what``) if it never is."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class NodeThread:
    def __init__(self, **settings: Any) -> None:
        """A node in a thread, started. The ports ``settings`` do not name
        are picked here, and picked again if another process takes one
        before the node binds it (up to ``PORT_TRIES`` starts, as
        miyaq.testing.harness does); a named port in use fails the start."""
        for attempt in range(1, PORT_TRIES + 1):
            picked = {name: ports.free_port() for name in ("port", "peer_port", "pub_port", "http_port")
                      if name not in settings}
            self._start({**picked, "node_id": "t1", "shutdown_grace": 0.0, **settings})
            if self._error is None:
                return
            taken = port_in_use(self._error.message) if isinstance(self._error, ConfigError) else None
            if taken is None or taken[0] not in picked.values() or attempt == PORT_TRIES:
                break
            logger.warning("gateway test node: port %d (%s) was taken before it bound it; starting it again on "
                           "fresh ports (start %d of %d)", taken[0], taken[1], attempt + 1, PORT_TRIES)
        raise RuntimeError(f"node did not start: {self._error!r}")

    def _start(self, values: dict[str, Any]) -> None:
        """Start the node's thread and wait until it started (``_error``: why it did not)."""
        self.config = NodeConfig(**values)
        self.node: Node | None = None
        self._stop_watcher: Any = None
        self._call_watcher: Any = None
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="node-" + self.config.id, daemon=True)
        self.thread.start()
        if not self._ready.wait(10) and self._error is None:
            self._error = Timeout("the node did not start within 10 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}"

    def _run(self) -> None:
        try:
            self.node = build_node(self.config)
            self._stop_watcher = green.ThreadWake(lambda: green.Greenlet.spawn(self.node.stop, 0))
            self._call_watcher = green.ThreadWake(self._run_calls)
            self.node.start()
        except BaseException as exc:      # the test's thread raises it (NodeThread.__init__)
            self._error = exc
            green.destroy_hub()
            self._ready.set()
            return
        self._ready.set()
        try:
            self.node.wait()
        finally:
            self._stop_watcher.close()
            self._call_watcher.close()
            green.destroy_hub()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (which must not block) in the node's hub and return its
        result: how a test reads node state without racing the node's thread."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
                box["error"] = exc
            done.set()

        self._calls.put(run)
        self._call_watcher.wake()
        if not done.wait(WAIT):
            pytest.fail("node did not run the call")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def _run_calls(self) -> None:
        while not self._calls.empty():
            self._calls.get_nowait()()

    def stop(self) -> None:
        if self.thread.is_alive() and self._stop_watcher is not None:
            self._stop_watcher.wake()
        self.thread.join(15)
        assert not self.thread.is_alive(), "node thread did not stop"


class Http:
    """One keep-alive connection speaking JSON."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        host, port = base_url.split("//", 1)[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=WAIT + 5)
        self.token = token

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, Any, dict[str, str]]:
        hdrs = dict(headers or {})
        if self.token is not None:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if content_type is not None:
            hdrs["Content-Type"] = content_type
        self.conn.request(method, path, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        payload = resp.read()
        headers_out = {k.lower(): v for k, v in resp.getheaders()}
        if headers_out.get("content-type", "").startswith("application/json"):
            return resp.status, json.loads(payload), headers_out
        return resp.status, payload, headers_out

    def get(self, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("POST", path, body, **kw)

    def close(self) -> None:
        self.conn.close()


def metrics_text(base_url: str) -> str:
    """``GET /metrics`` on a connection of its own (closed after), as text:
    for a test whose other connections the node may have given up on."""
    api = Http(base_url)
    try:
        return api.get("/metrics")[1].decode()
    finally:
        api.close()


def write_tokens(path: Any, text: str) -> None:
    """Write an ``http_tokens`` file (owner-only, as the node wants it)."""
    import os

    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


class RequestInThread:
    """One HTTP request in a thread of its own (a long-poll the test lets
    wait): its status, JSON and headers by :meth:`answer`, waited for at
    most ``answer_within`` seconds (a guard against a hang, not a measure).
    ``token``: sent as a bearer token. :meth:`close` ends its connection."""

    def __init__(self, node: "NodeThread", method: str, path: str, body: Any = None, *,
                 token: str | None = None, answer_within: float = 20.0) -> None:
        self.result: tuple[int, Any, dict[str, str]] | None = None
        self.answer_within = answer_within
        self.conn = http.client.HTTPConnection("127.0.0.1", node.config.http_port, timeout=answer_within + 40)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"

        def run() -> None:
            data = json.dumps(body).encode() if body is not None else None
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            self.result = resp.status, json.loads(resp.read()), {k.lower(): v for k, v in resp.getheaders()}

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def answer(self) -> tuple[int, Any, dict[str, str]]:
        self.thread.join(self.answer_within)
        assert self.result is not None, f"no HTTP answer within {self.answer_within} s"
        return self.result

    def close(self) -> None:
        self.conn.close()


def connect_from(node: NodeThread, source: str, opened: list[socket.socket], rcvbuf: int = 0) -> socket.socket:
    """A raw connection to ``node``'s gateway from loopback address ``source``
    (127.0.0.2 and up reach a node bound to 127.0.0.1, and count as another
    client), appended to ``opened`` for the test to close. ``rcvbuf``: a
    small receive buffer, for a client that does not read."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT)
    opened.append(sock)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", node.config.http_port))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the node sends until it closes the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


class Recorded:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes, peer_port: int) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.peer_port = peer_port   # the node's side of the connection: same port, same connection


class WorkerServer:
    """A web worker on a free port. ``script`` maps a request count (1-based)
    to ``(status, headers, delay[, body])``; missing counts answer 200 "ok"."""

    def __init__(self, script: dict[int, tuple[Any, ...]] | None = None,
                 hold: float = 0.0) -> None:
        self.requests: list[Recorded] = []
        self.script = script or {}
        self.hold = hold
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with outer.lock:
                    outer.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body,
                                                   self.client_address[1]))
                    n = len(outer.requests)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                status, headers, delay, *rest = outer.script.get(n, (200, {}, 0.0))
                try:
                    time.sleep(delay or outer.hold)
                    payload = rest[0] if rest else b"ok"
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass   # the node gave up on this request (timeout test)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def make_http_node() -> Iterator[Callable[..., NodeThread]]:
    nodes: list[NodeThread] = []

    def make(**settings: Any) -> NodeThread:
        node = NodeThread(**settings)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def http_node(make_http_node: Callable[..., NodeThread]) -> NodeThread:
    return make_http_node()


@pytest.fixture
def api(http_node: NodeThread) -> Iterator[Http]:
    client = Http(http_node.url)
    yield client
    client.close()


@pytest.fixture
def make_web_worker() -> Iterator[Callable[..., WorkerServer]]:
    servers: list[WorkerServer] = []

    def make(**kw: Any) -> WorkerServer:
        server = WorkerServer(**kw)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


# Test modules bind these to module globals (where pytest looks for fixtures):
#   http_node, api, make_http_node, make_web_worker = FIXTURES
FIXTURES = (http_node, api, make_http_node, make_web_worker)
