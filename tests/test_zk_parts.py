"""The parts of the ZooKeeper coordinator, each tested alone against a real ZooKeeper.

Session (state, generation, subscribers), Registry (member znode, cache,
re-registration) and Leader (election, fenced ring writes, abdication), then
the coordinator's supervision: a crash in one of its greenlets is logged,
counted and restarted, or stops the process past its restart budget.
A few faults are fed to the session's kazoo listener directly (an
in-memory stand-in for kazoo noticing them); the others are real (a
killed server, a session expired on the server). No timing assertions.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest
from kazoo.protocol.states import KazooState

from miyaq.cluster.ring_view import Member
from miyaq.cluster.zk_layout import Intent, Layout, RingRecord, with_join, with_weight
from miyaq.cluster.zk_leader import Leader
from miyaq.cluster.zk_registry import Registry
from miyaq.cluster.zk_session import Session, SessionEvent
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.errors import ConfigError
from miyaq.runtime import Supervisor, green
from miyaq.testing.zookeeper import ZooKeeperServer, expire_session
from zk_fixtures import DEADLINE, member, wait_until

SESSION = 2.0


@pytest.fixture
def sessions(zk_server: ZooKeeperServer) -> Iterator[Callable[..., Session]]:
    """Open sessions on the shared server; all closed at teardown."""
    opened: list[Session] = []

    def open_session(owner: str = "t", hosts: str | None = None, timeout: float = SESSION) -> Session:
        session = Session.open(hosts or zk_server.hosts, owner, session_timeout=timeout, connect_timeout=5.0)
        opened.append(session)
        return session

    yield open_session
    for session in opened:
        session.close()


def record_events(session: Session) -> list[SessionEvent]:
    events: list[SessionEvent] = []
    session.subscribe(events.append)
    return events


# -- Session ------------------------------------------------------------------------


def test_session_lost_bumps_the_generation_then_renews(sessions, zk_server):
    """Fault: the servers expire the session; work of the old generation must see it is stale."""
    session = sessions()
    events = record_events(session)
    first = session.zk.client_id[0]
    assert session.usable and session.current(0)

    expire_session(zk_server.hosts, session.zk)

    wait_until(lambda: SessionEvent.RENEWED in events, "a new session")
    assert events[-2:] == [SessionEvent.LOST, SessionEvent.RENEWED]
    assert session.generation == 1 and not session.current(0) and session.current(1)
    assert session.usable and session.zk.client_id[0] != first


def test_session_suspended_then_resumed_keeps_its_generation():
    """Fault: the only server dies (SUSPENDED) and returns within the session timeout (RESUMED)."""
    with ZooKeeperServer() as server:
        session = Session.open(server.hosts, "t", session_timeout=8.0, connect_timeout=5.0)
        try:
            events = record_events(session)
            first = session.zk.client_id[0]
            server.kill()
            wait_until(lambda: session.suspended, "SUSPENDED")
            assert not session.usable and session.current(0)
            server.start()
            wait_until(lambda: SessionEvent.RESUMED in events, "the connection to come back")
            assert events == [SessionEvent.SUSPENDED, SessionEvent.RESUMED]
            assert session.usable and session.generation == 0 and session.zk.client_id[0] == first
        finally:
            session.close()


def test_a_failing_subscriber_is_logged_and_the_others_still_hear(sessions, caplog):
    """Fault: one subscriber raises; kazoo must not see it and later subscribers still run."""
    session = sessions()

    def broken(event: SessionEvent) -> None:
        raise RuntimeError("injected")

    session.subscribe(broken)
    events = record_events(session)
    with caplog.at_level(logging.ERROR, logger="miyaq.cluster.zk_session"):
        session._on_state(KazooState.SUSPENDED)    # as kazoo's connection greenlet would
    assert events == [SessionEvent.SUSPENDED] and session.suspended
    assert "session subscriber" in caplog.text and "injected" in caplog.text


def test_closed_session_is_stale_and_close_is_idempotent(sessions):
    session = sessions()
    session.close()
    session.close()
    assert session.closing and not session.usable and not session.current(0)
    session._on_state(KazooState.LOST)    # a late callback changes nothing
    assert session.generation == 1 and not session.lost


# -- Registry -----------------------------------------------------------------------


class Node:
    """A session, a store and a registry for one member, as the coordinator builds them."""

    def __init__(self, session: Session, cluster: str, node_id: str, supervisor: Supervisor,
                 wait: float = 2 * SESSION + 2) -> None:
        self.session = session
        self.store = ZnodeStore(session.zk, Layout(cluster), "test", 5.0)
        self.store.ensure_paths()
        self.registry = Registry(session, self.store, member(node_id), supervisor, part=f"zk-{node_id}",
                                 wait=wait)
        session.subscribe(self.registry.on_session)


def test_registry_registers_and_sees_the_others(sessions, zk_cluster_name, zk_supervisor, zk_client):
    a = Node(sessions("a"), zk_cluster_name, "a", zk_supervisor)
    b = Node(sessions("b"), zk_cluster_name, "b", zk_supervisor)
    changes: list[int] = []
    a.registry.on_change(lambda: changes.append(1))
    for node in (a, b):
        node.registry.register()
        node.registry.start()
    wait_until(lambda: set(a.registry.registered()) == {"a", "b"}, "a to see b")
    assert a.registry.is_registered and a.registry.registered()["b"] == member("b")
    assert changes
    _, stat = zk_client.get(Layout(zk_cluster_name).member("a"))
    assert stat.ephemeralOwner == a.session.zk.client_id[0]

    b.session.close()
    wait_until(lambda: set(a.registry.registered()) == {"a"}, "b's znode to go with its session")


def test_registry_registers_again_after_a_lost_session(sessions, zk_server, zk_cluster_name, zk_supervisor,
                                                       zk_client):
    """Fault: the node's session expires; its member znode vanishes and must come back."""
    a = Node(sessions("a"), zk_cluster_name, "a", zk_supervisor)
    a.registry.register()
    a.registry.start()
    path = Layout(zk_cluster_name).member("a")
    expire_session(zk_server.hosts, a.session.zk)
    wait_until(lambda: a.registry.registered_in == 1 and a.registry.is_registered, "registration in session 1")
    _, stat = zk_client.get(path)
    assert stat.ephemeralOwner == a.session.zk.client_id[0]
    wait_until(lambda: "a" in a.registry.registered(), "the cache to list a again")


def test_registry_refuses_a_node_id_held_by_another_live_session(sessions, zk_cluster_name, zk_supervisor):
    """Fault: two nodes are started with the same id."""
    Node(sessions("first"), zk_cluster_name, "same", zk_supervisor).registry.register()
    second = Node(sessions("second"), zk_cluster_name, "same", zk_supervisor, wait=0.3)
    with pytest.raises(ConfigError, match="another live session"):
        second.registry.register()
    assert not second.registry.is_registered


def test_registry_greenlet_crash_is_logged_counted_and_restarted(sessions, zk_cluster_name, caplog):
    """Fault: an unexpected error escapes the registry's greenlet (a bug, not a ZooKeeper error)."""
    supervisor = Supervisor("test", on_fatal=lambda *a: pytest.fail("must not be fatal"))
    a = Node(sessions("a"), zk_cluster_name, "a", supervisor)
    a.registry.register()
    real = a.store.read_registered
    calls: list[int] = []

    def flaky() -> dict[str, Member]:
        calls.append(1)
        if len(calls) == 2:              # the first read is start's; the loop's first one fails
            raise RuntimeError("injected")
        return real()

    a.store.read_registered = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="miyaq.runtime.supervisor"):
        a.registry.start()
        wait_until(lambda: supervisor.restarts["zk-a:registry"] == 1, "the restart")
    assert supervisor.crashes["zk-a:registry"] == 1
    assert "greenlet zk-a:registry died; restarting" in caplog.text and "injected" in caplog.text
    b = Node(sessions("b"), zk_cluster_name, "b", supervisor)
    b.registry.register()
    wait_until(lambda: set(a.registry.registered()) == {"a", "b"}, "the restarted loop to see b")
    supervisor.kill()


# -- Leader -------------------------------------------------------------------------


class Candidate(Node):
    """A Node with a Leader, and everything the leader announced and published."""

    def __init__(self, session: Session, cluster: str, node_id: str, supervisor: Supervisor) -> None:
        super().__init__(session, cluster, node_id, supervisor)
        self.announced: list[tuple[bool, int]] = []
        self.published: list[int] = []
        self.highest = 0
        self.leader = Leader(session, self.store, self.registry, supervisor, part=f"zk-{node_id}",
                             node_id=node_id, vnodes=16, reconcile_interval=1.0,
                             announce=lambda is_leader, epoch: self.announced.append((is_leader, epoch)),
                             accept=self._accept, highest_epoch=lambda: self.highest)
        session.subscribe(self.leader.on_session)
        self.registry.on_change(self.leader.wake)
        self.store.update_desired(lambda d: with_join(d, node_id, True))
        self.registry.register()
        self.registry.start()
        self.leader.start()

    def _accept(self, record: RingRecord) -> bool:
        self.published.append(record.epoch)
        self.highest = max(self.highest, record.epoch)
        return True


def test_one_candidate_leads_and_publishes_a_higher_epoch(sessions, zk_cluster_name, zk_supervisor, zk_client):
    ring = Layout(zk_cluster_name).ring
    zk_client.create(ring, RingRecord(7, (), {}, None, {}).to_bytes(), makepath=True)
    a = Candidate(sessions("a"), zk_cluster_name, "a", zk_supervisor)
    b = Candidate(sessions("b"), zk_cluster_name, "b", zk_supervisor)
    wait_until(lambda: a.leader.is_leader or b.leader.is_leader, "a leader")
    leader, other = (a, b) if a.leader.is_leader else (b, a)
    assert not other.leader.is_leader and other.announced == []
    (gained, epoch), = leader.announced
    assert gained and epoch > 7
    wait_until(lambda: set(RingRecord.from_bytes(zk_client.get(ring)[0]).members) == {"a", "b"}, "both in")
    record = RingRecord.from_bytes(zk_client.get(ring)[0])
    assert record.leader == leader.registry.member.node_id and record.epoch >= epoch
    for c in (a, b):
        c.leader.stop(5.0)
    assert leader.announced[-1] == (False, epoch)


def test_suspended_leader_pauses_at_once_and_resumes_its_term(sessions, zk_cluster_name, zk_supervisor,
                                                               zk_client):
    """Fault: kazoo reports SUSPENDED under the leader (fed to its listener), then CONNECTED
    with the same session: the term pauses at once and goes on with the same epoch."""
    ring = Layout(zk_cluster_name).ring
    a = Candidate(sessions("a"), zk_cluster_name, "a", zk_supervisor)
    wait_until(lambda: a.leader.is_leader, "a to lead")
    first = a.announced[0][1]
    published = list(a.published)
    a.session._on_state(KazooState.SUSPENDED)
    assert a.announced[-1] == (False, first) and not a.leader.is_leader
    a.session._on_state(KazooState.CONNECTED)
    wait_until(lambda: len(a.announced) == 3, "the term to resume")
    assert a.announced == [(True, first), (False, first), (True, first)]
    assert a.published == published and RingRecord.from_bytes(zk_client.get(ring)[0]).epoch == published[-1]
    a.leader.stop(5.0)


def test_leader_whose_session_expired_wins_again_with_a_new_epoch(sessions, zk_server, zk_cluster_name,
                                                                  zk_supervisor):
    """Fault: the leader's session expires on the server: LOST ends the term; the next
    one (after it registered again) starts with a higher epoch."""
    a = Candidate(sessions("a"), zk_cluster_name, "a", zk_supervisor)
    wait_until(lambda: a.leader.is_leader, "a to lead")
    first = a.announced[0][1]
    expire_session(zk_server.hosts, a.session.zk)
    wait_until(lambda: len(a.announced) >= 3 and a.announced[-1][0], "a new term")
    assert a.announced[1] == (False, first) and a.announced[-1][1] > first
    assert a.registry.registered_in == 1
    a.leader.stop(5.0)


def test_leader_whose_election_znode_vanished_cannot_write_the_ring(sessions, zk_cluster_name, zk_supervisor,
                                                                      zk_client):
    """Fault: the leader's election znode is deleted behind its back (as when the server
    expired its session and the leader has not heard yet): its next write is fenced."""
    layout = Layout(zk_cluster_name)
    a = Candidate(sessions("a"), zk_cluster_name, "a", zk_supervisor)
    wait_until(lambda: a.leader.is_leader, "a to lead")
    first = a.announced[0][1]
    epochs_before = list(a.published)
    for child in zk_client.get_children(layout.election):
        zk_client.delete(f"{layout.election}/{child}")
    before = RingRecord.from_bytes(zk_client.get(layout.ring)[0])
    zk_client.set(layout.desired, b'{"nodes":{"a":{"join":true,"weight":2.0}}}')   # a change to publish
    wait_until(lambda: (False, first) in a.announced, "the fenced leader to step down")
    wait_until(lambda: len(a.announced) >= 3 and a.announced[-1][0], "a to win the next election")
    after = RingRecord.from_bytes(zk_client.get(layout.ring)[0])
    assert after.epoch > before.epoch and after.weights == {"a": 2.0}
    assert a.announced[-1][1] > first
    assert a.published == sorted(set(a.published)) and a.published[:len(epochs_before)] == epochs_before
    a.leader.stop(5.0)


# -- the coordinator's supervision -----------------------------------------------


def test_coordinator_greenlet_crash_is_logged_counted_and_restarted(zk_server, zk_cluster_name, caplog):
    """Fault: an unexpected error escapes the campaign greenlet while it leads."""
    from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
    supervisor = Supervisor("node", on_fatal=lambda *a: pytest.fail("must not be fatal"))
    c = ZooKeeperCoordinator(zk_server.hosts, zk_cluster_name, member("a"), supervisor=supervisor,
                             session_timeout=SESSION, reconcile_interval=1.0)
    leadership: list[tuple[bool, int]] = []
    c.add_leader_listener(lambda is_leader, epoch: leadership.append((is_leader, epoch)))
    c.start()
    try:
        wait_until(lambda: c.is_leader, "a to lead")
        assert c._leader is not None
        real = c._leader._reconcile
        calls: list[int] = []

        def once(lock_path: str, new_term: bool) -> int:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected")
            return real(lock_path, new_term)

        c._leader._reconcile = once  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="miyaq.runtime.supervisor"):
            c.set_weight("a", 2.0)           # wakes the leader, which reconciles
            wait_until(lambda: supervisor.restarts["zk-a:campaign"] == 1, "the campaign to restart")
        assert supervisor.crashes["zk-a:campaign"] == 1
        assert "greenlet zk-a:campaign died; restarting" in caplog.text
        c.wait_for_view(lambda v: v.members.get("a") is not None and v.members["a"].weight == 2.0, DEADLINE)
        wait_until(lambda: len(leadership) >= 3 and leadership[-1][0], "a to lead again")
        assert leadership[0][0] and leadership[1][0] is False and leadership[-1][0]
        assert leadership[-1][1] > leadership[0][1]
    finally:
        c.stop()
    assert [name for name in supervisor.live() if name.startswith("zk-a:")] == []


def test_coordinator_greenlet_crashing_past_its_budget_stops_the_process(zk_server, zk_cluster_name):
    """Fault: the campaign greenlet crashes every time it runs: the owner's on_fatal is called."""
    from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
    fatal: list[str] = []
    supervisor = Supervisor("node", on_fatal=lambda name, exc: fatal.append(name), max_restarts=2)
    c = ZooKeeperCoordinator(zk_server.hosts, zk_cluster_name, member("a"), supervisor=supervisor,
                             session_timeout=SESSION, reconcile_interval=1.0)
    c.start()
    try:
        assert c._leader is not None

        def broken(lock_path: str, new_term: bool) -> int:
            raise RuntimeError("injected")

        c._leader._reconcile = broken  # type: ignore[method-assign]
        c.set_weight("a", 2.0)
        wait_until(lambda: fatal, "the supervisor to give up")
        assert fatal == ["zk-a:campaign"] and supervisor.crashes["zk-a:campaign"] == 3
        assert not c.is_leader
    finally:
        c.stop()
        supervisor.kill()
    green.sleep(0)


def test_a_ring_znode_that_cannot_be_decoded_does_not_send_the_epoch_back(sessions, zk_cluster_name,
                                                                           zk_supervisor, zk_client):
    """Fault: the ring znode holds what this version cannot decode (another
    version's, a hand edit) at a full restart. Before 2026-12-05 the new
    leader took the epoch for 0 and published epoch 1: epochs went backwards,
    and the periodic ticks fenced by the old epoch stopped firing. The epoch
    field that can still be read (8 here) is the floor; failing that, the
    znode's version + 1."""
    ring = Layout(zk_cluster_name).ring
    zk_client.create(ring, b'{"epoch": 8, "members": "not a list"}', makepath=True)
    store = ZnodeStore(zk_client, Layout(zk_cluster_name), "test", 5.0)
    record, stat = store.read_ring()
    assert record is None and store.epoch_floor(stat) == 8
    a = Candidate(sessions("a"), zk_cluster_name, "a", zk_supervisor)
    wait_until(lambda: a.leader.is_leader, "a leader")
    (gained, epoch), = a.announced
    assert gained and epoch > 8
    wait_until(lambda: RingRecord.from_bytes(zk_client.get(ring)[0]).epoch > 8, "a ring past epoch 8")
    a.leader.stop(5.0)
    for _ in range(3):
        zk_client.set(ring, b"\xff not json")
    record, stat = store.read_ring()
    assert record is None and store.epoch_floor(stat) == stat.version + 1


def test_a_bad_entry_in_desired_costs_only_itself(zk_cluster_name, zk_client):
    """Fault: one entry of the ``desired`` znode is bad (a weight of 0 from a
    hand edit; a join that is not a boolean). Before 2026-12-05 the whole
    znode was refused: the leader published nothing, and the next admin
    change rewrote it as if empty -- every other node's wish to be in the
    ring lost, and an empty ring published. Now a bad weight is ignored
    (the node's default weight), an entry without a readable join is
    skipped, and the rest stands and is kept by the next change."""
    layout = Layout(zk_cluster_name)
    zk_client.create(layout.desired, json.dumps({"nodes": {
        "a": {"join": True, "weight": 2}, "b": {"join": True, "weight": 0},
        "c": {"join": "yes"}}}).encode(), makepath=True)
    store = ZnodeStore(zk_client, layout, "test", 5.0)
    desired, _ = store.read_desired()
    assert desired == {"a": Intent(True, 2.0), "b": Intent(True, None)}
    before, after = store.update_desired(lambda d: with_weight(d, "d", 3.0))
    assert after == {"a": Intent(True, 2.0), "b": Intent(True, None), "d": Intent(False, 3.0)}
    assert store.read_desired()[0] == after
