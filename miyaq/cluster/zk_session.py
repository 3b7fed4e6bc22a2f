"""One node's ZooKeeper session: the kazoo client, its state and its generation.

kazoo reports three states (PITFALLS.md, "kazoo / ZooKeeper"):

* SUSPENDED -- the connection is in doubt: the server went away, or the
  ensemble lost its quorum and no server will serve us. The session may
  still be alive on the servers (and our ephemeral znodes with it).
  :attr:`Session.suspended` is true until kazoo is CONNECTED again.
* LOST -- the servers ended the session (it expired while we were away, or
  it was closed); our ephemeral znodes are gone. :attr:`Session.generation`
  is bumped, so work tied to the old session (a registration, a campaign)
  can tell it is stale.
* CONNECTED -- after SUSPENDED the same session goes on (``RESUMED``);
  after LOST kazoo has made a new one (``RENEWED``).

Subscribers get one :class:`SessionEvent` per change, in order, from
kazoo's connection greenlet: they must only record, wake or spawn -- never
block, never call ZooKeeper, never stop the client (kazoo #426). An
exception in a subscriber is logged and does not reach kazoo.
"""
from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

from miyaq.cluster.zk_auth import ZkAuth
from miyaq.cluster.zk_client import close_client, connect
from miyaq.runtime import monotonic

logger = logging.getLogger(__name__)


class SessionEvent(enum.Enum):
    SUSPENDED = "suspended"
    LOST = "lost"
    RESUMED = "resumed"
    RENEWED = "renewed"


SessionSubscriber = Callable[[SessionEvent], None]


class Session:
    """The kazoo client of one node and what its session state means for the node."""

    def __init__(self, zk: KazooClient, owner: str) -> None:
        self.zk = zk
        self.owner = owner
        self.generation = 0
        self.suspended = False
        self.lost = False
        self.closing = False
        self.silent_since: float | None = None    # monotonic time the connection was suspended
        self._subscribers: list[SessionSubscriber] = []
        zk.add_listener(self._on_state)

    @classmethod
    def open(cls, hosts: str, owner: str, *, session_timeout: float, connect_timeout: float,
             auth: ZkAuth | None = None) -> Session:
        """Connect to ``hosts`` (authenticated with ``auth``, whose ACL new znodes get);
        ``Unavailable`` when no server answers within ``connect_timeout``."""
        return cls(connect(hosts, session_timeout, connect_timeout, auth), owner)

    @property
    def usable(self) -> bool:
        """True while calls can succeed: connected, in a live session, not closing."""
        return not (self.closing or self.suspended or self.lost)

    @property
    def state(self) -> str:
        """``connected``, ``suspended``, ``lost`` (no new session yet) or ``closed``."""
        if self.closing:
            return "closed"
        if self.lost:
            return "lost"
        return "suspended" if self.suspended else "connected"

    def current(self, generation: int) -> bool:
        """True while ``generation`` is still this session's (not lost, not closing)."""
        return not self.closing and generation == self.generation

    def subscribe(self, fn: SessionSubscriber) -> None:
        """Call ``fn(event)`` on every state change; ``fn`` must not block."""
        self._subscribers.append(fn)

    def close(self) -> None:
        """End the session: the servers drop our ephemeral znodes at once.
        Idempotent; not from a kazoo callback or a subscriber."""
        if self.closing:
            return
        self.closing = True
        self.generation += 1
        self.zk.remove_listener(self._on_state)
        close_client(self.zk)

    def _on_state(self, state: str) -> None:
        """kazoo's listener: record the state and tell the subscribers. Never blocks."""
        if self.closing:
            return
        if state == KazooState.CONNECTED:
            self.silent_since = None
        elif self.silent_since is None:
            self.silent_since = monotonic()
        if state == KazooState.SUSPENDED:
            logger.warning("%s: ZooKeeper connection suspended", self.owner)
            self.suspended = True
            event = SessionEvent.SUSPENDED
        elif state == KazooState.LOST:
            logger.warning("%s: ZooKeeper session lost", self.owner)
            self.suspended = True
            self.lost = True
            self.generation += 1
            event = SessionEvent.LOST
        elif state == KazooState.CONNECTED:
            self.suspended = False
            if self.lost:
                self.lost = False
                event = SessionEvent.RENEWED
                logger.info("%s: new ZooKeeper session 0x%x", self.owner, self.zk.client_id[0])
            else:
                event = SessionEvent.RESUMED
                logger.info("%s: ZooKeeper connection resumed", self.owner)
        else:  # pragma: no cover - kazoo has no other states
            return
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:
                logger.exception("%s: session subscriber %r failed on %s", self.owner, fn, event.value)
