"""The process's open files: its limit, and how many it has open.

Every connection a node accepts is a file descriptor. Many systems give a
process a soft limit of 1,024 open files and a much higher hard limit. A
node at its soft limit cannot accept: libzmq's I/O thread then retries
``accept`` in a tight loop (a core busy for as long as it lasts), clients
and workers that try to connect time out, and nothing says why. So:

* :func:`prepare_server` lifts the soft limit to the hard one, as Go's
  runtime and many servers do, for ``miyaq node`` (never for a worker,
  whose handlers are the application's code, nor for an application's
  process that merely uses the client), and refuses to start a node below
  ``MIN_LIMIT``;
* :func:`open_count` says how many are open (``/proc/self/fd``; None where
  there is no ``/proc``), so a node can say, in its log and STATUS, that it
  is near the limit (:mod:`miyaq.node.open_files`), and
  :func:`open_files_hint` adds the count and the limit to an error that
  may be for want of a descriptor (a worker's or client's socket).
"""
from __future__ import annotations

import errno
import logging
import os
import resource

from miyaq.errors import ConfigError

logger = logging.getLogger(__name__)

#: Below this soft limit a node warns at start: it holds about that many
#: connections (clients, workers, peers) before it refuses the next ones.
LOW_LIMIT = 4096

#: Below this limit a node does not start (a clear error, not an abort).
MIN_LIMIT = 64

#: The most the soft limit is raised to when the hard limit is "unlimited"
#: (the kernel refuses more than ``fs.nr_open``, 1,048,576 by default).
CEILING = 1 << 20


def soft_limit() -> int | None:
    """The soft limit on open files (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_soft_limit() -> tuple[int | None, int | None]:
    """Raise the soft limit on open files to the hard limit (at most
    ``CEILING`` when that is unlimited). Returns the soft limit (before,
    after); never raises: a limit that cannot be raised is kept."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else hard
    before = None if soft == resource.RLIM_INFINITY else soft
    if before is None or before >= target:
        return before, before
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        logger.debug("could not raise the open files limit from %d to %d: %s", before, target, exc)
        return before, before
    return before, target


def room_for(files: int) -> bool:
    """Can this process open ``files`` more files? (True when it cannot be told.)"""
    count, limit = open_count(), soft_limit()
    return count is None or limit is None or count + files <= limit


def open_files_hint(exc: BaseException) -> str:
    """For an error that may be a lack of file descriptors: how many are
    open against the limit, and what to look at ("" for any other error)."""
    if getattr(exc, "errno", None) not in (errno.EMFILE, errno.ENFILE):
        return ""
    count, limit = open_count(), soft_limit()
    held = f"{count} files open of a limit of {limit}" if count is not None and limit is not None else "at its limit"
    return (f" ({held}: does the code it runs leave files or connections open? raise the limit with ulimit -n, "
            "systemd's LimitNOFILE or docker's --ulimit nofile)")


def prepare_server(what: str) -> None:
    """For a server process miyaq owns: raise the soft limit
    (:func:`raise_soft_limit`, logged), and refuse to start below
    ``MIN_LIMIT`` -- gevent's loop itself aborts the process when it cannot
    make its pipes. ConfigError then, naming the limit and how to raise it."""
    before, after = raise_soft_limit()
    if after != before:
        logger.info("%s: open files limit raised from %d to %d (the hard limit)", what, before, after)
    if after is not None and after < MIN_LIMIT:
        raise ConfigError(f"a {what} needs to open at least {MIN_LIMIT} files, and this process may open "
                          f"{after} (its limit on open files): raise it (ulimit -n, systemd's LimitNOFILE, "
                          "docker's --ulimit nofile)")


def open_count() -> int | None:
    """How many files this process has open: the soft limit when not one
    more can be opened (not even to count them), None where they cannot be
    counted (no ``/proc``)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1      # less the one listdir used
    except OSError as exc:
        return soft_limit() if exc.errno in (errno.EMFILE, errno.ENFILE) else None
