"""Real nodes and workers for tests and tools: in a native thread (fast,
one process) or as subprocesses (for kill -9 and signals).

Every object here cleans up after itself (``stop()`` / context manager) and
keeps its process's output in a log file whose tail :meth:`log_tail` shows.
No pytest imports: ``miyaq dev-cluster`` and ``miyaq bench`` use it too.

A port picked here (:func:`free_port`) is checked free when picked, and the
node binds it later: another process (another test's subprocess, another
suite on the machine) can take it in between, and the node fails to start
with "port P is in use". :class:`ThreadNode` and :class:`NodeProc` then
start the node again on freshly picked ports, up to :data:`PORT_TRIES` starts
in all, with a WARNING -- only when the taken port is one they picked
themselves: a port the caller named fails the start as before (a test of
that error must see it). ``miyaq dev-cluster`` does the same for its nodes
(:mod:`miyaq.devcluster.busy`).
"""
from __future__ import annotations

import logging
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
from miyaq.core.binding import port_in_use
from miyaq.errors import ConfigError, MiyaqError, Timeout
from miyaq.node.assemble import build_node
from miyaq.node.node import Node
from miyaq.runtime import LOG, Supervisor, green, monotonic
from miyaq.runtime.endpoints import WILDCARDS, tcp_endpoint
from miyaq.testing import ports
from miyaq.testing.ports import PORT_TRIES
from miyaq.worker.runner import Worker

logger = logging.getLogger(__name__)



def free_port() -> int:
    """A free loopback port, and the next two, for a node's peer and pub
    sockets (:func:`miyaq.testing.ports.free_port`: below the ephemeral range)."""
    return ports.free_port(span=3)


def _picked_block(port: int, peer_named: bool, pub_named: bool) -> set[int]:
    """The ports of a block the harness picked at ``port`` that the node binds:
    ``port`` itself, and the peer and PUB ports derived from it unless named."""
    return {port} | (set() if peer_named else {port + 1}) | (set() if pub_named else {port + 2})


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
                green.destroy_hub()     # the thread ends here: its hub goes with it (see below)
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
        config (in the node's thread): a clustered node without ZooKeeper.
        Without ``port`` the harness picks the ports (and picks them again if
        another process takes one first, see the module's doc)."""
        self._coordinator = coordinator
        self._settings = settings
        self._picked: set[int] = set()      # the ports the harness picked, which it may pick again
        self.node: Node | None = None
        self._configure(None if "port" in settings else free_port())

    def _configure(self, port: int | None) -> None:
        """The node's config from the settings given and, unless they named
        it, the picked ``port``."""
        settings = dict(self._settings)
        if port is not None:
            settings["port"] = port
            self._picked = _picked_block(port, bool(settings.get("peer_port")), bool(settings.get("pub_port")))
        settings.setdefault("http_port", 0)
        settings.setdefault("node_id", f"t{settings['port']}")
        settings.setdefault("shutdown_grace", 2.0)
        self.config = NodeConfig(**settings)
        host = self.config.host
        #: Where a client in this process reaches the node (loopback for a wildcard host).
        self.endpoint = tcp_endpoint(host if host not in WILDCARDS else "127.0.0.1", self.config.port)
        self._hub = _HubThread(f"node-{self.config.node_id}")

    def start(self) -> "ThreadNode":
        """Build and start the node in its thread; ConfigError (or what else
        the build raised) if it cannot, after :data:`PORT_TRIES` starts when
        it is a picked port that was taken."""
        def build() -> Node:
            make = self._coordinator
            return build_node(self.config, coordinator=make(self.config) if make else None).start()
        for attempt in range(1, PORT_TRIES + 1):
            try:
                self.node = self._hub.run(build, lambda n: n.wait(), lambda n: n.stop())
                return self
            except ConfigError as exc:
                taken = port_in_use(exc.message)
                if taken is None or taken[0] not in self._picked or attempt == PORT_TRIES:
                    raise
                logger.warning("node %s: port %d (%s) was taken before it bound it; starting it again on "
                               "fresh ports (start %d of %d)", self.config.node_id, taken[0], taken[1],
                               attempt + 1, PORT_TRIES)
                self._configure(free_port())
        raise AssertionError("unreachable: the last start returned or raised")

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
    """A node process. Without ``port`` the harness picks its ports (and picks
    them again if another process takes one first, see the module's doc)."""

    def __init__(self, port: int | None = None, extra: list[str] | None = None, **kw: Any) -> None:
        self._extra = list(extra or [])
        self._picked: set[int] = set()      # the ports the harness picked, which it may pick again
        super().__init__([], name="", **kw)
        self._use(port or self._pick())

    def _pick(self) -> int:
        port = free_port()
        if "--port" not in self._extra:
            self._picked = _picked_block(port, "--peer-port" in self._extra, "--pub-port" in self._extra)
        return port

    def _use(self, port: int) -> None:
        self.port = port
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.args = ["node", "--port", str(self.port), "--http-port", "0", "--node-id", f"n{self.port}",
                     "--shutdown-grace", "5", *self._extra]
        self.name = f"node-{self.port}"
        self.log_path = os.path.join(self.log_dir, f"{self.name}.log")

    def wait_ready(self, timeout: float = 20.0) -> "NodeProc":
        """Return once the node answers; MiyaqError if it exited (after
        :data:`PORT_TRIES` starts if a picked port was taken), Timeout if it
        did not answer within ``timeout`` (of each start)."""
        attempt = 1
        while not self._answers(timeout):
            taken = self._taken_port()
            if taken is None or attempt == PORT_TRIES:
                raise MiyaqError(f"node exited early:\n{self.log_tail()}")
            attempt += 1
            logger.warning("node on port %d: port %d (%s) was taken before it bound it; starting it again on "
                           "fresh ports (start %d of %d; its log: %s)", self.port, taken[0], taken[1], attempt,
                           PORT_TRIES, self.log_path)
            self._use(self._pick())
            self.start()
        return self

    def _answers(self, timeout: float) -> bool:
        """True once the node answers, False if it exited first."""
        client = Client(self.endpoint, submit_timeout=2, request_timeout=1)
        try:
            deadline = monotonic() + timeout
            while True:
                if not self.alive():
                    return False
                try:
                    client.status()
                    return True
                except MiyaqError:
                    if monotonic() > deadline:
                        raise Timeout(f"node on {self.endpoint} not ready:\n{self.log_tail()}") from None
        finally:
            client.close(flush=False)

    def _taken_port(self) -> tuple[int, str] | None:
        """(port, what for) if the node exited at start because another
        process held one of the ports the harness picked for it."""
        lines = [line for line in self.log_tail(5).splitlines() if line.strip()]
        if self.exit_code != 2 or not lines or not lines[-1].startswith("miyaq: error: "):
            return None
        taken = port_in_use(lines[-1])
        return taken if taken is not None and taken[0] in self._picked else None


class WorkerProc(Proc):
    def __init__(self, app: str, endpoints: list[str], concurrency: int = 4, extra: list[str] | None = None,
                 **kw: Any) -> None:
        super().__init__(["worker", app, "--connect", ",".join(endpoints), "--concurrency", str(concurrency),
                          "--heartbeat", "0.25", "--grace", "5", *(extra or [])],
                         name=f"worker-{app.replace(':', '_')}-{id(self)}", **kw)
