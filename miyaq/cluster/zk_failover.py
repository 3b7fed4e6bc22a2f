"""A node's registration in ZooKeeper, carried through a server's failover.

A node that starts while the ZooKeeper server it connected to goes down
(killed, restarted, a rolling upgrade of the ensemble) loses its
connection in the middle of registering: kazoo moves the session to
another server within the session timeout, but the operation in flight
fails (``ConnectionLoss``, which :class:`~miyaq.cluster.zk_store.ZnodeStore`
raises as ``Unavailable``). Before 2026-12-07 that ended the node's start
with ``miyaq: error: ZooKeeper at ...: ConnectionLoss`` (the chaos test of
the ensemble's faults: a node restarted 0.4 s before its server was
killed). The registration's steps are all idempotent -- paths made if
missing, ACLs set where they differ, reads, the member znode created or
found already ours (:meth:`ZnodeStore.register`), a join asked for only
if not asked already -- so they are run again until they pass, within the
node's ``zk_connect_timeout``. The one read that is not -- whether the
ring listed the node before it registered -- is made at the first try
only (a later one may find the ring its own join made).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from miyaq.errors import Unavailable
from miyaq.runtime import green, monotonic

logger = logging.getLogger("miyaq.cluster.zk_coordinator")

#: Seconds between two tries of the registration's steps.
REGISTER_RETRY = 0.25

#: Seconds between two WARNING lines of failed tries: the first failure is
#: said at once, later ones at most this often, with how many there were.
REGISTER_RETRY_LINES = 10.0


def through_failover(steps: Callable[[], None], within: float, node_id: str) -> None:
    """Run ``steps`` (idempotent ZooKeeper reads and writes) until they pass,
    again after each ``Unavailable`` until ``within`` seconds have passed
    (then that ``Unavailable`` is raised); any other error at once. At most
    ``within / REGISTER_RETRY`` tries, and a WARNING line for the first
    failure, then one every ``REGISTER_RETRY_LINES`` seconds at most
    (before 2026-12-07 a line each try: 40 over the default 10 s of
    ``zk_connect_timeout``, 14,400 over its largest, an hour)."""
    start = monotonic()
    deadline = start + within
    next_line = start
    failed = 0
    while True:
        try:
            steps()
            return
        except Unavailable as exc:
            failed += 1
            now = monotonic()
            if now + REGISTER_RETRY >= deadline:
                raise
            if now >= next_line:
                next_line = now + REGISTER_RETRY_LINES
                logger.warning("%s: ZooKeeper failed while registering (%s); trying again for up to %.0fs "
                               "(zk_connect_timeout): %d tr%s failed in %.0fs", node_id, exc.message, within,
                               failed, "y" if failed == 1 else "ies", now - start)
        green.sleep(REGISTER_RETRY)
