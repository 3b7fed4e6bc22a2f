"""A periodic schedule's ``ttl`` (docs/periodic.md, "Options"): each tick's
task is submitted with it, so ticks no worker starts expire instead of
piling up in their queue.

Each test's docstring names the fault it simulates. No timing assertions:
the scheduler and the engine are driven with an explicit clock, and the
tests on a real node wait on conditions.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import zmq

import miyaq
from miyaq.cluster.periodic_store import ZkPeriodicStore
from miyaq.cluster.zk_client import close_client, connect
from miyaq.cluster.zk_layout import dump_json
from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.core.local_intake import LocalIntake
from miyaq.errors import ConfigError, InvalidField
from miyaq.periodic.scheduler import PeriodicScheduler
from miyaq.periodic.specs import ScheduleTable
from miyaq.protocol import commands as c
from miyaq.protocol.periodic import Declared, Schedule, schedule_from_wire, schedules_from_wire
from miyaq.testing.harness import wait_for
from miyaq.core.task_names import TaskNames

pytestmark = pytest.mark.timeout(60)
T0 = 1_700_000_000.0


def engine_scheduler(spec: dict[str, Any]) -> tuple[PeriodicScheduler, Engine]:
    """A leading scheduler over a real engine and a standalone node's intake
    (no worker takes anything); ``spec`` is declared as READY would (its
    wire form), by worker w1, which stays connected."""
    config = NodeConfig(node_id="stub")
    engine = Engine(config)
    role = SimpleNamespace(is_leader=True, new_intake=lambda ack: LocalIntake(engine, ack),
                           add_leader_listener=lambda fn: None)
    sched = PeriodicScheduler(config, engine, SimpleNamespace(by_wid={"w1": 1}, task_names=TaskNames()), role,  # type: ignore[arg-type]
                              None)  # type: ignore[arg-type]
    sched._on_leadership(True, 1)
    sched.declare(schedules_from_wire([spec], ["sweep"]), "w1", T0 - 60)
    return sched, engine


def run_for(sched: PeriodicScheduler, engine: Engine, seconds: int) -> int:
    """Drive both clocks a second at a time; the most ticks ever ready at once."""
    most = 0
    for i in range(seconds):
        now = T0 + i + 0.5
        sched._step(now)
        engine.fire_due(now)
        most = max(most, engine.queue_counts().get("maint", {}).get("ready", 0))
    return most


def test_ticks_with_a_ttl_expire_instead_of_piling_up_while_no_worker_serves_the_queue():
    """Fault (a newcomer's report): ``every=1`` with its worker stopped for
    ten minutes left 600 ready ticks in ``maint``, and a worker that came
    back ran them all. With ``ttl=5`` a tick no worker started within 5 s
    expires: never more than about ttl/every ticks are ready at once, and
    the others are counted ``expired``."""
    sched, engine = engine_scheduler({"name": "sweep", "task": "sweep", "every": 1, "queue": "maint", "ttl": 5})
    most = run_for(sched, engine, 600)
    assert sched.fired == 599                      # a new schedule starts with its next tick
    assert most <= 5 + 1, f"{most} ticks were ready at once; a ttl of 5 s at one tick a second allows about 5"
    outcomes = engine.outcome_totals()
    assert outcomes["expired"] == 599 - engine.queue_counts()["maint"]["ready"]
    assert engine.info("periodic-sweep-1700000001")["state"] == "expired"


def test_a_ticks_task_carries_the_schedules_ttl():
    """Fault: the schedule's ttl is lost on its way to the task (the tick
    submitted without one). The stored task expires ``ttl`` seconds after
    it was accepted, as a submitted task with that ttl does."""
    sched, engine = engine_scheduler({"name": "sweep", "task": "sweep", "every": 10, "queue": "maint",
                                      "ttl": 2.5})
    sched._step(T0 + 1)
    sched._step(T0 + 10.25)
    header = engine.info("periodic-sweep-1700000010")
    assert header["state"] == "ready" and header["expires"] == header["created"] + 2.5


def test_a_schedule_without_a_ttl_fires_ticks_that_wait_as_before():
    """Not a fault: a schedule declared without ``ttl`` (an older worker's,
    or one that does not ask for it) behaves as before: its ticks carry no
    ttl and wait for a worker however long -- one per tick, never more."""
    sched, engine = engine_scheduler({"name": "sweep", "task": "sweep", "every": 1, "queue": "maint"})
    most = run_for(sched, engine, 120)
    assert most == sched.fired == 119 and "expired" not in engine.outcome_totals()
    assert "expires" not in engine.info("periodic-sweep-1700000001")
    schedule = schedule_from_wire({"name": "sweep", "task": "sweep", "every": 1})
    assert schedule.ttl is None and "ttl" not in schedule.to_wire() and "ttl" not in schedule.task_wire(1000)


@pytest.mark.parametrize("ttl,words", [
    (0, "'ttl' must be between 0.001 and"),
    (-1, "'ttl' must be between 0.001 and"),
    (float("nan"), "'ttl' must be between 0.001 and"),
    (11 * 365 * 86400, "'ttl' must be between 0.001 and"),
    ("60", "'ttl' must be a number, not str"),
    (True, "'ttl' must be a number, not bool"),
])
def test_a_bad_ttl_is_refused_when_the_schedule_is_declared(ttl, words):
    """Fault: a typo in a schedule's ttl. ``@app.periodic`` raises
    ConfigError naming the schedule and the option (SUBMIT's bounds: 0.001 s
    to 10 years) at import time, and registers nothing."""
    app = miyaq.App()
    with pytest.raises(ConfigError, match=f"periodic schedule 'job': field {words}"):
        app.periodic(every=60, name="job", ttl=ttl)(lambda: None)
    assert app.schedules == {} and app.tasks == {}


def test_the_ttl_is_the_schedules_own_never_its_tasks():
    """Fault it guards against: a schedule stacked over ``@app.task(ttl=30)``
    took the task's ttl, so an existing schedule's ticks began to expire
    after an upgrade nobody asked for. Only ``@app.periodic(ttl=...)`` gives
    ticks a ttl; the READY form carries it."""
    app = miyaq.App()

    @app.periodic(every=60, name="hourly-ttl", ttl=600)
    @app.periodic(every=60, name="plain")
    @app.task(name="sweep", queue="maint", ttl=30)
    def sweep() -> None: ...

    assert "ttl" not in app.schedules["plain"] and app.schedules["hourly-ttl"]["ttl"] == 600
    assert schedules_from_wire(list(app.schedules.values()), ["sweep"])[1].ttl == 600


def test_a_schedules_ttl_is_not_given_to_the_handler_it_registers():
    """Fault: ``@app.periodic(every=3600, ttl=90)`` over a bare function
    registers its handler as a task, and passed that task every option it
    was given, ``ttl`` included: ``cleanup.submit()`` by hand (an operator
    running it now) was sent with ``ttl`` 90 and expired unstarted after 90
    s in a busy queue. The ttl is the ticks' own, in both directions: the
    handler's queue, priority, timeout and max_retries still come from the
    schedule, as before."""
    app = miyaq.App()

    @app.periodic(every=3600, ttl=90, queue="maint", max_retries=2, name="cleanup")
    def cleanup() -> None: ...

    assert app.schedules["cleanup"]["ttl"] == 90
    assert cleanup.options == {"queue": "maint", "max_retries": 2}


def test_a_different_ttl_is_a_changed_declaration_and_the_newest_wins():
    """Fault: a deploy changes only a schedule's ttl. It is a changed
    declaration (the newest wins, and starts with its next tick), not the
    same one kept with the older ttl."""
    table = ScheduleTable()
    table.declare([Schedule("m", "t", every_ms=1000)], "w1", 1.0)
    assert table.declare([Schedule("m", "t", every_ms=1000, ttl=5.0)], "w2", 2.0) == ["m"]
    assert table.entries["m"].schedule.ttl == 5.0 and table.entries["m"].declared == 2.0


def refused_ready(endpoint: str, schedules: list[dict[str, Any]]) -> dict[str, Any]:
    """Send one READY declaring ``schedules``; its ERROR body (fails unless refused)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        body = {"worker": "w-bad", "names": ["t"], "capacity": 1, "periodic": schedules}
        sock.send_multipart([c.TAG, c.READY, msgpack.packb(body)])
        assert sock.poll(10_000), "no answer"
        _tag, command, raw = sock.recv_multipart()
        assert command == c.ERROR, command
        return msgpack.unpackb(raw)
    finally:
        sock.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("ttl", [0, "5", 11 * 365 * 86400], ids=["zero", "a-string", "eleven-years"])
def test_a_ready_declaring_a_bad_ttl_is_refused_and_changes_nothing(node, client, ttl):
    """Fault: a worker (another language's, or a hand-written READY) declares
    a schedule with a ttl out of SUBMIT's bounds. The READY is refused with
    ``invalid_field`` naming the schedule and ``ttl``; no schedule and no
    worker is kept; the node serves on."""
    answer = refused_ready(node.endpoint, [{"name": "nightly", "task": "t", "every": 60, "ttl": ttl}])
    assert answer["code"] == InvalidField.code
    assert "'nightly'" in answer["message"] and "'ttl'" in answer["message"], answer["message"]
    status = client.status()
    assert status["periodic"]["schedules"] == 0 and status["totals"]["workers"] == 0


def test_a_node_fires_ticks_with_the_ttl_its_ready_declared_and_they_expire(node, client):
    """Fault: the ttl declared in READY does not reach the ticks on a real
    node (lost in the READY's validation, the schedule table, or the tick's
    SUBMIT). With no worker on the schedule's queue, the ticks carry the
    ttl, and a tick nobody started ends ``expired``, counted in STATUS."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.endpoint)
    try:
        body = {"worker": "w-declares", "queues": ["elsewhere"], "names": ["sweep"], "capacity": 1,
                "periodic": [{"name": "sweep", "task": "sweep", "every": 0.2, "queue": "maint", "ttl": 0.6}]}
        sock.send_multipart([c.TAG, c.READY, msgpack.packb(body)])
        assert sock.poll(10_000), "no answer"
        assert sock.recv_multipart()[1] == c.WELCOME
        ticks: list[dict[str, Any]] = []
        wait_for(lambda: ticks.extend(client.tasks(queue="maint")) or ticks, timeout=20, what="a tick")
        tick = ticks[0]
        assert tick["id"].startswith("periodic-sweep-")
        assert tick["expires"] == pytest.approx(tick["created"] + 0.6)
        wait_for(lambda: client.status(tick["id"])["state"] == "expired", timeout=20, what="the tick expired")
        assert client.status()["outcomes"]["expired"] >= 1
    finally:
        sock.close(linger=0)
        ctx.term()


def test_a_schedules_ttl_survives_zookeeper_and_an_older_nodes_spec_has_none(zk_server, zk_cluster_name):
    """Fault: the ttl is dropped between nodes (not written to, or not read
    from, the spec znode): a new leader fired ticks without it. A spec
    written by a node older than ``ttl`` (no such field) reads as a
    schedule without one; a stored spec that differs only by its ttl is
    replaced by a later declaration."""
    zk = connect(zk_server.hosts, 4.0, 10.0)
    try:
        store = ZkPeriodicStore(zk, zk_cluster_name, zk_server.hosts)
        reader = ZkPeriodicStore(zk, zk_cluster_name, zk_server.hosts)
        zk.create(f"{store.specs}/old", dump_json({"spec": {"name": "old", "task": "t", "every": 1.0,
                                                             "queue": "default", "priority": 0, "body": ""},
                                                    "declared": 5.0, "seen": 5.0}), makepath=True)
        with_ttl = Declared(Schedule("old", "t", every_ms=1000, ttl=30.0), 10.0, 10.0)
        assert reader.read_specs() == {"old": Declared(Schedule("old", "t", every_ms=1000), 5.0, 5.0)}
        assert store.publish_spec(with_ttl, 300) == with_ttl
        assert reader.read_specs() == {"old": with_ttl}
    finally:
        close_client(zk)
