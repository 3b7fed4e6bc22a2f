"""Membership in ZooKeeper: this node's member znode, and who else is registered.

* :meth:`Registry.register` creates the node's ephemeral ``members/<id>``
  znode for the current session (waiting out a previous incarnation's).
* After a LOST session the znode is gone; the registry's greenlet creates it
  again in the new session. It does not write ``join`` again, so an
  operator's ``leave`` sticks until the node is restarted.
* :meth:`Registry.registered` is a cache of every member znode, refreshed by
  one greenlet whenever the ``members/`` watch fires or the session changes.
  Watch callbacks only set a flag (they run in kazoo's greenlet).
* Subscribers (:meth:`Registry.on_change`) are told, without arguments,
  when the cache or our registration changed; they must not block.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from kazoo.exceptions import KazooException

from miyaq.cluster.ring_view import Member
from miyaq.cluster.zk_session import Session, SessionEvent
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.errors import ConfigError, Forbidden, Unavailable
from miyaq.runtime import RESTART, Supervisor, green

logger = logging.getLogger(__name__)

RETRY = 0.5
"""Seconds between attempts while ZooKeeper does not answer."""
CONFLICT_RETRY = 5.0
"""Seconds between attempts while another live session holds our node id (or ZooKeeper refuses our credentials)."""


class Registry:
    """The member znode of ``member`` and the cache of all members, in ``store``'s cluster.

    ``wait`` bounds how long :meth:`register` waits for a previous
    incarnation's znode to expire before it calls the id taken.
    ``cluster_key`` is the fingerprint of the node's cluster key, written in
    its znode (:mod:`miyaq.cluster.zk_keys`; None: none written).
    """

    def __init__(self, session: Session, store: ZnodeStore, member: Member, supervisor: Supervisor,
                 *, part: str, wait: float, cluster_key: str | None = None) -> None:
        self.session = session
        self.store = store
        self.member = member
        self.cluster_key = cluster_key
        self.supervisor = supervisor
        self.part = part
        self.wait = wait
        self.registered_in = -1
        """The session generation our znode belongs to (-1: none yet)."""
        self._cache: dict[str, Member] = {}
        self._dirty = green.Event()
        self._subscribers: list[Callable[[], None]] = []

    @property
    def is_registered(self) -> bool:
        """True when our znode exists in the current, usable session."""
        return self.session.usable and self.registered_in == self.session.generation

    def registered(self) -> dict[str, Member]:
        """Every registered member, as last read."""
        return dict(self._cache)

    def on_change(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when the cache or our registration changed; must not block."""
        self._subscribers.append(fn)

    # -- lifecycle ----------------------------------------------------------------

    def register(self) -> None:
        """Create our member znode in this session (blocking; ``ConfigError`` if the id is taken)."""
        generation = self.session.generation
        self.store.register(self.member, wait=self.wait, cluster_key=self.cluster_key)
        self.registered_in = generation
        self._changed()

    def start(self) -> None:
        """Read the registry, watch ``members/`` and keep the cache fresh."""
        self._cache = self.store.read_registered()
        self.session.zk.ChildrenWatch(self.store.layout.members, self._on_members)
        self.supervisor.spawn(f"{self.part}:registry", self._loop, policy=RESTART)

    def on_session(self, event: SessionEvent) -> None:
        """Session subscriber: any change may mean a stale cache or a lost znode."""
        self._dirty.set()

    def stop(self) -> None:
        """Let the greenlet return (the session is closing)."""
        self._dirty.set()

    # -- kazoo callbacks (never block) ---------------------------------------------

    def _on_members(self, children: list[str]) -> bool | None:
        if self.session.closing:
            return False
        self._dirty.set()
        return None

    # -- the registry greenlet -----------------------------------------------------

    def _loop(self) -> None:
        """Re-register after a lost session and re-read ``members/`` when marked dirty."""
        session = self.session
        self._dirty.set()
        while not session.closing:
            self._dirty.wait()
            self._dirty.clear()
            if not session.usable:
                continue            # CONNECTED sets the flag again
            try:
                if self.registered_in != session.generation:
                    logger.info("%s: registering again in the new session", self.member.node_id)
                    self.register()
                self._cache = self.store.read_registered()
            except (Unavailable, KazooException) as exc:
                if session.closing:
                    return
                logger.warning("%s: reading the registry failed (%s); retrying", self.member.node_id, exc)
                self._retry_in(RETRY)
                continue
            except (ConfigError, Forbidden) as exc:
                logger.error("%s: cannot register: %s; retrying in %gs", self.member.node_id, exc, CONFLICT_RETRY)
                self._retry_in(CONFLICT_RETRY)
                continue
            self._changed()

    def _retry_in(self, delay: float) -> None:
        if not self._dirty.wait(delay):
            self._dirty.set()

    def _changed(self) -> None:
        for fn in list(self._subscribers):
            try:
                fn()
            except Exception:
                logger.exception("%s: registry subscriber %r failed", self.member.node_id, fn)
