"""Where to connect when nothing says: arguments, environment, ``miyaq dev-cluster``'s file, defaults.

``miyaq dev-cluster`` writes :data:`STATE_FILE` in its working directory once
its ring is whole, and removes it when it stops. Commands run in that
directory -- the CLI, ``miyaq worker``, and ``miyaq.Client()`` /
``miyaq.App()`` created without endpoints -- take their defaults from it.
Precedence, highest first: an explicit argument, the environment
(``MIYAQ_CONNECT``, ``MIYAQ_HTTP``, ``MIYAQ_ZK`` with ``MIYAQ_CLUSTER``,
``MIYAQ_KEY`` with ``MIYAQ_SERVER_KEY``), the file, the built-in default. A
dev cluster started with ``--secure`` records the key its commands use (an
admin key, so one key serves producers, workers and operators) and the
nodes' public key. A file whose dev-cluster process is gone (killed
with SIGKILL) is ignored. Read when a command runs, never at import.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miyaq.errors import ConfigError
from miyaq.runtime.small_files import read_small_file

STATE_FILE = ".miyaq-dev.json"
DEFAULT_CONNECT = "tcp://127.0.0.1:7450"
DEFAULT_HTTP = "http://127.0.0.1:8088"
DEFAULT_ZK = "127.0.0.1:2181"
DEFAULT_CLUSTER = "default"


@dataclass(frozen=True)
class DevState:
    """What a running ``miyaq dev-cluster`` started."""

    pid: int
    zk: str
    cluster: str
    connect: list[str]
    http: list[str]
    path: Path
    key: str | None = None          # with --secure: the secret certificate commands here use
    server_key: str | None = None   # ... and the nodes' public certificate

    @property
    def source(self) -> str:
        return f"{self.path} (miyaq dev-cluster, pid {self.pid})"


STATE_BYTES = 64 * 1024
"""The largest state file read; a longer one is not miyaq's (ignored)."""
MAX_PID = 2**22
"""Past the highest pid Linux hands out (``pid_max`` is at most 2**22)."""


def _alive(pid: int) -> bool:
    """True when ``pid`` names a running process. Nonsense (0, negative, past
    :data:`MAX_PID`) is dead: ``kill(0)`` / ``kill(-1)`` signal groups and
    always succeed, and a huge pid raised ``OverflowError``."""
    if not 0 < pid < MAX_PID:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def read_state(directory: str | os.PathLike[str] | None = None) -> DevState | None:
    """The dev cluster recorded in ``directory`` (default: the current one), if it still runs.

    Never blocks or raises: the file is read only if it is a regular file of
    at most :data:`STATE_BYTES` (a FIFO there hung every command before
    2026-12-05); anything unusable counts as no dev cluster -- a current
    directory deleted under the process too (``os.getcwd()`` raises there:
    until review32, 2026-12-07, every client made without a key, and every
    command, ended with a FileNotFoundError traceback)."""
    try:
        path = Path(directory or os.getcwd()) / STATE_FILE
        data = json.loads(read_small_file(str(path), STATE_BYTES, "a miyaq dev-cluster state file"))
        state = DevState(pid=int(data["pid"]), zk=str(data["zk"]), cluster=str(data["cluster"]),
                         connect=[str(e) for e in data["connect"]], http=[str(u) for u in data["http"]],
                         path=path, key=_optional(data.get("key")), server_key=_optional(data.get("server_key")))
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        return None
    return state if state.connect and _alive(state.pid) else None


def _optional(value: Any) -> str | None:
    return str(value) if value else None


def write_state(directory: str | os.PathLike[str], *, pid: int, zk: str, cluster: str, connect: list[str],
                http: list[str], **extra: Any) -> Path:
    """Record a started dev cluster (atomically: readers never see half a file)."""
    path = Path(directory) / STATE_FILE
    tmp = path.with_name(f"{STATE_FILE}.{pid}.tmp")
    tmp.write_text(json.dumps({"pid": pid, "zk": zk, "cluster": cluster, "connect": connect, "http": http,
                               **extra}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def remove_state(directory: str | os.PathLike[str], pid: int) -> None:
    """Remove the file if it is still the one ``pid`` wrote. Never raises."""
    path = Path(directory) / STATE_FILE
    try:
        if json.loads(read_small_file(str(path), STATE_BYTES, "a state file")).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError, AttributeError, ConfigError):
        pass


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def default_connect(environ: Mapping[str, str] | None = None) -> tuple[list[str], str]:
    """(endpoints, where they came from) for a client or worker given none."""
    raw = _env(environ).get("MIYAQ_CONNECT", "")
    endpoints = [e.strip() for e in raw.split(",") if e.strip()]
    if endpoints:
        return endpoints, "MIYAQ_CONNECT"
    state = read_state()
    if state is not None:
        return list(state.connect), state.source
    return [DEFAULT_CONNECT], "the default endpoint"


def default_http(environ: Mapping[str, str] | None = None) -> str:
    """The HTTP gateway for ``miyaq queue`` given no ``--http``."""
    url = _env(environ).get("MIYAQ_HTTP", "")
    if url:
        return url
    state = read_state()
    if state is not None and state.http:
        return state.http[0]
    return DEFAULT_HTTP


def default_zk(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(ZooKeeper hosts, cluster name) for the ring commands given no ``--zk`` / ``--cluster``.

    The file's cluster name goes with the file's ZooKeeper only."""
    env = _env(environ)
    zk = env.get("MIYAQ_ZK", "")
    if zk:
        return zk, env.get("MIYAQ_CLUSTER") or DEFAULT_CLUSTER
    state = read_state()
    if state is not None:
        return state.zk, env.get("MIYAQ_CLUSTER") or state.cluster
    return DEFAULT_ZK, env.get("MIYAQ_CLUSTER") or DEFAULT_CLUSTER


def default_keys(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(secret certificate, the nodes' public certificate) for a client or
    worker given neither: ``MIYAQ_KEY``/``MIYAQ_SERVER_KEY``, else those of a
    ``--secure`` dev cluster started in this directory, else (None, None)."""
    env = _env(environ)
    key, server_key = env.get("MIYAQ_KEY") or None, env.get("MIYAQ_SERVER_KEY") or None
    if key or server_key:
        return key, server_key
    state = read_state()
    if state is not None and state.key and state.server_key:
        return state.key, state.server_key
    return None, None
