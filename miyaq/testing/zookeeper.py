"""A throwaway ZooKeeper server for tests and ``miyaq dev-cluster`` (standalone,
or one member of a :class:`~miyaq.testing.zk_ensemble.ZooKeeperEnsemble`).

Constraints:

* Runs Debian's ZooKeeper (``apt-get install zookeeper``: the jars in
  ``/usr/share/java`` and ``java``) as a child process, listening on
  127.0.0.1 (or the ``host`` given: the chaos harness runs servers in
  network namespaces) on a free port, with its config, data and log in a temporary
  directory. Missing jars or java raise ``MiyaqError`` that says how to
  install them.
* Config for fast tests: ``tickTime=500``, ``minSessionTimeout=1000``
  (sessions as short as 1 s), admin server off, four-letter words
  ``ruok,srvr,stat,mntr`` allowed. ``start`` waits until ``ruok`` answers
  ``imok`` and ``srvr`` reports a mode (ruok alone answers a little before
  the server accepts sessions).
* ``restart`` keeps the port and the data, so clients reconnect (and keep
  their sessions if they come back within the session timeout).
* ``launcher``: a command the server's command line is appended to, which
  must ``exec`` it keeping the pid (``miyaq bench`` passes its
  :mod:`miyaq.bench.launch` shim, so the server dies with the bench).
* The server's stdout/stderr go to ``zookeeper.log`` in its directory;
  :meth:`ZooKeeperServer.log_text` returns a bounded tail of it.
* No pytest import: the CLI uses this module too. Calls block the calling
  thread (``subprocess``, ``time.sleep``); in a gevent program, call them
  before the event loop matters or from a thread pool.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from miyaq.cluster.zk_probe import four_letter_word
from miyaq.errors import MiyaqError, Timeout
from miyaq.runtime.clock import monotonic
from miyaq.runtime.endpoints import url_host
from miyaq.testing import ports

logger = logging.getLogger(__name__)

JAR_DIR = Path("/usr/share/java")
_REQUIRED_JARS = ("zookeeper.jar", "zookeeper-jute.jar", "slf4j-api.jar")
# Jars the server needs at run time; slf4j-simple sends its log to stderr.
_OPTIONAL_JARS = (
    "slf4j-simple.jar",
    "netty-handler.jar",
    "netty-common.jar",
    "netty-buffer.jar",
    "netty-transport.jar",
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-epoll.jar",
    "netty-transport-native-unix-common.jar",
    "metrics-core.jar",
    "snappy-java.jar",
    "commons-cli.jar",
)
_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
_INSTALL_HINT = "install it with: apt-get install -y zookeeper (as root; it brings Java)"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` (:func:`miyaq.testing.ports.free_port`)."""
    return ports.free_port(host=host)


def _client_port_taken(run: str, host: str, port: int) -> bool:
    """Whether the log of one run, ``run``, says the server could not bind its
    client port ``port`` because it is in use (the line binding it, then a
    ``BindException``: ZooKeeper 3.8 exits with code 1 so)."""
    binding = run.find(f"binding to port /{host}:{port}")
    return binding >= 0 and "java.net.BindException: Address already in use" in run[binding:]


def find_installation(jar_dir: Path = JAR_DIR, java: str | None = None) -> tuple[str, str]:
    """Return ``(java, classpath)`` or raise ``MiyaqError`` saying what is missing."""
    java_path = java or shutil.which("java")
    missing = [name for name in _REQUIRED_JARS if not (jar_dir / name).is_file()]
    if java_path is None or missing:
        what = []
        if java_path is None:
            what.append("java is not on PATH")
        if missing:
            what.append(f"missing {', '.join(missing)} in {jar_dir}")
        raise MiyaqError(f"ZooKeeper is not installed ({'; '.join(what)}); {_INSTALL_HINT}")
    jars = [jar_dir / name for name in _REQUIRED_JARS + _OPTIONAL_JARS if (jar_dir / name).is_file()]
    return java_path, os.pathsep.join(str(j) for j in jars)


class ZooKeeperServer:
    """One ZooKeeper on 127.0.0.1 (or ``host``), in its own temporary directory.

    Standalone by default. With ``quorum`` (``(myid, quorum port, election
    port, host)`` for every server of an ensemble) and its own ``myid`` it is one
    member of an ensemble (:class:`~miyaq.testing.zk_ensemble.ZooKeeperEnsemble`
    builds those); such a member serves only while a majority runs.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        workdir: str | os.PathLike[str] | None = None,
        tick_time: int = 500,
        min_session_timeout: int = 1000,
        max_session_timeout: int = 30000,
        jar_dir: str | os.PathLike[str] = JAR_DIR,
        java: str | None = None,
        heap_mb: int = 256,
        myid: int | None = None,
        quorum: Sequence[tuple[int, int, int, str]] = (),
        host: str = "127.0.0.1",
        launcher: Sequence[str] = (),
    ) -> None:
        if quorum and (myid is None or myid not in {sid for sid, _, _, _ in quorum}):
            raise MiyaqError(f"an ensemble member needs its myid among the quorum's, got {myid!r}")
        self.host = host
        self._myid = myid
        self._quorum = tuple(quorum)
        self._port = port
        self._own_dir = workdir is None
        self._dir = Path(workdir) if workdir is not None else None
        self._tick_time = tick_time
        self._min_session = min_session_timeout
        self._max_session = max_session_timeout
        self._jar_dir = Path(jar_dir)
        self._java = java
        self._heap_mb = heap_mb
        self._launcher = list(launcher)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties -------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise MiyaqError("the ZooKeeper server has no port until it is started")
        return self._port

    @property
    def hosts(self) -> str:
        """The kazoo connection string, ``HOST:PORT`` (an IPv6 address bracketed)."""
        return f"{url_host(self.host)}:{self.port}"

    @property
    def workdir(self) -> Path:
        if self._dir is None:
            raise MiyaqError("the ZooKeeper server has no directory until it is started")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.workdir / "zookeeper.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------

    def start(self, timeout: float = 20.0, *, wait_serving: bool = True,
              cancelled: Callable[[], bool] = lambda: False) -> ZooKeeperServer:
        """Start the server and wait until it serves clients (``wait_serving``)
        or only until its process answers ``imok`` (an ensemble member that
        may have no quorum yet) -- or until ``cancelled()`` (asked to stop:
        the process runs on, for :meth:`stop`).

        A standalone server whose client port was picked here (no ``port``
        given) and that exits because another process took that port before
        it bound it is started again on a freshly picked one, up to
        :data:`~miyaq.testing.ports.PORT_TRIES` starts, with a WARNING; a
        port the caller named, or an ensemble member's, fails the start."""
        if self.running:
            return self
        picked = self._port is None and not self._quorum
        for attempt in range(1, ports.PORT_TRIES + 1):
            if self._start_once(timeout, wait_serving, cancelled, retry=picked and attempt < ports.PORT_TRIES):
                return self
            logger.warning("ZooKeeper: port %d was taken before it bound it; starting it again on a fresh port "
                           "(start %d of %d)", self._port, attempt + 1, ports.PORT_TRIES)
            self._port = free_port(self.host)
        raise AssertionError("unreachable: the last start returned or raised")

    def _start_once(self, timeout: float, wait_serving: bool, cancelled: Callable[[], bool], retry: bool) -> bool:
        """One start (see :meth:`start`): True once started, False if it exited
        because its client port was taken and ``retry``; raises otherwise."""
        java, classpath = find_installation(self._jar_dir, self._java)
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="miyaq-zk-"))
        if self._port is None:
            self._port = free_port(self.host)
        config = self._write_config()
        command = [
            *self._launcher,
            java,
            f"-Xmx{self._heap_mb}m",
            "-XX:+UseSerialGC",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
            "-cp",
            classpath,
            _MAIN,
            str(config),
        ]
        marker = f"--- miyaq: starting ZooKeeper on {self.hosts} ---"
        with open(self.log_path, "ab") as log:
            log.write(f"{marker}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
            )
        logger.info("ZooKeeper starting on %s (pid %s, dir %s)", self.hosts, self._proc.pid, self._dir)
        deadline = monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                run = self.log_text().rpartition(marker)[2]
                if retry and _client_port_taken(run, self.host, self.port):
                    return False
                raise MiyaqError(
                    f"ZooKeeper exited with code {code} during start; log tail:\n{self.log_text(4000)}"
                )
            if self.serving() if wait_serving else self.ruok():
                logger.info("ZooKeeper %s on %s", "ready" if wait_serving else "up", self.hosts)
                return True
            if cancelled():
                return True
            if monotonic() >= deadline:
                self.kill()
                raise Timeout(
                    f"ZooKeeper on {self.hosts} did not {'serve' if wait_serving else 'answer ruok'} "
                    f"within {timeout:g}s; log tail:\n{self.log_text(4000)}"
                )
            time.sleep(0.1)

    def _write_config(self) -> Path:
        """Write ``zoo.cfg`` (and ``myid`` for an ensemble member); return the config's path."""
        assert self._dir is not None
        data_dir = self._dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self._tick_time}",
            f"minSessionTimeout={self._min_session}",
            f"maxSessionTimeout={self._max_session}",
            f"dataDir={data_dir}",
            f"clientPort={self._port}",
            f"clientPortAddress={self.host}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr,stat,mntr",
        ]
        if self._quorum:
            (data_dir / "myid").write_text(f"{self._myid}\n")
            # initLimit/syncLimit in ticks: 5 s to join a leader, 2.5 s to stay in sync.
            lines += ["initLimit=10", "syncLimit=5", "reconfigEnabled=false"]
            lines += [f"server.{sid}={host}:{peer}:{election}" for sid, peer, election, host in self._quorum]
        config = self._dir / "zoo.cfg"
        config.write_text("\n".join(lines) + "\n")
        return config

    def mode(self) -> str | None:
        """``standalone``, ``leader`` or ``follower`` while serving; ``None`` otherwise
        (not running, or an ensemble member without a quorum)."""
        if self._port is None:
            return None
        answer = four_letter_word(self.host, self._port, "srvr") or ""
        for line in answer.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def ruok(self) -> bool:
        """True when the server answers ``imok``."""
        if self._port is None:
            return False
        return four_letter_word(self.host, self._port, "ruok") == "imok"

    def serving(self) -> bool:
        """True when the server answers ``imok`` and serves client requests."""
        return self.ruok() and self.mode() is not None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. Keeps the data."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL at once (a crash). Keeps the data."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("ZooKeeper pid %s ignored signal %s; killing it", proc.pid, sig)
                proc.kill()
                proc.wait(10)
        self._proc = None
        logger.info("ZooKeeper on %s stopped (exit %s)", self.hosts, proc.returncode)

    def restart(self, timeout: float = 20.0, *, kill: bool = False) -> ZooKeeperServer:
        """Stop (or kill) and start again on the same port with the same data."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove its directory if this object made it."""
        self.stop()
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def log_text(self, max_bytes: int = 64 * 1024) -> str:
        """The last ``max_bytes`` of the server's log (empty if there is none)."""
        if self._dir is None:
            return ""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - max_bytes))
                data = log.read()
        except OSError:
            return ""
        text = data.decode("utf-8", "replace")
        if size > max_bytes:
            text = text.split("\n", 1)[-1]
        return text

    def __enter__(self) -> ZooKeeperServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        port = self._port if self._port is not None else "?"
        return f"<ZooKeeperServer {self.host}:{port} {state}>"


def expire_session(hosts: str, client: Any, timeout: float = 10.0) -> None:
    """Expire ``client``'s ZooKeeper session for real, as the server sees it.

    Opens a second connection with the victim's session id and password and
    closes it: the server ends the session, the victim's ephemeral znodes
    vanish and the victim sees LOST. Waits until the victim has noticed (its
    session id changed or it is LOST), or raises ``Timeout``.
    """
    from kazoo.client import KazooClient
    from kazoo.protocol.states import KazooState

    session_id, password = client.client_id
    handler = type(client.handler)()
    twin = KazooClient(hosts=hosts, client_id=(session_id, password), handler=handler)
    twin.start(timeout=timeout)
    twin.stop()
    twin.close()
    sleep = client.handler.sleep_func
    deadline = monotonic() + timeout
    while True:
        current = client.client_id
        if client.state == KazooState.LOST or (current is not None and current[0] != session_id):
            logger.info("expired ZooKeeper session 0x%x", session_id)
            return
        if monotonic() >= deadline:
            raise Timeout(f"session 0x{session_id:x} was not seen to expire within {timeout:g}s")
        sleep(0.02)
