"""How the ZooKeeper coordinator follows its session and its watches.

Session rules:

* SUSPENDED (connection in doubt): stop acting as leader at once (leader
  listeners get ``False``); on reconnect with the same session, resume with a
  new term.
* LOST (the server ended the session; our ephemeral znodes are gone):
  abdicate and leave the election; on the new session re-register the member
  znode and campaign again. A reconnect does not write ``join`` again, so an
  operator's ``leave`` sticks until the node is restarted.
* Session and watch callbacks only set flags, wake greenlets or spawn one;
  they never block and never call ``zk.stop()`` (kazoo #426). Reading the
  registry is done by one greenlet, woken by the ``members/`` watch.

:class:`SessionRole` is a mixin of
:class:`~miyaq.cluster.zk_coordinator.ZooKeeperCoordinator`: it shares the
coordinator's state (the attributes annotated below).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from kazoo.exceptions import KazooException
from kazoo.protocol.states import KazooState
from kazoo.recipe.election import Election

from miyaq.cluster.membership import Member
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.errors import ConfigError, Unavailable

# A child of miyaq.cluster.zk_coordinator's logger: one object, one logging tree to configure.
logger = logging.getLogger("miyaq.cluster.zk_coordinator.session")


class SessionRole:
    """Reactions to session states and watches, and re-registration after a lost session."""

    # Shared with ZooKeeperCoordinator (and LeaderRole), set in its __init__.
    _node_id: str
    _store: ZnodeStore | None
    _op_timeout: float
    _closing: bool
    _paused: bool
    _lost: bool
    _session_gen: int
    _election: Election | None
    _registered: dict[str, Member]
    _wake: gevent.event.Event
    _registry_dirty: gevent.event.Event
    _in_session: Callable[[int], bool]
    _spawn: Callable[..., gevent.Greenlet]
    _register: Callable[[], None]
    _set_leading: Callable[..., None]
    _ensure_campaign: Callable[[int], None]
    _end_stale_campaign: Callable[[int, float], None]

    # -- kazoo callbacks (never block) ----------------------------------------

    def _on_state(self, state: str) -> None:
        """kazoo's session listener: pause, abdicate or recover; never blocks."""
        if self._closing:
            return
        if state == KazooState.SUSPENDED:
            logger.warning("%s: ZooKeeper connection suspended; pausing leader duties", self._node_id)
            self._paused = True
            self._set_leading(False)
        elif state == KazooState.LOST:
            logger.warning("%s: ZooKeeper session lost; abdicating", self._node_id)
            self._paused = True
            self._lost = True
            self._session_gen += 1
            election = self._election
            if election is not None:
                election.cancel()
            self._set_leading(False)
        elif state == KazooState.CONNECTED:
            self._paused = False
            if self._lost:
                self._lost = False
                logger.info("%s: new ZooKeeper session; registering again", self._node_id)
                self._spawn(self._recover, self._session_gen)
            else:
                logger.info("%s: ZooKeeper connection resumed", self._node_id)
        self._wake.set()
        self._registry_dirty.set()

    def _on_members(self, children: list[str]) -> bool | None:
        if self._closing:
            return False
        self._registry_dirty.set()
        self._wake.set()
        return None

    def _on_desired(self, data: bytes | None, stat: Any) -> bool | None:
        if self._closing:
            return False
        self._wake.set()
        return None

    # -- background greenlets -------------------------------------------------

    def _registry_loop(self) -> None:
        """Keep the registry cache fresh: re-read ``members/`` whenever it is marked dirty."""
        while not self._closing:
            self._registry_dirty.wait()
            self._registry_dirty.clear()
            if self._closing or self._store is None:
                return
            try:
                self._registered = self._store.read_registered()
            except (Unavailable, KazooException):
                gevent.sleep(0.5)
                self._registry_dirty.set()

    def _recover(self, gen: int) -> None:
        """New session after LOST: re-register and campaign again."""
        self._end_stale_campaign(gen, self._op_timeout)
        while self._in_session(gen):
            try:
                self._register()
                break
            except (Unavailable, KazooException) as exc:
                logger.warning("%s: re-registering failed (%s); retrying", self._node_id, exc)
                gevent.sleep(0.5)
            except ConfigError as exc:
                logger.error("%s: cannot re-register: %s", self._node_id, exc)
                return
        self._ensure_campaign(gen)
        self._registry_dirty.set()
