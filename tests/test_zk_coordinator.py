"""ZooKeeperCoordinator and RingAdmin against a real ZooKeeper server.

Needs the ``zk_server``/``zk_cluster_name`` fixtures from ``tests/zk_fixtures.py``.
No timing assertions: every wait is a bounded poll that fails at its deadline.
The membership values and the standalone coordinator, which need no
ZooKeeper, are tested in ``tests/test_membership.py``.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from miyaq.cluster.ring_admin import RingAdmin
from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
from miyaq.cluster.zk_layout import Layout, RingRecord
from miyaq.errors import ConfigError, Unavailable
from miyaq.runtime import Supervisor, green
from miyaq.testing.zookeeper import ZooKeeperServer, expire_session, free_port
from zk_fixtures import DEADLINE, Recorder, agreed, assert_epochs_increase, leaders, member, wait_until

REPO = Path(__file__).resolve().parent.parent
SESSION = 2.0  # seconds; the test server allows sessions down to 1 s


@pytest.fixture
def make(zk_server: ZooKeeperServer, zk_cluster_name: str,
         zk_supervisor: Supervisor) -> Iterator[Callable[..., tuple]]:
    """Start coordinators for this test's cluster; all are stopped at teardown."""
    made: list[ZooKeeperCoordinator] = []

    def _make(node_id: str, hosts: str | None = None, **options) -> tuple[ZooKeeperCoordinator, Recorder]:
        options.setdefault("session_timeout", SESSION)
        options.setdefault("connect_timeout", 5.0)
        options.setdefault("op_timeout", 5.0)
        options.setdefault("reconcile_interval", 1.0)
        coordinator = ZooKeeperCoordinator(
            hosts or zk_server.hosts, zk_cluster_name, member(node_id), supervisor=zk_supervisor, **options
        )
        recorder = Recorder(coordinator)
        made.append(coordinator)
        coordinator.start()
        return coordinator, recorder

    yield _make
    for coordinator in made:
        coordinator.stop()


# -- election and agreement ---------------------------------------------------


def test_three_coordinators_elect_one_leader_and_agree(make):
    nodes = [make(f"n{i}") for i in range(3)]
    coordinators = [c for c, _ in nodes]
    wait_until(lambda: agreed(coordinators, {"n0", "n1", "n2"}), "one leader and an agreed ring")

    (leader,) = leaders(coordinators)
    view = leader.view
    assert view.epoch >= 1
    for c, recorder in nodes:
        assert c.view == view
        wait_until(lambda c=c: set(c.registered()) == {"n0", "n1", "n2"}, "the registry cache")
        assert_epochs_increase(recorder)
    leader_recorder = nodes[coordinators.index(leader)][1]
    assert leader_recorder.leadership[0][0] is True
    for c, recorder in nodes:
        if c is not leader:
            assert all(not gained for gained, _ in recorder.leadership)
    # Every node computes the same holders with the endpoints from the view.
    holders = view.holders("task-1", 2)
    assert len({m.node_id for m in holders}) == 2
    assert holders[0].service.startswith("tcp://127.0.0.1:")


_VICTIM = """
import sys
from miyaq.cluster.ring_view import Member
from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
from miyaq.runtime import Supervisor, green
hosts, cluster, node = sys.argv[1:4]
member = Member(node, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3")
ZooKeeperCoordinator(hosts, cluster, member, supervisor=Supervisor("victim"), session_timeout=2.0,
                     reconcile_interval=1.0).start()
print("started", flush=True)
green.sleep(120)
"""


def test_killed_leader_is_replaced(make, zk_server, zk_cluster_name, zk_client):
    """Fault: the leader's process dies (SIGKILL); its session times out on the server."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    victim = subprocess.Popen(
        [sys.executable, "-c", _VICTIM, zk_server.hosts, zk_cluster_name, "victim"],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    try:
        ring_path = Layout(zk_cluster_name).ring

        def victim_leads() -> bool:
            if not zk_client.exists(ring_path):
                return False
            data, _ = zk_client.get(ring_path)
            return bool(data) and RingRecord.from_bytes(data).leader == "victim"

        wait_until(victim_leads, "the subprocess to lead")
        a, rec_a = make("a")
        b, rec_b = make("b")
        wait_until(
            lambda: all(set(c.view.members) == {"victim", "a", "b"} for c in (a, b)),
            "a and b to join under the victim's leadership",
        )
        before = a.view.epoch
        assert a.view.leader == "victim" and not a.is_leader and not b.is_leader

        victim.send_signal(signal.SIGKILL)
        victim.wait(10)

        wait_until(lambda: agreed([a, b], {"a", "b"}), "a new leader and a ring without the victim")
        assert a.view.epoch > before
        assert_epochs_increase(rec_a)
        assert_epochs_increase(rec_b)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)


def test_listed_at_start_says_whether_the_ring_listed_the_node_before_it_registered(make, zk_server,
                                                                                    zk_cluster_name):
    """Fault: a member's process is killed (SIGKILL: its session lives on
    until it times out, 4 s) and a new process starts under its id at once,
    as a node whose disk was replaced would. The ring still lists the id
    when the new coordinator starts: ``listed_at_start`` is True (the node
    reconciles before it dispatches, even with an empty log). Nodes new to
    the ring -- the first, and one added later -- find themselves unlisted."""
    script = _VICTIM.replace("session_timeout=2.0", "session_timeout=4.0")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    a, _ = make("a")
    wait_until(lambda: set(a.view.members) == {"a"}, "a ring of a")
    assert a.listed_at_start() is False
    victim = subprocess.Popen([sys.executable, "-c", script, zk_server.hosts, zk_cluster_name, "v"],
                              stdout=subprocess.DEVNULL, env=env)
    try:
        wait_until(lambda: set(a.view.members) == {"a", "v"}, "v in the ring")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        again, _ = make("v")            # registers once the killed process's session expired
        assert again.listed_at_start() is True
        wait_until(lambda: agreed([a, again], {"a", "v"}), "v back in the ring under its new session")
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
    added, _ = make("c")
    assert added.listed_at_start() is False
    wait_until(lambda: agreed([a, again, added], {"a", "v", "c"}), "c in the ring")


def test_leader_with_expired_session_is_replaced_and_rejoins(make, zk_server):
    """Fault: the leader's ZooKeeper session expires (server side)."""
    nodes = {name: make(name) for name in ("a", "b", "c")}
    coordinators = [c for c, _ in nodes.values()]
    wait_until(lambda: agreed(coordinators, {"a", "b", "c"}), "the first agreed ring")
    (old,) = leaders(coordinators)
    before = old.view.epoch
    old_recorder = nodes[old.local.node_id][1]
    watcher = next(r for c, r in nodes.values() if c is not old)
    seen = len(watcher.views)

    expire_session(zk_server.hosts, old.client)

    others = [c for c in coordinators if c is not old]
    term = old_recorder.leadership[0][1]
    wait_until(lambda: (False, term) in old_recorder.leadership, "the old leader to abdicate")
    wait_until(lambda: any(c.is_leader for c in others), "a new leader among the others")
    gone = old.local.node_id
    wait_until(
        lambda: any(gone not in v.members and v.leader != gone for v in watcher.views[seen:]),
        "a ring without the old leader",
    )
    # The old leader re-registers and rejoins as a follower.
    wait_until(lambda: agreed(coordinators, {"a", "b", "c"}), "the old leader to rejoin")
    assert not old.is_leader
    assert old.view.epoch > before
    for _, recorder in nodes.values():
        assert_epochs_increase(recorder)


def test_member_with_expired_session_leaves_and_rejoins(make, zk_server):
    """Fault: a follower's ZooKeeper session expires; it must reconnect and re-register."""
    nodes = {name: make(name) for name in ("a", "b", "c")}
    coordinators = [c for c, _ in nodes.values()]
    wait_until(lambda: agreed(coordinators, {"a", "b", "c"}), "the first agreed ring")
    (leader,) = leaders(coordinators)
    victim = next(c for c in coordinators if c is not leader)
    name = victim.local.node_id
    watcher = nodes[leader.local.node_id][1]
    seen = len(watcher.views)

    expire_session(zk_server.hosts, victim.client)

    wait_until(
        lambda: any(name not in v.members for v in watcher.views[seen:]),
        f"the leader to publish a ring without {name}",
    )
    wait_until(lambda: agreed(coordinators, {"a", "b", "c"}), f"{name} to rejoin (auto_join)")
    assert leader.is_leader and not victim.is_leader
    wait_until(lambda: name in leader.registered(), f"{name} to be registered again")
    for _, recorder in nodes.values():
        assert_epochs_increase(recorder)


def test_stale_ring_is_ignored_by_followers(make, zk_cluster_name, zk_client, caplog):
    """Fault: a ring with an older epoch is written to the znode (a deposed leader's late write)."""
    caplog.set_level(logging.INFO, logger="miyaq.cluster.zk_coordinator")
    ring_path = Layout(zk_cluster_name).ring
    # Two followers and no leader, so nothing repairs the znode behind our back.
    nodes = [make(name, leader_eligible=False) for name in ("f1", "f2")]
    followers = [c for c, _ in nodes]
    wait_until(lambda: all(set(c.registered()) == {"f1", "f2"} for c in followers), "registration")

    def write(epoch: int, ids: list[str]) -> None:
        record = RingRecord(
            epoch=epoch,
            members=tuple(ids),
            weights={i: 1.0 for i in ids},
            leader="f1",
            nodes={i: member(i) for i in ids},
        )
        zk_client.ensure_path(ring_path)
        zk_client.set(ring_path, record.to_bytes())

    write(5, ["f1", "f2"])
    wait_until(lambda: all(c.view.epoch == 5 for c in followers), "the epoch-5 ring")

    write(3, ["f1", "ghost"])
    wait_until(
        lambda: sum("ignoring stale ring epoch 3" in r.getMessage() for r in caplog.records) >= 2,
        "both followers to read and ignore the stale ring",
    )
    for c, recorder in nodes:
        assert c.view.epoch == 5 and set(c.view.members) == {"f1", "f2"}
        assert all("ghost" not in v.members for v in recorder.views)

    write(6, ["f2"])
    # A coordinator takes a ring as its view, then hands it to its listeners
    # from its notices queue: wait for both (a CI run read the recorder between).
    wait_until(lambda: all(c.view.epoch == 6 and r.views and r.views[-1].epoch == 6 for c, r in nodes),
               "the epoch-6 ring")
    for c, recorder in nodes:
        assert set(c.view.members) == {"f2"}
        assert [v.epoch for v in recorder.views] == [5, 6]


def test_leader_pauses_while_suspended_and_resumes_its_term(zk_supervisor):
    """Fault: ZooKeeper crashes under a leader (connection SUSPENDED), then comes back
    within the session timeout: the same sessions resume, and so does the leader's term."""
    with ZooKeeperServer() as server:
        nodes = {}
        try:
            for name in ("a", "b"):
                c = ZooKeeperCoordinator(
                    server.hosts, "suspend", member(name), supervisor=zk_supervisor,
                    session_timeout=10.0, connect_timeout=5.0, op_timeout=5.0, reconcile_interval=1.0,
                )
                nodes[name] = (c, Recorder(c))
                c.start()
            coordinators = [c for c, _ in nodes.values()]
            wait_until(lambda: agreed(coordinators, {"a", "b"}), "the first agreed ring")
            (leader,) = leaders(coordinators)
            recorder = nodes[leader.local.node_id][1]
            assert recorder.leadership == [(True, recorder.leadership[0][1])]
            first_epoch = recorder.leadership[0][1]
            epoch = leader.view.epoch
            sessions = [c.client.client_id[0] for c in coordinators]

            server.kill()
            wait_until(lambda: (False, first_epoch) in recorder.leadership, "the leader to pause")
            assert not any(c.is_leader for c in coordinators)

            server.start()
            wait_until(lambda: leader.is_leader, "the leader to resume")
            wait_until(lambda: len(recorder.leadership) == 3, "the resumed term to be announced")
            assert recorder.leadership == [(True, first_epoch), (False, first_epoch), (True, first_epoch)]
            # The other coordinator may still be reconnecting (kazoo's client_id is
            # None until it is: CI, 2026-12-08); its session is what is compared.
            wait_until(lambda: all(c.client.client_id is not None for c in coordinators), "both reconnected")
            assert [c.client.client_id[0] for c in coordinators] == sessions
            assert all(c.view.epoch == epoch for c in coordinators)
            for _, rec in nodes.values():
                assert rec.views[-1].epoch == epoch     # no new ring: nobody resyncs for a blip
        finally:
            for c, _ in nodes.values():
                c.stop()


def test_a_leader_stopped_while_zookeeper_is_out_of_reach_does_not_wait_its_op_timeout(zk_supervisor):
    """Fault: ZooKeeper is down (a whole-cluster shutdown, maintenance) when
    a node that leads is stopped. The stop waited the whole ``op_timeout``
    for the election znode to be released -- which cannot happen without a
    connection (it goes with the session) -- 10 s of a pod's stop budget
    with the defaults. Here op_timeout is 300 s: the stop ends long before."""
    with ZooKeeperServer() as server:
        c = ZooKeeperCoordinator(server.hosts, "stop-unreachable", member("a"), supervisor=zk_supervisor,
                                 session_timeout=30.0, connect_timeout=5.0, op_timeout=300.0,
                                 reconcile_interval=1.0)
        recorder = Recorder(c)
        stopper = None
        try:
            c.start()
            wait_until(lambda: c.is_leader, "a to lead")
            server.kill()
            wait_until(lambda: recorder.leadership and recorder.leadership[-1][0] is False, "the leader to pause")
            stopper = green.Greenlet.spawn(c.stop)
            wait_until(lambda: stopper.dead, "the stop to end", timeout=30)
            assert stopper.successful()
        finally:
            if stopper is None or not stopper.dead:
                c.stop()


# -- operator commands ----------------------------------------------------------


def test_ring_admin_join_leave_and_weight(make, zk_server, zk_cluster_name):
    a, _ = make("a")
    b, rec_b = make("b", auto_join=False)
    wait_until(lambda: set(a.view.members) == {"a"} and a.is_leader, "a to lead a ring of one")
    wait_until(lambda: "b" in a.registered(), "b to register")

    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE) as admin:
        status = admin.status()
        assert status["leader"] == "a" and status["epoch"] == a.view.epoch
        assert status["members"]["b"]["registered"] and not status["members"]["b"]["in_ring"]
        assert status["members"]["a"]["share"] == 1.0
        assert status["members"]["a"]["service"] == member("a").service

        message = admin.join("b")
        assert "b joined the ring at epoch" in message
        wait_until(lambda: set(a.view.members) == {"a", "b"}, "a to see b")
        wait_until(lambda: set(b.view.members) == {"a", "b"}, "b to see itself in the ring")

        message = admin.set_weight("b", 3)
        assert "1 -> 3" in message
        wait_until(lambda: b.view.members.get("b") and b.view.members["b"].weight == 3.0, "b's weight")
        share = admin.status()["members"]
        assert share["b"]["share"] > share["a"]["share"]
        assert abs(share["a"]["share"] + share["b"]["share"] - 1.0) < 1e-9

        message = admin.leave("b")
        assert "b left the ring at epoch" in message
        wait_until(lambda: set(b.view.members) == {"a"}, "b to see itself out")
        assert "not in the ring" in admin.leave("b")
        assert "not registered" in admin.join("nobody")
        assert "not in the ring" in admin.leave("nobody")
        with pytest.raises(ConfigError):
            admin.set_weight("b", 0)
        with pytest.raises(ConfigError):
            admin.join("bad/id")
        # Fault: an operator's typo. A weight past MAX_WEIGHT, or one that
        # would give the ring more than MAX_POINTS points, is refused at once;
        # before 2026-12-05 a weight of 5,000 was published (800,160 points)
        # and stalled every node past its ZooKeeper session.
        with pytest.raises(ConfigError, match="at most 1000"):
            admin.set_weight("a", 5000)
        with pytest.raises(ConfigError, match="points"):
            admin.set_weight("a", 999)
        assert admin.status()["members"]["a"]["weight"] == 1.0
    assert_epochs_increase(rec_b)


def test_a_node_that_left_is_back_in_the_ring_when_restarted_with_auto_join(make, zk_server, zk_cluster_name):
    """The runbook's drain (docs/cluster.md: leave, stop, upgrade, start):
    a node that left and is restarted with ``auto_join`` (the default) is
    in the ring again at once, without ``miyaq join``; restarted without it,
    it stays out until joined. The runbook said a node that left "stays out
    of the ring until it is joined again" whatever its auto-join (the sre
    audit saw it back in at its restart, before any ``miyaq join``)."""
    a, _ = make("a")
    b, _ = make("b")
    wait_until(lambda: agreed([a, b], {"a", "b"}), "the first agreed ring")
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=DEADLINE) as admin:
        assert "b left the ring" in admin.leave("b")
        b.stop()
        # Said to stay out "for good" before: now when it comes back.
        assert "until it starts again with auto-join" in admin.leave("b")
        b, _ = make("b")                                  # restarted, auto_join=True
        wait_until(lambda: agreed([a, b], {"a", "b"}), "b back in the ring by its auto-join")
        assert "b left the ring" in admin.leave("b")
        b.stop()
        b, _ = make("b", auto_join=False)                 # restarted, auto_join=False
        wait_until(lambda: "b" in a.registered(), "b to register again")
        assert "b" not in admin.status()["members"] or not admin.status()["members"]["b"]["in_ring"]
        assert "b joined the ring" in admin.join("b")
        wait_until(lambda: agreed([a, b], {"a", "b"}), "b back in once joined")


def test_coordinator_join_and_leave_reach_the_leader(make):
    a, _ = make("a")
    b, _ = make("b")
    wait_until(lambda: agreed([a, b], {"a", "b"}), "the first agreed ring")
    follower = b if a.is_leader else a
    follower.leave(follower.local.node_id)
    wait_until(lambda: agreed([a, b], {"a", "b"} - {follower.local.node_id}), "the follower to leave")
    follower.set_weight(follower.local.node_id, 2.0)
    follower.join(follower.local.node_id)
    wait_until(lambda: agreed([a, b], {"a", "b"}), "the follower to come back")
    assert a.view.members[follower.local.node_id].weight == 2.0


def test_unreachable_zookeeper_raises_unavailable(zk_cluster_name, zk_supervisor):
    hosts = f"127.0.0.1:{free_port()}"
    coordinator = ZooKeeperCoordinator(hosts, zk_cluster_name, member("a"), supervisor=zk_supervisor,
                                       connect_timeout=1.0)
    with pytest.raises(Unavailable) as info:
        coordinator.start()
    assert hosts in str(info.value)
    coordinator.stop()
    with pytest.raises(Unavailable) as info:
        RingAdmin(hosts, zk_cluster_name, connect_timeout=1.0).status()
    assert hosts in str(info.value)


def test_bad_configuration_raises_config_error(zk_supervisor):
    with pytest.raises(ConfigError):
        ZooKeeperCoordinator("127.0.0.1:1", "bad/cluster", member("a"), supervisor=zk_supervisor)
    with pytest.raises(ConfigError):
        ZooKeeperCoordinator("127.0.0.1:1", "ok", member("a"), supervisor=zk_supervisor, session_timeout=0)
    with pytest.raises(ConfigError):
        ZooKeeperCoordinator("", "ok", member("a"), supervisor=zk_supervisor)
    with pytest.raises(ConfigError, match="Supervisor"):
        ZooKeeperCoordinator("127.0.0.1:1", "ok", member("a"), supervisor=None)  # type: ignore[arg-type]


def test_confirm_view_answers_from_a_round_trip_to_zookeeper(make, zk_server):
    """A node resumed from a freeze asks ZooKeeper whether its ring is still
    the newest on a live session before a standby copy may run: yes for the
    ring it holds, no for an older epoch, and no once its session expired
    (until it has a new one and the ring again)."""
    nodes = [make(f"n{i}") for i in range(2)]
    coordinators = [c for c, _ in nodes]
    wait_until(lambda: agreed(coordinators, {"n0", "n1"}), "an agreed ring")
    node = coordinators[1]

    def ask(epoch: int) -> list[bool]:
        answers: list[bool] = []
        node.confirm_view(epoch, answers.append)
        wait_until(lambda: answers, "the coordinator's answer")
        return answers

    epoch = node.view.epoch
    assert ask(epoch) == [True]
    assert ask(epoch - 1) == [False]
    expire_session(zk_server.hosts, node.client)
    wait_until(lambda: node.session_lost() or node.view.epoch > epoch, "the session lost (or already renewed)")
    if node.session_lost():
        assert ask(node.view.epoch) == [False]
    wait_until(lambda: not node.session_lost() and agreed(coordinators, {"n0", "n1"}), "the node back in the ring")
    wait_until(lambda: ask(node.view.epoch) == [True], "the new session's ring confirmed")


@pytest.mark.parametrize("change", ["leave", "join", "set_weight"])
def test_a_connection_lost_during_a_ring_change_is_refused_as_one_lost_before(make, change, monkeypatch):
    """Fault: the ZooKeeper session was usable when a ring change was asked,
    then the connection went (a server stopped, the ensemble lost its
    quorum) during the write: the caller got "ZooKeeper at ...:
    ConnectionLoss", where a change asked a moment later gets "ring changes
    are refused until it is back" (a CI run of the quorum-loss test caught
    the race). The same words now, saying the change may or may not have
    been stored and is safe to ask again."""
    a, _ = make("a")
    wait_until(lambda: a.is_leader and "a" in a.view.members, "a to lead")
    store = a._store
    assert store is not None

    def lost(*args, **kwargs):
        raise Unavailable(f"ZooKeeper at {store.hosts}: ConnectionLoss", hosts=store.hosts)
    monkeypatch.setattr(store, "update_desired", lost)
    with pytest.raises(Unavailable, match="cannot .*: ZooKeeper at .*: ConnectionLoss .*may or may not have been "
                                          "stored.*ring changes are refused until it is back"):
        if change == "leave":
            a.leave("b")
        elif change == "join":
            a.join("b")
        else:
            a.set_weight("a", 2.0)


def test_a_registration_cut_by_a_server_failover_is_tried_again(make, monkeypatch, caplog):
    """Fault: the ZooKeeper server a starting node connected to goes down
    while the node registers (seen in the chaos test of the ensemble's
    faults: a node restarted 0.4 s before its server was killed). The
    operation in flight fails ``ConnectionLoss`` (``Unavailable``) while
    kazoo moves the session to another server; the node's start ended with
    ``miyaq: error: ZooKeeper at ...: ConnectionLoss``. Now the
    registration's steps, all idempotent, run again: the node registers and
    takes its place in the ring, one WARNING saying so."""
    from miyaq.cluster.zk_store import ZnodeStore
    real_register = ZnodeStore.register
    cuts = {"ensure_paths": 1, "register": 1}

    def cut(name, real):
        def step(self, *args, **kwargs):
            if cuts[name]:
                cuts[name] -= 1
                if name == "register":
                    real(self, *args, **kwargs)      # stored, and the answer lost: found ours the next time
                raise Unavailable(f"ZooKeeper at {self.hosts}: ConnectionLoss", hosts=self.hosts)
            return real(self, *args, **kwargs)
        return step

    monkeypatch.setattr(ZnodeStore, "ensure_paths", cut("ensure_paths", ZnodeStore.ensure_paths))
    monkeypatch.setattr(ZnodeStore, "register", cut("register", real_register))
    with caplog.at_level("WARNING", logger="miyaq.cluster.zk_coordinator"):
        coordinator, _ = make("n0")
    assert cuts == {"ensure_paths": 0, "register": 0}
    wait_until(lambda: agreed([coordinator], {"n0"}), "the node alone in the ring")
    assert set(coordinator.registered()) == {"n0"}
    # Two tries failed; the second within 10 s of the first, so one line
    # (zk_failover.REGISTER_RETRY_LINES).
    retried = [r for r in caplog.records if "failed while registering" in r.getMessage()]
    assert len(retried) == 1, [r.getMessage() for r in caplog.records]
    assert "1 try failed" in retried[0].getMessage()


def test_a_registration_tried_again_after_its_join_was_stored_is_not_listed_at_start(make, monkeypatch, caplog):
    """Fault: a new node's join is stored in ZooKeeper and its answer lost
    (the server it talked to went down: ``ConnectionLoss``); the leader
    puts the node in the ring meanwhile. The registration's steps ran again
    (:func:`~miyaq.cluster.zk_failover.through_failover`) and read the ring
    again before registering: it listed the node -- by this start's own
    join -- and ``listed_at_start`` said True, so a node new to the ring
    (an empty log) held its dispatching to reconcile, as a member restarted
    with a lost disk does, and logged that. The ring read before the first
    registration is the one that counts."""
    from miyaq.cluster.zk_ring_changes import RingChanges
    a, _ = make("a")
    wait_until(lambda: set(a.view.members) == {"a"}, "a ring of a")
    real_auto_join = RingChanges.auto_join
    cuts = {"auto_join": 1}

    def auto_join(self, store):
        real_auto_join(self, store)
        if cuts["auto_join"]:
            cuts["auto_join"] -= 1
            # stored; the leader takes it in before the next try reads the ring
            wait_until(lambda: set(a.view.members) == {"a", "b"}, "b in a's ring")
            raise Unavailable(f"ZooKeeper at {store.hosts}: ConnectionLoss", hosts=store.hosts)

    monkeypatch.setattr(RingChanges, "auto_join", auto_join)
    with caplog.at_level("WARNING", logger="miyaq.cluster.zk_coordinator"):
        b, _ = make("b")
    assert cuts == {"auto_join": 0}
    assert [r for r in caplog.records if "failed while registering" in r.getMessage()]
    assert b.listed_at_start() is False
    wait_until(lambda: agreed([a, b], {"a", "b"}), "a and b agree on a ring of both")
