"""A real N-server ZooKeeper ensemble on loopback, for tests, ``miyaq dev-cluster`` and chaos.

Constraints:

* Servers are numbered by index ``0 .. n-1`` (their ZooKeeper ``myid`` is
  ``index + 1``). Each is a :class:`~miyaq.testing.zookeeper.ZooKeeperServer`
  in ``<workdir>/zk<index>`` with its own client port, quorum port and
  election port on 127.0.0.1 (or on its own address, ``addresses``: the
  chaos harness runs each server in a network namespace of its own, with a
  ``java`` per server that enters it), all chosen free at construction and kept for
  the ensemble's life, so a restarted server rejoins with its data and
  clients reconnect to the same :attr:`ZooKeeperEnsemble.hosts`.
* :meth:`ZooKeeperEnsemble.start` returns once every server serves (a leader
  was elected and everyone follows it); ``start(i)`` returns once that
  server's process answers, and -- when a majority of the ensemble is
  running -- once it serves. ``kill(i)`` is a crash (SIGKILL), ``stop(i)``
  a clean stop (SIGTERM), ``stop()`` stops all; all keep the data.
* :meth:`ZooKeeperEnsemble.leader` asks each server with the four-letter
  word ``srvr``; a server without a quorum answers "not currently serving".
* Calls block the calling thread (``subprocess``, ``time.sleep``); in a
  gevent program call them from a thread pool. No pytest import.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from miyaq.errors import ConfigError, MiyaqError, Timeout
from miyaq.runtime.clock import monotonic
from miyaq.testing.zookeeper import JAR_DIR, ZooKeeperServer, free_port

logger = logging.getLogger(__name__)


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class ZooKeeperEnsemble:
    """``n`` ZooKeeper servers forming one ensemble on 127.0.0.1 (``n`` >= 1; 3 or 5 make sense).

    ``workdir`` holds one directory per server (a temporary one, removed by
    :meth:`close`, when not given). ``java`` may name a wrapper to launch the
    JVMs with (the chaos harness uses one that dies with its parent), or one
    per server. ``addresses`` (one per server) puts each server on its own
    address instead of 127.0.0.1. The other settings are those of
    :class:`ZooKeeperServer`.
    """

    def __init__(
        self,
        n: int = 3,
        workdir: str | os.PathLike[str] | None = None,
        *,
        tick_time: int = 500,
        min_session_timeout: int = 1000,
        max_session_timeout: int = 30000,
        jar_dir: str | os.PathLike[str] = JAR_DIR,
        java: str | Sequence[str | None] | None = None,
        heap_mb: int = 128,
        addresses: Sequence[str] | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 9:
            raise ConfigError(f"a ZooKeeper ensemble has 1 to 9 servers, not {n!r}")
        hosts = list(addresses) if addresses is not None else ["127.0.0.1"] * n
        javas = [java] * n if java is None or isinstance(java, str) else list(java)
        if len(hosts) != n or len(javas) != n:
            raise ConfigError(f"an ensemble of {n} needs {n} addresses and javas, not {len(hosts)} and {len(javas)}")
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="miyaq-zks-"))
        ports = _distinct_free_ports(3 * n)
        quorum = [(i + 1, ports[n + i], ports[2 * n + i], hosts[i]) for i in range(n)] if n > 1 else []
        self.servers = [
            ZooKeeperServer(
                ports[i], workdir=self.workdir / f"zk{i}", tick_time=tick_time,
                min_session_timeout=min_session_timeout, max_session_timeout=max_session_timeout,
                jar_dir=jar_dir, java=javas[i], heap_mb=heap_mb,
                myid=i + 1 if quorum else None, quorum=quorum, host=hosts[i],
            )
            for i in range(n)
        ]

    # -- what clients and the chaos harness read --------------------------------------

    @property
    def size(self) -> int:
        return len(self.servers)

    @property
    def pids(self) -> list[int | None]:
        """Each server's process id (``None`` while it is down)."""
        return [server.pid for server in self.servers]

    @property
    def majority(self) -> int:
        """Servers that must run for the ensemble to serve."""
        return self.size // 2 + 1

    @property
    def hosts(self) -> str:
        """The kazoo connection string of every server, ``127.0.0.1:P1,127.0.0.1:P2,...``."""
        return ",".join(server.hosts for server in self.servers)

    def running(self) -> list[int]:
        """Indexes of the servers whose process runs."""
        return [i for i, server in enumerate(self.servers) if server.running]

    def serving(self) -> list[int]:
        """Indexes of the servers that serve clients right now (they are in a quorum)."""
        return [i for i, server in enumerate(self.servers) if server.running and server.serving()]

    def leader(self) -> int | None:
        """Index of the server that is the ensemble's leader now; ``None`` without a quorum."""
        for i, server in enumerate(self.servers):
            if server.running and server.mode() in ("leader", "standalone"):
                return i
        return None

    # -- lifecycle ------------------------------------------------------------------

    def start(self, i: int | None = None, timeout: float = 60.0, *,
              cancelled: Callable[[], bool] = lambda: False) -> ZooKeeperEnsemble:
        """Start server ``i`` again (same ports, same data), or every server that is not running.

        For every server: wait until all serve under one leader. For one
        server: wait until it serves if a majority runs with it, else only
        until its process answers (it serves once a majority is back).
        Every wait ends early once ``cancelled()`` (``miyaq dev-cluster``
        asked to stop: it then stops what runs); before 2026-12-05 a Ctrl-C
        during an ensemble's start waited up to ``timeout`` for its quorum."""
        if i is not None:
            server = self._server(i)
            server.start(timeout, wait_serving=self.size == 1, cancelled=cancelled)
            if len(self.running()) >= self.majority:
                self._wait(server.serving, timeout, f"server {i} to serve", cancelled)
            return self
        for server in self.servers:
            if cancelled():
                return self
            if not server.running:
                server.start(timeout, wait_serving=self.size == 1, cancelled=cancelled)
        self._wait(self._quorum_of_everyone, timeout, "the ensemble to elect a leader and serve", cancelled)
        if cancelled():
            return self
        logger.info("ZooKeeper ensemble of %d serving on %s (leader: server %s)", self.size, self.hosts,
                    self.leader())
        return self

    def kill(self, i: int) -> None:
        """SIGKILL server ``i`` (a crash); its data stays."""
        self._server(i).kill()

    def stop(self, i: int | None = None, timeout: float = 10.0) -> None:
        """SIGTERM server ``i``, or every server (SIGKILL after ``timeout``); the data stays."""
        for server in [self._server(i)] if i is not None else self.servers:
            server.stop(timeout)

    def wait_for_quorum(self, timeout: float = 30.0, *, everyone: bool = False) -> int:
        """Wait until a leader serves (and, with ``everyone``, every running server);
        return the leader's index, or raise ``Timeout`` with the servers' log tails."""
        ready = self._quorum_of_everyone if everyone else (lambda: self.leader() is not None)
        self._wait(ready, timeout, "the ensemble to elect a leader and serve")
        leader = self.leader()
        assert leader is not None
        return leader

    def _quorum_of_everyone(self) -> bool:
        """A leader serves, and so does every running server."""
        return self.leader() is not None and set(self.serving()) == set(self.running())

    def close(self) -> None:
        """Stop every server; remove the directory if this object made it. Never raises."""
        for server in self.servers:
            try:
                server.stop()
            except Exception:  # pragma: no cover - best effort at teardown
                logger.exception("stopping %r failed", server)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self, max_bytes: int = 16 * 1024) -> str:
        """The tail of every server's log, each under a header."""
        return "\n".join(f"--- server {i} ({server.hosts}) ---\n{server.log_text(max_bytes)}"
                         for i, server in enumerate(self.servers))

    def __enter__(self) -> ZooKeeperEnsemble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ZooKeeperEnsemble {self.hosts} running={self.running()} leader={self.leader()}>"

    # -- internals ------------------------------------------------------------------

    def _server(self, i: int) -> ZooKeeperServer:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.size:
            raise ConfigError(f"no server {i!r} in an ensemble of {self.size} (0..{self.size - 1})")
        return self.servers[i]

    def _wait(self, done: Callable[[], bool], timeout: float, what: str,
              cancelled: Callable[[], bool] = lambda: False) -> None:
        deadline = monotonic() + timeout
        while not done() and not cancelled():
            if monotonic() >= deadline:
                raise Timeout(f"timed out after {timeout:g}s waiting for {what} "
                              f"(running {self.running()}, serving {self.serving()}); logs:\n{self.log_text(3000)}")
            if not self.running():
                raise MiyaqError(f"no ZooKeeper server is running while waiting for {what}")
            time.sleep(0.1)
