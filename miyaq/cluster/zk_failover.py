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


def through_failover(steps: Callable[[], None], within: float, node_id: str) -> None:
    """Run ``steps`` (idempotent ZooKeeper reads and writes) until they pass,
    again after each ``Unavailable`` until ``within`` seconds have passed
    (then that ``Unavailable`` is raised); any other error at once. At most
    ``within / REGISTER_RETRY`` tries, a WARNING line each."""
    deadline = monotonic() + within
    while True:
        try:
            steps()
            return
        except Unavailable as exc:
            if monotonic() + REGISTER_RETRY >= deadline:
                raise
            logger.warning("%s: ZooKeeper failed while registering (%s); trying again", node_id, exc.message)
        green.sleep(REGISTER_RETRY)
