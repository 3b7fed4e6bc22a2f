"""A node joins no ring whose live members use another cluster key.

Every member publishes the fingerprint of its cluster key in its own
ephemeral member znode (:data:`~miyaq.cluster.zk_layout.CLUSTER_KEY_FIELD`:
a short hash of the public key, never the secret; ``"none"`` for a node
without keys). A starting node reads the live members' before it registers
(:func:`check_before_register`): a member with another fingerprint refuses
the start with ``ConfigError`` -- one line naming both fingerprints and what
to do -- and nothing is registered or joined. Before 2026-12-06 such a node
(``miyaq keys init`` run on a new machine instead of copying the key
directory) registered and auto-joined the ring although no peer handshake
with it could complete, and most submits then failed.

* A member that publishes no fingerprint (a build before 2026-12-06) is not
  compared: a rolling upgrade goes on as before; such a cluster is checked
  once every node runs this build.
* A registration of another fingerprint may be a stopped node's whose
  session the server has not expired yet (a node killed, then every node
  restarted with a new key): it is waited out for up to ``wait`` seconds,
  as :meth:`~miyaq.cluster.zk_store.ZnodeStore.register` waits out this
  node's own previous registration, before the start is refused. A
  cleanly stopped node's registration goes at once.
* Two nodes of different keys that start at the same moment may both pass
  that check: once registered, a node checks again
  (:func:`check_after_register`) and the one registered later refuses.

Constraints: blocking calls of the store (the calling greenlet waits),
made at start only; the node's own id is never compared (its entry is a
previous run's).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

from miyaq.cluster.zk_layout import NO_CLUSTER_KEY, PublishedKey, other_cluster_keys
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.errors import ConfigError
from miyaq.runtime import green, monotonic

__all__ = ["check_after_register", "check_before_register", "refusal"]

logger = logging.getLogger(__name__)

POLL = 0.2
"""Seconds between two reads of the members while waiting for registrations of another key to expire."""
NAMED = 5
"""Most members a refusal names (then "and N more")."""


def check_before_register(store: ZnodeStore, node_id: str, own: str, wait: float) -> None:
    """``ConfigError`` (:func:`refusal`) when a live member of ``store``'s
    cluster published another cluster key fingerprint than ``own``, still
    registered after ``wait`` seconds."""
    deadline = monotonic() + wait
    warned = False
    while True:
        others = other_cluster_keys(own, store.read_cluster_keys(), node_id)
        if not others:
            return
        if monotonic() >= deadline:
            raise ConfigError(refusal(node_id, store.layout.cluster, own, others))
        if not warned:
            warned = True
            logger.warning("%s: member(s) %s of cluster %s published another cluster key (%s) than this "
                           "node's (%s); waiting up to %gs in case they are stopped nodes whose registrations "
                           "have not expired yet, then refusing to start", node_id, _names(others),
                           store.layout.cluster, _fingerprints(others), describe(own), wait)
        green.sleep(POLL)


def check_after_register(store: ZnodeStore, node_id: str, own: str) -> None:
    """``ConfigError`` (:func:`refusal`) when a member registered before
    this node (whose znode is older than ours) published another cluster
    key fingerprint: one that started in the same moment and passed
    :func:`check_before_register` too. One registered after this node
    refuses itself."""
    published = store.read_cluster_keys()
    mine = published.get(node_id)
    if mine is None:
        return
    earlier: Mapping[str, PublishedKey] = {m: k for m, k in published.items() if k.created < mine.created}
    others = other_cluster_keys(own, earlier, node_id)
    if others:
        raise ConfigError(refusal(node_id, store.layout.cluster, own, others))


def refusal(node_id: str, cluster: str, own: str, others: Mapping[str, str]) -> str:
    """The one line that refuses ``node_id``'s start: both fingerprints and what to do."""
    return (f"{node_id} cannot join cluster {cluster}: its cluster key ({describe(own)}) is not that of the "
            f"live member(s) {_names(others)} ({_fingerprints(others)}): every node of a cluster needs the "
            f"same cluster key -- copy the cluster's key directory (node.key, node.key_secret) to this node "
            f"instead of running `miyaq keys init` there, or, to change the cluster key, stop every node "
            f"first and then start them all with the new one (docs/security.md)")


def describe(fingerprint: str) -> str:
    """A fingerprint as a refusal names it."""
    if fingerprint == NO_CLUSTER_KEY:
        return "none: started without --keys"
    return f"fingerprint {fingerprint}"


def _names(others: Mapping[str, str]) -> str:
    names = sorted(others)
    more = f" and {len(names) - NAMED} more" if len(names) > NAMED else ""
    return ", ".join(names[:NAMED]) + more


def _fingerprints(others: Mapping[str, str]) -> str:
    return "; ".join(describe(fp) for fp in sorted(set(others.values())))
