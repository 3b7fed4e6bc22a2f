"""Real nodes and workers for tests and tools: in a native thread (fast,
one process) or as subprocesses (for kill -9 and signals).

Every object here cleans up after itself (``stop()`` / context manager) and
keeps its process's output in a log file whose tail :meth:`log_tail` shows.
No pytest imports: ``miyaq dev-cluster`` and ``miyaq bench`` use it too.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from miyaq.client.client import Client
from miyaq.config import NodeConfig
from miyaq.errors import MiyaqError, Timeout
from miyaq.node.assemble import build_node
from miyaq.node.node import Node
from miyaq.runtime import LOG, Supervisor, green, monotonic
from miyaq.runtime.endpoints import WILDCARDS, tcp_endpoint
from miyaq.testing import ports
from miyaq.worker.runner import Worker


def free_port() -> int:
    """A free loopback port, and the next two, for a node's peer and pub
    sockets (:func:`miyaq.testing.ports.free_port`: below the ephemeral range)."""
    return ports.free_port(span=3)


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port where nothing listens, for as long as the block runs:
    a socket bound there and never listening refuses every connection, and
    no other process (another test of a parallel run) can take the port
    meanwhile, as it could take a :func:`free_port` that was let go."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def in_own_hub(body: Callable[[], Any], timeout: float = 45.0) -> Any:
    """Run ``body()`` in a native thread with a gevent hub of its own,
    destroyed after, and return what it returned (re-raising what it
    raised); the calling thread's hub keeps gevent's defaults."""
    outcome: list[Any] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(body())
        except BaseException as exc:      # re-raised in the caller below
            failures.append(exc)
        finally:
            green.destroy_hub()

    thread = threading.Thread(target=run, name="own hub")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"a body run in its own hub did not end within {timeout:g}s")
    if failures:
        raise failures[0]
    return outcome[0]


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; Timeout after ``timeout``."""
    deadline = monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if monotonic() >= deadline:
            raise Timeout(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


class _HubThread:
    """Runs ``target(obj)`` in a native thread with its own gevent hub and
    lets other threads ask it to stop (a :class:`~miyaq.runtime.green.ThreadWake`
    is the one thread-safe way into another hub)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ready = threading.Event()
        self._async: green.ThreadWake | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def run(self, build: Callable[[], Any], serve: Callable[[Any], None], stop: Callable[[Any], None]) -> Any:
        box: dict[str, Any] = {}

        def main() -> None:
            try:
                obj = box["obj"] = build()
                stopper = Supervisor(f"harness {self.name}")
                self._async = green.ThreadWake(lambda: stopper.spawn("harness stop", stop, obj, policy=LOG))
            except BaseException as exc:
                self.error = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                serve(obj)
            except BaseException as exc:  # surfaced by stop()
                self.error = exc
            finally:
                # The thread's hub goes with it: its event loop holds two
                # descriptors (an epoll and an eventfd), which a test process
                # starting a node a test kept for good (over 1,000 in an
                # xdist worker by the end of the suite, before 2026-12-05's
                # review: past what select() takes).
                wake, self._async = self._async, None
                if wake is not None:
                    wake.close()
                green.destroy_hub()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error
        return box["obj"]

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        wake = self._async
        if wake is not None and self._thread.is_alive():
            try:
                wake.wake()
            except Exception:       # the thread ended meanwhile and closed it: nothing to wake
                pass
        self._thread.join(timeout)
        self._thread = None


class ThreadNode:
    """A :class:`~miyaq.node.node.Node` (built by :func:`~miyaq.node.assemble.build_node`)
    in a thread of this process."""

    def __init__(self, coordinator: Callable[[NodeConfig], Any] | None = None, **settings: Any) -> None:
        """``coordinator``, if given, makes the node's coordinator from its
        config (in the node's thread): a clustered node without ZooKeeper."""
        self._coordinator = coordinator
        settings.setdefault("port", free_port())
        settings.setdefault("http_port", 0)
        settings.setdefault("node_id", f"t{settings['port']}")
        settings.setdefault("shutdown_grace", 2.0)
        self.config = NodeConfig(**settings)
        host = self.config.host
        #: Where a client in this process reaches the node (loopback for a wildcard host).
        self.endpoint = tcp_endpoint(host if host not in WILDCARDS else "127.0.0.1", self.config.port)
        self._hub = _HubThread(f"node-{self.config.node_id}")
        self.node: Node | None = None

    def start(self) -> "ThreadNode":
        def build() -> Node:
            make = self._coordinator
            return build_node(self.config, coordinator=make(self.config) if make else None).start()
        self.node = self._hub.run(build, lambda n: n.wait(), lambda n: n.stop())
        return self

    def stop(self) -> None:
        self._hub.stop()

    def __enter__(self) -> "ThreadNode":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ThreadWorker:
    """A :class:`~miyaq.worker.runner.Worker` in a thread of this process."""

    def __init__(self, app: Any, endpoints: list[str], **options: Any) -> None:
        self.app = app
        self.endpoints = endpoints
        self.options = options
        self._hub = _HubThread("worker")
        self.worker: Any = None

    def start(self) -> "ThreadWorker":
        self.worker = self._hub.run(lambda: Worker(self.app, endpoints=self.endpoints, **self.options).start(),
                                    lambda w: w.run(), lambda w: w.stop())
        return self

    def stop(self) -> None:
        self._hub.stop()

    def __enter__(self) -> "ThreadWorker":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Proc:
    """A miyaq subprocess (``python -m miyaq.cli.main ARGS``) with its log,
    ``<log_dir>/<name>.log``. Without ``log_dir`` a new temporary directory
    holds it, left for the caller to remove (a log is read after its process
    died); tests pass their ``tmp_path``."""

    def __init__(self, args: list[str], name: str, env: dict[str, str] | None = None,
                 log_dir: str | None = None) -> None:
        self.args = args
        self.name = name
        self.env = {**os.environ, **(env or {})}
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="miyaq-")
        self.log_path = os.path.join(self.log_dir, f"{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Proc":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "miyaq.cli.main", *self.args],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """The process's exit code; ``None`` while it runs (or before it starts)."""
        return self.proc.poll() if self.proc is not None else None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL: the fault of a crashed process."""
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                data = fh.read()[-65536:]
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class NodeProc(Proc):
    def __init__(self, port: int | None = None, extra: list[str] | None = None, **kw: Any) -> None:
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        super().__init__(["node", "--port", str(self.port), "--http-port", "0",
                          "--node-id", f"n{self.port}", "--shutdown-grace", "5", *(extra or [])],
                         name=f"node-{self.port}", **kw)

    def wait_ready(self, timeout: float = 20.0) -> "NodeProc":
        client = Client(self.endpoint, submit_timeout=2, request_timeout=1)
        try:
            deadline = monotonic() + timeout
            while True:
                if not self.alive():
                    raise MiyaqError(f"node exited early:\n{self.log_tail()}")
                try:
                    client.status()
                    return self
                except MiyaqError:
                    if monotonic() > deadline:
                        raise Timeout(f"node on {self.endpoint} not ready:\n{self.log_tail()}") from None
        finally:
            client.close(flush=False)


class WorkerProc(Proc):
    def __init__(self, app: str, endpoints: list[str], concurrency: int = 4, extra: list[str] | None = None,
                 **kw: Any) -> None:
        super().__init__(["worker", app, "--connect", ",".join(endpoints), "--concurrency", str(concurrency),
                          "--heartbeat", "0.25", "--grace", "5", *(extra or [])],
                         name=f"worker-{app.replace(':', '_')}-{id(self)}", **kw)
