"""Someone else's cluster (``miyaq chaos --zk HOSTS --cluster NAME``).

The members are read from ZooKeeper (:class:`~miyaq.cluster.ring_admin.RingAdmin`).
The run starts only its own workers (for its own queue, ``miyaq-chaos``,
which a deployment's workers never consume) and faults only what it can
reach safely:

* A member whose service endpoint is an address of this machine is
  matched to its process through ``/proc`` (the pid listening on its
  port). Such nodes can be killed (``kill``, ``leader``) and paused
  (``pause``). A killed node is restarted with the command line, working
  directory and environment it had (so with its own ``--data-dir``),
  detached from the run: it keeps running after the run ends, its output
  in ``<out>/<node>.log``. If something else (systemd, a supervisor)
  restarted it first, the run adopts that process instead.
* Members on other machines are only observed.
* Never offered: ``zk`` (not ours to stop), ``wipe`` (it would destroy a
  deployment's data), ``partition``/``isolate`` (they need the run's own
  namespaces).

Reading ``/proc`` of another user's process needs the same user or root.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from typing import Any

from ..cluster.ring_admin import RingAdmin
from ..errors import ConfigError, MiyaqError
from .cluster import LocalCluster, ring_whole
from .nodespec import NodeSpec

logger = logging.getLogger(__name__)

REAP_WAIT = 10.0


def is_local(host: str) -> bool:
    """True when ``host`` is an address of this machine (it can be bound)."""
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        return False
    try:
        with socket.socket() as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (any address), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


class LocalProcess:
    """A node process this run did not start: enough of :class:`.procs.Child`
    for the nemesis (alive, pid, paused, signal, kill, start)."""

    def __init__(self, name: str, pid: int, log_path: str) -> None:
        self.name = name
        self.log_path = log_path
        self.paused = False
        self._pid: int | None = pid
        self.argv = _read_nul(f"/proc/{pid}/cmdline")
        self.cwd = os.readlink(f"/proc/{pid}/cwd")
        env = _read_nul(f"/proc/{pid}/environ")
        self.env = dict(e.split("=", 1) for e in env if "=" in e)
        if not self.argv:
            raise MiyaqError(f"cannot read the command line of node {name} (pid {pid})")

    @property
    def pid(self) -> int | None:
        return self._pid

    def alive(self) -> bool:
        if self._pid is None:
            return False
        try:
            with open(f"/proc/{self._pid}/stat", encoding="ascii") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False

    def signal(self, sig: int) -> bool:
        if not self.alive():
            return False
        assert self._pid is not None
        os.kill(self._pid, sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            self.paused = sig == signal.SIGSTOP
        return True

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        deadline = time.monotonic() + REAP_WAIT
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.paused = False

    def stop(self, grace: float = 0.0) -> int | None:
        """Never stops a deployment's node: only resumes it if paused."""
        if self.paused:
            self.signal(signal.SIGCONT)
        return None

    def restart(self, port: int) -> None:
        """Start the node again as it was started, unless something did already."""
        adopted = listening_pid(port)
        if adopted is not None:
            self._pid = adopted
            logger.info("node %s was restarted by someone else (pid %d); adopting it", self.name, adopted)
            return
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._pid = proc.pid
        logger.info("node %s restarted (pid %d), detached from this run", self.name, proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        return f"(node {self.name} was not started by this run)"


def _read_nul(path: str) -> list[str]:
    with open(path, "rb") as fh:
        return [p.decode("utf-8", "surrogateescape") for p in fh.read().split(b"\0") if p]


class ExternalCluster(LocalCluster):
    """A deployment's cluster (see the module docstring). Reuses the local
    cluster's views (ring, whole, stats) and worker handling."""

    def __init__(self, run_dir: str, zk: str, cluster: str, *, workers: int = 2, concurrency: int = 32,
                 replicas: int = 2, pool: str = "gevent") -> None:
        super().__init__(run_dir, nodes=0, replicas=replicas, workers=workers, concurrency=concurrency,
                         name=cluster, pool=pool)
        self.zk_hosts = zk
        self._local: dict[str, LocalProcess] = {}
        self.capabilities = {"worker"}

    def start(self) -> None:
        """Read the members, find the local ones, start our workers."""
        os.makedirs(self.run_dir, exist_ok=True)
        with RingAdmin(self.zk_hosts, self.name, connect_timeout=10.0, timeout=10.0) as admin:
            members = admin.status()["members"]
        for i, (node_id, m) in enumerate(sorted(members.items())):
            if not m.get("in_ring") or not m.get("service"):
                continue
            host, port = m["service"].removeprefix("tcp://").rsplit(":", 1)
            self.specs[node_id] = NodeSpec(node_id, i, host, int(port), "", None)
            pid = listening_pid(int(port)) if is_local(host) else None
            if pid is not None:
                self._local[node_id] = LocalProcess(node_id, pid, os.path.join(self.run_dir, f"{node_id}.log"))
        if not self.specs:
            raise ConfigError(f"no node of cluster {self.name!r} is in the ring at {self.zk_hosts}")
        if self._local:
            self.capabilities |= {"kill", "pause", "leader"}
        logger.info("external cluster %s: nodes %s, local (faultable) %s", self.name, sorted(self.specs),
                    sorted(self._local))
        self.procs = dict(self._local)    # type: ignore[arg-type]
        for _ in range(self.worker_count):
            self.start_worker()

    def up(self, node_id: str) -> bool:
        proc = self._local.get(node_id)
        return proc is not None and proc.alive() and not proc.paused

    def whole(self) -> tuple[bool, str]:
        for node_id, proc in self._local.items():
            if not proc.alive() or proc.paused:
                return False, f"{node_id} is not running"
        return self._whole_by_answers()

    def _whole_by_answers(self) -> tuple[bool, str]:
        return ring_whole(self.client, list(self.specs))

    def ring(self) -> dict[str, Any] | None:
        for node_id in self.specs:
            try:
                return self.client(node_id).ring()
            except MiyaqError:
                continue
        return None

    def live_endpoints(self) -> list[str]:
        live = []
        for node_id, spec in self.specs.items():
            try:
                self.client(node_id).status()
            except MiyaqError:
                continue
            live.append(spec.endpoint)
        return live

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for node_id in self.specs:
            try:
                status = self.client(node_id).status()
            except MiyaqError:
                continue
            out[node_id] = {"cluster": status.get("cluster"), "totals": status.get("totals")}
        return out

    def start_node(self, node_id: str, wipe: bool = False) -> Any:
        if wipe:
            raise ConfigError("the wipe fault is never run against an external cluster")
        proc = self._local[node_id]
        proc.restart(self.specs[node_id].port)
        return proc

    def close(self) -> None:
        """Our workers and probe clients; resume any node we paused. The
        deployment's nodes keep running."""
        for proc in self._local.values():
            proc.stop()
        self.procs = {}
        super().close()
