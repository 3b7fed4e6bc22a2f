"""The coordinator interface a node uses for membership, and its standalone default.

Constraints:

* A view (:class:`~miyaq.cluster.ring_view.RingView`) with a higher
  ``epoch`` supersedes a lower one; a coordinator never hands its listeners a
  view older than the one it holds.
* Listeners are called from the coordinator's own greenlet and must not block
  (spawn a greenlet for real work). An exception in a listener is logged and
  never reaches the coordinator.
* :class:`StandaloneCoordinator` is the embedded default: a ring of one (the
  local node), always its own leader, epoch 1, no ZooKeeper, and the same
  listener calls a clustered node gets.
"""
from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import replace

from miyaq.cluster.ring_view import Member, RingView, check_node_id
from miyaq.protocol.ring import check_weight
from miyaq.errors import ConfigError, Timeout
from miyaq.runtime import green, monotonic

logger = logging.getLogger(__name__)

ViewListener = Callable[[RingView], None]
LeaderListener = Callable[[bool, int], None]


class Coordinator(abc.ABC):
    """What a node needs from membership: views, leadership, join/leave.

    Subclasses call :meth:`_deliver_view` and :meth:`_deliver_leadership`;
    this base class keeps the listener lists, isolates listener errors and
    implements :meth:`wait_for_view`.
    """

    def __init__(self, local: Member | None) -> None:
        self._local = local
        self._view_listeners: list[ViewListener] = []
        self._leader_listeners: list[LeaderListener] = []
        self._view_changed = green.Event()

    @property
    def local(self) -> Member | None:
        """The member this coordinator registers (``None`` for observers)."""
        return self._local

    # -- the interface --------------------------------------------------------

    @abc.abstractmethod
    def start(self) -> None:
        """Register, start watching and campaigning. Listeners added before
        ``start`` receive the first view."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Leave the election and deregister. Leader listeners are told
        ``False`` if this node was leader. Idempotent."""

    @property
    @abc.abstractmethod
    def view(self) -> RingView:
        """The newest view this node holds."""

    @property
    def connection(self) -> str:
        """The link to the membership store, for status: ``connected`` unless a
        subclass knows better (ZooKeeper: ``suspended``, ``lost``, ``closed``)."""
        return "connected"

    @property
    @abc.abstractmethod
    def is_leader(self) -> bool:
        """True while this node may act as leader (never while its session is in doubt)."""

    def silent_for(self) -> float:
        """Seconds this node has been without its coordination service (its
        ZooKeeper connection suspended or its session lost); 0 while
        connected, and always for a standalone node."""
        return 0.0

    def session_lost(self) -> bool:
        """True from the moment this node learns its session ended (its
        registration is gone: the ring may already go on without it) until
        it has a new one; False for a standalone node."""
        return False

    def confirm_view(self, epoch: int, done: Callable[[bool], None]) -> None:
        """Ask the coordination service, in a round trip begun now, whether
        this node's session still holds and ``epoch`` is still the newest
        ring; call ``done(True)`` if so, ``done(False)`` if not (no answer,
        the session ended, a newer ring exists). After a freeze a node may
        not have noticed yet that its session expired and the ring went on
        without it. ``done`` runs in the node's event loop and must not
        block. A standalone node: ``done(True)`` at once."""
        done(True)

    def listed_at_start(self) -> bool:
        """True when the ring, read as :meth:`start` began and before it
        registered the local node, listed that node: the node was a member
        before this start (restarted, and the ring has not dropped it --
        its previous session may not even have expired yet), so the other
        members may hold copies and ends of tasks it is a holder of. False
        for a node id new to the ring, before :meth:`start` returned, and
        for a coordinator that cannot tell (a standalone node: a ring of
        one, nobody else holds anything)."""
        return False

    @abc.abstractmethod
    def join(self, node_id: str) -> None:
        """Ask for ``node_id`` to be in the ring (applied by the leader)."""

    @abc.abstractmethod
    def leave(self, node_id: str) -> None:
        """Ask for ``node_id`` to be out of the ring (applied by the leader)."""

    @abc.abstractmethod
    def set_weight(self, node_id: str, weight: float) -> None:
        """Ask for ``node_id``'s ring weight to be ``weight`` (applied by the leader)."""

    @abc.abstractmethod
    def registered(self) -> dict[str, Member]:
        """Every registered member, in the ring or not."""

    # -- listeners ------------------------------------------------------------

    def add_listener(self, fn: ViewListener) -> None:
        """Call ``fn(view)`` on every new view. ``fn`` must not block."""
        self._view_listeners.append(fn)

    def remove_listener(self, fn: ViewListener) -> None:
        if fn in self._view_listeners:
            self._view_listeners.remove(fn)

    def add_leader_listener(self, fn: LeaderListener) -> None:
        """Call ``fn(is_leader, epoch)`` when leadership is gained or lost.

        ``epoch`` is the ring epoch the leader published when its term
        began; leader actions should be fenced with it. ``fn`` must not block.
        """
        self._leader_listeners.append(fn)

    def wait_for_view(
        self, predicate: Callable[[RingView], bool], timeout: float = 10.0
    ) -> RingView:
        """Block this greenlet until ``predicate(view)`` holds; ``Timeout`` after ``timeout`` s."""
        deadline = monotonic() + timeout
        while True:
            self._view_changed.clear()
            view = self.view
            if predicate(view):
                return view
            left = deadline - monotonic()
            if left <= 0:
                raise Timeout(
                    f"ring view did not reach the expected state within {timeout:g}s "
                    f"(epoch {view.epoch}, members {sorted(view.members)}, leader {view.leader})"
                )
            # Wake on a new view, and re-check now and then in case a
            # subclass changed state without delivering a view.
            self._view_changed.wait(min(left, 0.5))

    # -- for subclasses -------------------------------------------------------

    def _deliver_view(self, view: RingView) -> None:
        self._view_changed.set()
        for fn in list(self._view_listeners):
            try:
                fn(view)
            except Exception:
                logger.exception("ring view listener %r failed (epoch %s)", fn, view.epoch)

    def _deliver_leadership(self, is_leader: bool, epoch: int) -> None:
        self._view_changed.set()
        for fn in list(self._leader_listeners):
            try:
                fn(is_leader, epoch)
            except Exception:
                logger.exception("leader listener %r failed (%s, epoch %s)", fn, is_leader, epoch)


class StandaloneCoordinator(Coordinator):
    """A ring of one: the local node, always leader, epoch 1, no ZooKeeper."""

    EPOCH = 1

    def __init__(self, local: Member) -> None:
        if not isinstance(local, Member):
            raise ConfigError("StandaloneCoordinator needs the local Member")
        super().__init__(local)
        self._member = local
        self._running = False
        self._view = RingView.empty()

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._view = RingView(
            epoch=self.EPOCH,
            members={self._member.node_id: self._member},
            leader=self._member.node_id,
        )
        logger.info("standalone ring: %s is the only member and leader", self._member.node_id)
        self._deliver_view(self._view)
        self._deliver_leadership(True, self.EPOCH)

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._deliver_leadership(False, self.EPOCH)

    @property
    def view(self) -> RingView:
        return self._view

    @property
    def is_leader(self) -> bool:
        return self._running

    def _check_local(self, node_id: str, action: str) -> None:
        check_node_id(node_id)
        if node_id != self._member.node_id:
            raise ConfigError(
                f"cannot {action} {node_id!r}: a standalone node's ring holds only "
                f"{self._member.node_id!r} (run nodes with ZooKeeper to form a cluster)"
            )

    def join(self, node_id: str) -> None:
        """Joining the local node is a no-op (it is always in its ring)."""
        self._check_local(node_id, "join")

    def leave(self, node_id: str) -> None:
        """Always refused: a standalone node cannot leave its ring of one."""
        self._check_local(node_id, "leave")
        raise ConfigError("a standalone node cannot leave its ring of one")

    def set_weight(self, node_id: str, weight: float) -> None:
        """Recorded on the local member; a ring of one places every key the same."""
        self._check_local(node_id, "set the weight of")
        self._member = replace(self._member, weight=check_weight(weight))
        self._local = self._member

    def registered(self) -> dict[str, Member]:
        return {self._member.node_id: self._member}
