"""Periodic schedules belong to the key that declared them (issue 9): another
key can neither change one (the "billing" hijack) nor take every slot (so
legitimate workers' READY keeps working). Over the wire against a real node
with keys, and in ZooKeeper, which settles ownership between nodes."""
from __future__ import annotations

import os
import time

import msgpack
import pytest

from miyaq.cluster.periodic_store import ZkPeriodicStore
from miyaq.cluster.zk_client import close_client, connect
from miyaq.errors import Forbidden, InvalidField
from miyaq.periodic.specs import ScheduleTable
from miyaq.protocol import commands as c
from miyaq.protocol.periodic import Declared, Schedule

from secure_harness import Keys, Speaker, make_keys


@pytest.fixture
def keys(tmp_path) -> Keys:
    return make_keys(os.path.join(str(tmp_path), "keys"), ("billing", "worker"), ("mallory", "worker"))


def schedule(name: str, every: float, queue: str = "default") -> dict:
    return {"name": name, "task": "charge", "every": every, "queue": queue, "body": msgpack.packb([[], {}])}


def ready(speaker: Speaker, wid: str, periodic: list[dict]) -> tuple[bytes, dict]:
    """READY declaring ``periodic``; the node's answer (WELCOME or ERROR)."""
    speaker.send(c.READY, {"worker": wid, "queues": ["default"], "names": ["charge"], "periodic": periodic})
    got = speaker.recv(skip=(c.HEARTBEAT, c.RECONNECT))
    assert got is not None
    return got


def held(node) -> dict[str, Schedule]:
    return {k.schedule.name: k.schedule for k in node.node.part("periodic").known()}


def test_schedule_hijack_by_another_key_is_refused(ctx, make_node, keys):
    """Attack: a worker key re-declares the "billing" schedule as a 0.5 s schedule
    firing into another queue. Its READY is refused ``forbidden`` (the worker is
    not registered, nothing is kept); declaring it unchanged is allowed."""
    node = make_node(keys=keys.dir)
    owner = Speaker(ctx, node.endpoint, (*keys.pair("billing"), keys.server_public))
    mallory = Speaker(ctx, node.endpoint, (*keys.pair("mallory"), keys.server_public))
    assert ready(owner, "billing-1", [schedule("billing", 3600, "billing")])[0] == c.WELCOME
    command, body = ready(mallory, "m-1", [schedule("billing", 0.5, "mallory"), schedule("mine", 60)])
    assert command == c.ERROR and body["code"] == "forbidden", body
    assert "belongs to key 'billing'" in body["message"]
    assert held(node)["billing"].queue == "billing" and "mine" not in held(node)
    assert node.node.status(time.time())["totals"]["workers"] == 1
    assert ready(mallory, "m-1", [schedule("billing", 3600, "billing")])[0] == c.WELCOME   # unchanged: fine
    assert ready(owner, "billing-2", [schedule("billing", 1800, "billing")])[0] == c.WELCOME   # its owner may
    assert held(node)["billing"].every_ms == 1_800_000


def test_schedule_slot_exhaustion_by_one_key_is_refused(ctx, make_node, keys):
    """Attack: one worker key declares schedules until the node's slots are full,
    so every other worker that declares one fails READY and gets no work. A key
    owns at most MAX_SCHEDULES_PER_KEY: past it that key's READY is refused, and
    the legitimate worker's READY still succeeds."""
    node = make_node(keys=keys.dir)
    mallory = Speaker(ctx, node.endpoint, (*keys.pair("mallory"), keys.server_public))
    owner = Speaker(ctx, node.endpoint, (*keys.pair("billing"), keys.server_public))
    limit = node.node.part("periodic").specs.max_per_owner
    assert ready(mallory, "m-1", [schedule(f"junk-{i}", 60) for i in range(limit)])[0] == c.WELCOME
    command, body = ready(mallory, "m-2", [schedule(f"more-{i}", 60) for i in range(500)])
    assert command == c.ERROR and body["code"] == "invalid_field" and f"at most {limit}" in body["message"]
    assert ready(owner, "billing-1", [schedule("billing", 3600)])[0] == c.WELCOME
    assert len(held(node)) == limit + 1


def test_schedule_table_owner_rules():
    """The rules, table by table: a different spec from another key is refused
    with nothing kept; the same spec keeps the owner; without keys anyone may
    change a schedule (there is no owner); a schedule declared before keys
    were on is claimed by the first key; the per-key limit counts owned ones."""
    table = ScheduleTable(max_schedules=10, max_per_owner=2)
    a1, a2 = Schedule("a", "t", every_ms=1000), Schedule("a", "t", every_ms=2000)
    assert table.declare([a1], "w1", 1.0, "k1") == ["a"]
    with pytest.raises(Forbidden, match="belongs to key 'k1'"):
        table.declare([a2, Schedule("b", "t", every_ms=1)], "w2", 2.0, "k2")
    assert table.entries["a"].schedule == a1 and "b" not in table.entries
    assert table.declare([a1], "w2", 3.0, "k2") == [] and table.entries["a"].owner == "k1"
    free = ScheduleTable()
    free.declare([a1], "w1", 1.0)
    assert free.declare([a2], "w2", 2.0) == ["a"]                 # no keys: newest declaration wins
    assert free.declare([a2], "w3", 3.0, "k3") == [] and free.entries["a"].owner == "k3"
    table.declare([Schedule("b", "t", every_ms=1000)], "w1", 4.0, "k1")
    with pytest.raises(InvalidField, match="at most 2"):
        table.declare([Schedule("c", "t", every_ms=1000)], "w1", 5.0, "k1")


def test_zookeeper_keeps_a_schedule_with_its_owner(zk_server, zk_cluster_name):
    """Attack, in a cluster: the hijacking READY reaches a node that has not
    read the owner's spec yet, so that node publishes the change. ZooKeeper's
    record keeps the owner's spec (compare-and-set settles it), and a leader
    merging the store takes the owner's version over its own."""
    zk = connect(zk_server.hosts, 4.0, 10.0)
    try:
        store = ZkPeriodicStore(zk, zk_cluster_name, zk_server.hosts)
        billing = Schedule("billing", "charge", every_ms=3_600_000, queue="billing")
        hijack = Schedule("billing", "charge", every_ms=500, queue="mallory")
        ours = Declared(billing, 10.0, 10.0, "billing")
        assert store.publish_spec(ours, 300) == ours
        assert store.publish_spec(Declared(hijack, 20.0, 20.0, "mallory"), 300) == ours
        assert store.read_specs() == {"billing": ours}
        leader = ScheduleTable()
        leader.declare([hijack], "m-1", 20.0, "mallory")      # it reached the leader before its first reload
        assert leader.merge(store.read_specs()) == ["billing"]
        assert leader.entries["billing"].schedule == billing and leader.entries["billing"].owner == "billing"
        change = Schedule("billing", "charge", every_ms=1000, queue="billing")
        assert store.publish_spec(Declared(change, 30.0, 30.0, "billing"), 300).schedule == change   # its owner may
    finally:
        close_client(zk)
