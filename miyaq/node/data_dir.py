"""A node's data dir: made owner-only (:func:`prepare_data_dir`), and which cluster
it belongs to.

Every task's payload is in the log's files, so a data dir the node makes
is 0700 whatever the umask, and its log's segments and snapshots 0600
(before 2026-12-06 they had the umask's modes: under ``umask 022`` every
local user could read every payload). A data dir that exists is the
operator's (a mount point, a volume a group shares): its mode is left as
it is, with a warning at start when others may read or write it.

Which cluster a data dir belongs to: a clustered node's log holds copies
of tasks the other holders of its cluster hold too.

Started with another cluster's data dir -- a typo in ``MIYAQ_CLUSTER``
during a rolling change, a directory restored to the wrong machine -- a
node would replay those copies into a ring of its own and run them, while
their own cluster ran them as well: the rolling audit of 2026-12-06 saw
all 215 tasks such a node held that came due run twice. So a clustered
node writes its cluster's name in the file :data:`CLUSTER_FILE` of its
data dir once the log is open (its LOCK held), and a node refuses at start
a data dir that names another cluster -- or any cluster, when it runs
standalone. A data dir of a standalone node (no such file) may join a
cluster: its tasks are held nowhere else.
"""
from __future__ import annotations

import logging
import os
import stat

from miyaq.config import NodeConfig
from miyaq.errors import ConfigError
from miyaq.runtime.small_files import read_by_others, read_small_file
from miyaq.store.log_files import fsync_dir

logger = logging.getLogger(__name__)

CLUSTER_FILE = "CLUSTER"
"""The name of the file that names a data dir's cluster (one line)."""
MAX_CLUSTER_FILE = 4096


def prepare_data_dir(data_dir: str) -> None:
    """Make ``data_dir`` 0700 (its missing parents with the umask's modes),
    or, if it exists, warn when users other than this process's may read or
    write it: any bit for others, or a group bit for a group this process
    is not in (:func:`~miyaq.runtime.small_files.read_by_others`). An
    existing one's mode is never changed. ``OSError`` when it cannot be
    made; something there that is not a directory is left for the log to
    refuse by name."""
    parent = os.path.dirname(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(data_dir, 0o700)
    except FileExistsError:
        info = os.stat(data_dir)
        if stat.S_ISDIR(info.st_mode) and read_by_others(info):
            logger.warning("data dir %s is open to others (mode %o, group %d): every task's payload is in its "
                           "files; chmod 700 it", data_dir, stat.S_IMODE(info.st_mode), info.st_gid)
        return
    os.chmod(data_dir, 0o700)      # exactly: a umask may have taken the owner's bits too


def cluster_of(data_dir: str) -> str | None:
    """The cluster ``data_dir`` belongs to, or None (a standalone node's, a
    new one, or one of a build before 2026-12-06). ConfigError when the file
    is there but cannot be read as one."""
    path = os.path.join(data_dir, CLUSTER_FILE)
    try:
        raw = read_small_file(path, MAX_CLUSTER_FILE, "the data dir's cluster file")
    except (FileNotFoundError, NotADirectoryError):     # no such file, or no such directory yet
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} does not name a cluster (it is not UTF-8 text)") from None
    if not name:
        raise ConfigError(f"{path} is empty: it names the cluster whose tasks the data dir holds")
    return name


def check_cluster(config: NodeConfig) -> None:
    """ConfigError when ``config``'s data dir belongs to another cluster than
    the one the node joins (or to a cluster at all, for a standalone node)."""
    owner = cluster_of(config.data_dir)
    joining = config.cluster if config.zk else None
    if owner is None or owner == joining:
        return
    now = f"cluster {joining!r}" if joining is not None else "standalone (no --zk)"
    raise ConfigError(
        f"data dir {config.data_dir} holds the tasks of cluster {owner!r} (its {CLUSTER_FILE} file), and this node "
        f"starts {now}: its copies would run in both. Start it with --cluster {owner} (MIYAQ_CLUSTER), or give "
        f"it an empty --data-dir (drain it first with `miyaq leave` so cluster {owner!r} keeps every task); to "
        f"use these tasks anyway, delete {os.path.join(config.data_dir, CLUSTER_FILE)} (tasks cluster {owner!r} "
        "still holds may then run twice)")


def record_cluster(config: NodeConfig) -> None:
    """Write the cluster's name in the data dir of a clustered node (once:
    the file is left as it is when it names it already). Atomic and
    durable: a file beside it, fsynced, renamed, the directory fsynced."""
    if not config.zk or cluster_of(config.data_dir) == config.cluster:
        return
    path = os.path.join(config.data_dir, CLUSTER_FILE)
    temporary = path + ".tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, config.cluster.encode("utf-8") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        fsync_dir(config.data_dir)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
