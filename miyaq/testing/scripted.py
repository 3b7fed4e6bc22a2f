"""A coordinator whose ring the test writes: membership without ZooKeeper.

:class:`RingScript` plays ZooKeeper and the leader for an in-process
cluster. The test decides the ring -- its members, their weights, its epoch
and its leader -- with :meth:`RingScript.publish`, and decides when each
node sees it: every node at once, some nodes now and others later
(:meth:`RingScript.deliver`), never, or an older view than the one a node
holds. It can also expire a node's session (:meth:`RingScript.expire`):
the node loses leadership and is without its coordination service until
:meth:`RingScript.restore`.

Each node is given its own :class:`ScriptedCoordinator`
(:meth:`RingScript.coordinator`), a :class:`~miyaq.cluster.membership.Coordinator`
like the ZooKeeper one: views reach its listeners in the caller's greenlet
(listeners must not block, as always), and ``join``, ``leave`` and
``set_weight`` are recorded as wishes (:attr:`RingScript.wishes`) that the
next :meth:`RingScript.publish` without explicit members applies -- the
test plays the leader.

Nothing here checks what a real leader would refuse: a test may publish an
epoch lower than the last one, or a leader that is not a member, on purpose.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import replace

from miyaq.cluster.membership import Coordinator
from miyaq.cluster.ring_view import Member, RingView
from miyaq.protocol.ring import check_weight
from miyaq.errors import ConfigError, Unavailable
from miyaq.runtime import monotonic

logger = logging.getLogger(__name__)


class ScriptedCoordinator(Coordinator):
    """One node's window on a :class:`RingScript` (made by :meth:`RingScript.coordinator`)."""

    def __init__(self, script: RingScript, local: Member) -> None:
        super().__init__(local)
        self.member = local
        self.script = script
        self.node_id = local.node_id
        self.running = False
        self.lost_at: float | None = None        # monotonic, while the session is expired
        self.leading = False
        self.views: list[RingView] = []          # every view delivered to this node, in order
        self._view = RingView.empty()
        self._listed_at_start = False

    # -- the Coordinator interface ----------------------------------------------------
    def start(self) -> None:
        """Register; a node that starts sees the script's current ring (as with ZooKeeper's watch)."""
        if self.running:
            return
        self.running = True
        self._listed_at_start = self.node_id in self.script.current.members
        self.script._started(self)

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self.script._stopped(self)
        self._lead(False)

    @property
    def view(self) -> RingView:
        return self._view

    @property
    def is_leader(self) -> bool:
        return self.leading and self.lost_at is None

    @property
    def connection(self) -> str:
        """``lost`` while the script has expired this node's session, else ``connected``."""
        return "connected" if self.lost_at is None else "lost"

    def silent_for(self) -> float:
        """Seconds since the script expired this node's session (0 while it has one)."""
        return 0.0 if self.lost_at is None else max(monotonic() - self.lost_at, 1e-9)

    def session_lost(self) -> bool:
        return self.lost_at is not None

    def confirm_view(self, epoch: int, done: Callable[[bool], None]) -> None:
        """True while this node has a session and ``epoch`` is the script's newest ring."""
        done(self.lost_at is None and self.script.current.epoch == epoch)

    def join(self, node_id: str) -> None:
        self._wish(node_id, "join")
        self.script.wishes.setdefault(node_id, self.script.registered[node_id].weight)

    def leave(self, node_id: str) -> None:
        self._wish(node_id, "leave")
        self.script.wishes.pop(node_id, None)

    def set_weight(self, node_id: str, weight: float) -> None:
        self._wish(node_id, "set the weight of")
        self.script.wishes[node_id] = check_weight(weight)

    def registered(self) -> dict[str, Member]:
        return dict(self.script.registered)

    def listed_at_start(self) -> bool:
        """Whether the script's last published ring listed this node when it started."""
        return self._listed_at_start

    # -- driven by the script ----------------------------------------------------------
    def _wish(self, node_id: str, action: str) -> None:
        if self.lost_at is not None:
            raise Unavailable(f"cannot {action} {node_id}: node {self.node_id} has no session (scripted)")
        if node_id not in self.script.registered:
            raise ConfigError(f"cannot {action} {node_id!r}: not registered")

    def _see(self, view: RingView) -> None:
        """Hand ``view`` to this node's listeners, whatever its epoch (the role fences it)."""
        self._view = view
        self.views.append(view)
        self._deliver_view(view)
        self._lead(view.leader == self.node_id and self.lost_at is None)

    def _lead(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            self._deliver_leadership(leading, self._view.epoch)


class RingScript:
    """The ring of an in-process cluster, as the test writes it.

    ``auto_deliver`` (default True): a node that starts sees the current
    ring at once, as it would on ZooKeeper; False leaves every delivery to
    the test.
    """

    def __init__(self, *, auto_deliver: bool = True) -> None:
        self.auto_deliver = auto_deliver
        self.coordinators: dict[str, ScriptedCoordinator] = {}
        self.registered: dict[str, Member] = {}
        #: Node id -> weight the members should have, from join/leave/set_weight.
        self.wishes: dict[str, float] = {}
        self.published: list[RingView] = []

    # -- nodes ---------------------------------------------------------------------------
    def coordinator(self, member: Member) -> ScriptedCoordinator:
        """The coordinator to build node ``member.node_id`` with (a new one
        replaces an earlier one of the same id: a restarted node)."""
        coordinator = ScriptedCoordinator(self, member)
        self.coordinators[member.node_id] = coordinator
        return coordinator

    def _started(self, coordinator: ScriptedCoordinator) -> None:
        self.registered[coordinator.node_id] = coordinator.member
        self.wishes.setdefault(coordinator.node_id, coordinator.member.weight)
        if self.auto_deliver and self.published:
            coordinator._see(self.published[-1])

    def _stopped(self, coordinator: ScriptedCoordinator) -> None:
        if self.coordinators.get(coordinator.node_id) is coordinator:
            self.registered.pop(coordinator.node_id, None)

    # -- the ring --------------------------------------------------------------------------
    @property
    def current(self) -> RingView:
        """The last view published (empty before the first)."""
        return self.published[-1] if self.published else RingView.empty()

    def view(self, members: list[str] | None = None, *, weights: dict[str, float] | None = None,
             leader: str | None = None, epoch: int | None = None) -> RingView:
        """A view of the registered nodes ``members`` (default: the wishes),
        with ``weights`` overriding theirs, at ``epoch`` (default: one past the
        last published), led by ``leader`` (default: the first member by id)."""
        wanted = sorted(self.wishes) if members is None else list(members)
        unknown = [n for n in wanted if n not in self.registered]
        if unknown:
            raise ConfigError(f"not registered (start them first): {unknown}")
        chosen = {}
        for node_id in wanted:
            weight = (weights or {}).get(node_id, self.wishes.get(node_id, self.registered[node_id].weight))
            chosen[node_id] = replace(self.registered[node_id], weight=weight)
        if epoch is None:
            epoch = max((v.epoch for v in self.published), default=0) + 1
        if leader is None and chosen:
            leader = min(chosen)
        return RingView(epoch=epoch, members=chosen, leader=leader)

    def publish(self, members: list[str] | None = None, *, weights: dict[str, float] | None = None,
                leader: str | None = None, epoch: int | None = None, to: list[str] | None = None,
                withhold: Collection[str] = ()) -> RingView:
        """Publish a new view (see :meth:`view`) and deliver it to ``to``
        (default: every running node) except ``withhold``. Returns it; a node
        left out gets it from :meth:`deliver`."""
        view = self.view(members, weights=weights, leader=leader, epoch=epoch)
        self.published.append(view)
        logger.info("scripted ring epoch %d: %s (leader %s)", view.epoch, sorted(view.members), view.leader)
        targets = self.running() if to is None else to
        for node_id in targets:
            if node_id not in withhold:
                self.deliver(node_id, view)
        return view

    def deliver(self, node_id: str, view: RingView | None = None) -> None:
        """Let ``node_id`` see ``view`` (default: the last published) -- also an
        older one than it holds, to show it is ignored."""
        coordinator = self.coordinators[node_id]
        if not coordinator.running:
            raise ConfigError(f"node {node_id} is not running")
        coordinator._see(view if view is not None else self.current)

    def running(self) -> list[str]:
        return sorted(n for n, c in self.coordinators.items() if c.running)

    # -- sessions ------------------------------------------------------------------------------
    def expire(self, node_id: str) -> None:
        """The node's session is lost: it stops leading at once and is without
        its coordination service (``silent_for``) until :meth:`restore`. Its
        registration is gone; the ring is what the test publishes next."""
        coordinator = self.coordinators[node_id]
        coordinator.lost_at = monotonic()
        self.registered.pop(node_id, None)
        coordinator._lead(False)

    def restore(self, node_id: str) -> None:
        """The node has a session again and registers again (its ring is unchanged)."""
        coordinator = self.coordinators[node_id]
        coordinator.lost_at = None
        if coordinator.running:
            self.registered[node_id] = coordinator.member
        coordinator._lead(coordinator.view.leader == node_id)
