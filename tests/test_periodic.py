"""Periodic schedules (docs/periodic.md): declared by workers, fired by the
leader once per tick, resumed by a new leader without catch-up storms.

Each test's docstring names the fault it simulates. No timing assertions:
waits are bounded polls that count ticks; the scheduler's own clock is
driven by hand where a test needs missed ticks.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import zmq
from apps import basic
from cluster_harness import Cluster

import miyaq
from miyaq.cluster.periodic_store import ZkPeriodicStore
from miyaq.cluster.zk_client import close_client, connect
from miyaq.config import NodeConfig
from miyaq.errors import ConfigError, InvalidField
from miyaq.periodic.scheduler import PeriodicScheduler
from miyaq.periodic.specs import ScheduleTable
from miyaq.protocol import commands as c
from miyaq.protocol.periodic import Declared, Schedule, schedule_from_wire, tick_label
from miyaq.testing.harness import wait_for
from miyaq.core.task_names import TaskNames

pytestmark = pytest.mark.timeout(60)
TICK_ID = re.compile(r"^periodic-(?P<name>[\w.:-]+)-(?P<s>\d+)(?:\.(?P<ms>\d{3}))?$")


def tick_of(task_id: str) -> int:
    """The tick (ms) encoded in a periodic task id."""
    m = TICK_ID.match(task_id)
    assert m, task_id
    return int(m["s"]) * 1000 + int(m["ms"] or 0)


# -- the schedule itself --------------------------------------------------------------------
def test_ticks_ids_and_cron_arithmetic():
    """No fault: ticks are multiples of ``every`` since the epoch, or cron
    matches in UTC; ids name the tick in unix seconds."""
    s = Schedule("beat", "t", every_ms=500)
    assert s.latest_tick(1_700_000_000.74) == 1_700_000_000_500
    assert s.next_tick(1_700_000_000_500) == 1_700_000_001_000
    assert s.task_id(1_700_000_000_500) == "periodic-beat-1700000000.500"
    assert tick_label(1_700_000_001_000) == "1700000001"
    cron = schedule_from_wire({"name": "five", "task": "t", "cron": "*/5  * * * *"})
    assert cron.cron == "*/5 * * * *"
    assert cron.latest_tick(1_700_000_100.0) == 1_700_000_100_000     # exactly on a tick
    assert cron.latest_tick(1_700_000_399.9) == 1_700_000_100_000
    assert cron.next_tick(1_700_000_100_000) == 1_700_000_400_000
    assert cron.task_wire(1_700_000_100_000)["id"] == "periodic-five-1700000100"


@pytest.mark.parametrize("options,words", [
    ({"cron": "61 * * * *"}, "not valid"),
    ({"cron": "* * * *"}, "5 fields"),
    ({"cron": "* * * * * *"}, "5 fields"),
    ({"cron": "0 0 30 2 *"}, "never matches"),
    ({"cron": "@reboot"}, "macro"),
    ({"every": 0.01}, "between"),
    ({"every": 1, "cron": "* * * * *"}, "exactly one"),
    ({}, "exactly one"),
    ({"every": 1, "name": "x" * 41}, "1-40 characters"),
    ({"every": 1, "backoff": 2}, "unknown periodic option"),
    # croniter draws a new random value each time it reads an R field: every
    # tick computed would differ (a daily schedule fired 25 times in 5 days)
    ({"cron": "R R * * *"}, "random"),
    ({"cron": "R(0-29) * * * *"}, "random"),
])
def test_bad_schedules_are_refused_when_declared(options, words):
    """Fault: a typo in a schedule. ``@app.periodic`` raises ConfigError with
    a clear message at import time and registers nothing."""
    app = miyaq.App()
    options.setdefault("name", "job")
    with pytest.raises(ConfigError, match=words):
        app.periodic(**options)(lambda: None)
    assert app.schedules == {} and app.tasks == {}


def build_report(kind, full=False):
    return [kind, full]


@pytest.mark.parametrize("args,kwargs,words", [
    ([], None, "missing a required argument: 'kind'"),
    (["daily", True, "extra"], None, "too many positional arguments"),
    (["daily"], {"fulll": True}, "got an unexpected keyword argument 'fulll'"),
])
def test_schedule_arguments_the_handler_cannot_take_are_refused_when_declared(args, kwargs, words):
    """Fault: ``@app.periodic(..., args=[...])`` whose arguments the handler
    cannot take (one missing, one too many, a misspelt keyword). Before
    2026-12-07 the schedule was registered and every tick's task failed
    in the worker with that TypeError, retried, then dead-lettered -- a
    dead letter a tick for as long as the schedule ran. Now ConfigError at
    import time, nothing registered; an existing task scheduled so too."""
    app = miyaq.App()
    with pytest.raises(ConfigError, match=f"@app.periodic on report: its handler cannot take the "
                                          f"schedule's args and kwargs \\({words}"):
        app.periodic(every=60, name="report", args=args, kwargs=kwargs)(build_report)
    assert app.schedules == {} and app.tasks == {}
    task = app.task(build_report, name="reports.build")
    with pytest.raises(ConfigError, match=words):
        app.periodic(every=60, name="report", args=args, kwargs=kwargs)(task)
    assert app.schedules == {} and list(app.tasks) == ["reports.build"]
    app.periodic(every=60, name="report", args=["daily"], kwargs={"full": True})(task)
    assert list(app.schedules) == ["report"]


def test_schedule_arguments_are_checked_against_the_wrapper_that_runs():
    """Fault: a handler under a ``functools.wraps`` decorator that passes an
    argument of its own (a session), scheduled with the arguments its
    wrapper takes. The declaration check read the signature ``__wrapped__``
    points at (the one whose first parameter the decorator fills), so
    ``@app.periodic(args=[...])`` raised ConfigError ("missing a required
    argument") for a schedule every tick of which runs -- while the same
    call through ``submit()`` was taken (taskdef, follow_wrapped=False).
    Now both read the wrapper's; a call it cannot take is still refused."""
    import functools

    def with_session(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn("session", *args, **kwargs)
        return wrapper

    def report(session, kind, full=False):
        return [session, kind, full]

    app = miyaq.App()
    tdef = app.periodic(every=60, name="report", args=["daily"], kwargs={"full": True})(with_session(report))
    assert list(app.schedules) == ["report"] and tdef("weekly") == ["session", "weekly", False]
    app.periodic(every=60, name="wrapped-task", args=["daily"])(app.task(with_session(report), name="r2"))
    assert set(app.schedules) == {"report", "wrapped-task"}
    strict = miyaq.App()
    with pytest.raises(ConfigError, match="missing a required argument: 'kind'"):
        strict.periodic(every=60, name="report", args=["daily"])(report)
    assert strict.schedules == {} and strict.tasks == {}


def test_schedule_args_given_as_a_string_are_checked_as_the_characters_sent():
    """Fault: ``args="daily"`` for ``def build_report(kind, full=False)``
    (the list forgotten). The client sends ``list(args)``, five arguments,
    and every tick's task failed in the worker with TypeError; the check
    at declaration looked only at a list or a tuple, so it was accepted
    (before review36, 2026-12-07). Now ConfigError, nothing registered; a
    string the handler can take as characters, and a generator (read once,
    left to the client), are still accepted."""
    app = miyaq.App()
    with pytest.raises(ConfigError, match="too many positional arguments"):
        app.periodic(every=60, name="report", args="daily")(build_report)
    assert app.schedules == {} and app.tasks == {}
    app.periodic(every=60, name="two", args="ab")(build_report)       # kind="a", full="b": what Python does
    app.periodic(every=60, name="gen", args=(x for x in ["daily"]))(app.tasks["two"])
    assert set(app.schedules) == {"two", "gen"}
    assert msgpack.unpackb(app.schedules["two"]["body"]) == [["a", "b"], {}]


def test_schedule_names_are_unique_and_stack_over_tasks():
    """No fault: one task, two schedules (stacked), a third name clash refused."""
    app = miyaq.App()

    @app.periodic(cron="@hourly", name="hourly", kwargs={"full": True})
    @app.periodic(every=60, name="minutely", queue="maint", priority=-1)
    @app.task(name="sweep", queue="maint", timeout=5)
    def sweep(full=False):
        return full

    assert set(app.schedules) == {"hourly", "minutely"} and list(app.tasks) == ["sweep"]
    assert app.schedules["minutely"]["priority"] == -1 and app.schedules["hourly"]["timeout"] == 5
    assert msgpack.unpackb(app.schedules["hourly"]["body"]) == [[], {"full": True}]
    with pytest.raises(ConfigError, match="already registered"):
        app.periodic(every=5, name="hourly")(sweep)


def test_schedule_table_is_bounded_and_newest_declaration_wins():
    """Fault: workers declare more schedules than a node keeps, and two
    versions of one schedule (a rolling deploy). Past the limit the READY is
    refused whole; the newest declaration of a name replaces the older."""
    table = ScheduleTable(max_schedules=2)
    old, new = Schedule("a", "t", every_ms=1000), Schedule("a", "t", every_ms=2000)
    assert table.declare([old, Schedule("b", "t", every_ms=1000)], "w1", 1.0) == ["a", "b"]
    with pytest.raises(InvalidField, match="limit is 2"):
        table.declare([Schedule("c", "t", every_ms=1000), new], "w2", 2.0)
    assert table.entries["a"].schedule == old and "c" not in table.entries
    assert table.declare([new], "w2", 3.0) == ["a"]
    assert table.entries["a"].schedule == new and table.declare([new], "w3", 4.0) == []


def test_a_schedule_changed_by_a_newer_version_stays_alive_while_the_older_versions_workers_are_connected():
    """Fault (an audit): worker A declares ``report``, worker B a changed
    version (a deploy), then B stops (a rollback) while A stays connected.
    The replacement dropped A from the declarers, and an hour later the
    schedule was forgotten though A still declared it. Now the workers of
    every version keep it alive."""
    table = ScheduleTable(spec_ttl=3600)
    table.declare([Schedule("report", "t", every_ms=1000)], "worker-A", 0.0)
    table.declare([Schedule("report", "t", every_ms=2000)], "worker-B", 10.0)
    assert table.sweep(20.0, {"worker-A"}) == []
    assert table.sweep(3700.0, {"worker-A"}) == [] and "report" in table.entries
    assert table.sweep(3710.0, set()) == [] and table.sweep(7400.0, set()) == ["report"]


@pytest.mark.parametrize("new_every_ms,tick_past,tick_next", [(4000, 12, 16), (1000, 13, 14)],
                         ids=["another-period", "shorter"])
def test_a_changed_schedule_starts_with_its_next_tick_as_a_new_one_does(new_every_ms, tick_past, tick_next):
    """Fault (an audit): a schedule already firing is declared again with
    another timing (every 4 s, or every second, where it was every 10 s).
    Its last handled tick was the older version's, so the new version's
    tick just past fired at once -- a daily report moved to 08:00 and
    deployed at 08:51 ran at 08:51 -- and a shorter period counted the
    ticks between as missed. Now a changed schedule starts with its next
    tick, as the docs promise of a new one."""
    sched, intake = scheduler()
    t0 = 1_700_000_000.0
    sched._step(t0 + 1)
    sched._step(t0 + 10.2)
    assert intake.ids == ["periodic-m-1700000010"]
    sched.declare([Schedule("m", "t", every_ms=new_every_ms)], "w1", t0 + 13.5)
    sched._step(t0 + 13.6)
    assert intake.ids == ["periodic-m-1700000010"], f"the tick at +{tick_past} s, before the change, fired"
    sched._step(t0 + tick_next + 0.1)
    assert intake.ids == ["periodic-m-1700000010", f"periodic-m-{1700000000 + tick_next}"]
    assert sched.missed == 0


# -- the scheduler, with its clock driven by hand -----------------------------------------------
class FakeIntake:
    """Stands for the intake: records submits, answers with ``answers`` (then accepted)."""

    def __init__(self, scheduler: PeriodicScheduler, answers: list[str] | None = None) -> None:
        self.scheduler, self.answers, self.ids = scheduler, list(answers or []), []

    def flush(self) -> None:
        pass   # nothing to send: answers are given at submit

    def sweep(self) -> None:
        pass   # nothing waits

    def submit(self, task: Any, now: float, identity: bytes) -> None:
        self.ids.append(task.id)
        status = self.answers.pop(0) if self.answers else c.ACCEPTED
        detail = {"code": "busy", "message": "full"} if status == c.REJECTED else None
        self.scheduler._acked(identity, [task.id, status, detail])


def scheduler(answers: list[str] | None = None) -> tuple[PeriodicScheduler, FakeIntake]:
    """A scheduler over stubs (only what it touches): a role that leads, one worker w1 connected."""
    role = SimpleNamespace(is_leader=True, new_intake=lambda ack: None, add_leader_listener=lambda fn: None)
    sched = PeriodicScheduler(NodeConfig(node_id="stub"), SimpleNamespace(accepting=True),  # type: ignore[arg-type]
                              SimpleNamespace(by_wid={"w1": 1}, task_names=TaskNames()), role, None)  # type: ignore[arg-type]
    sched._on_leadership(True, 1)
    sched._intake = FakeIntake(sched, answers)
    sched.declare([Schedule("m", "t", every_ms=10_000)], "w1", 0.0)
    return sched, sched._intake


def test_a_tick_held_back_is_no_missed_tick_and_a_worker_taking_any_name_runs_it():
    """Fault: the queue's only worker runs other tasks (another app's): the
    tick is held back (no worker there runs it). Then a worker that declared
    no names (an older worker, or one written without miyaq: it takes any
    name) serves the queue too: the next tick fires -- and is not reported
    as following missed ticks, the held one having been handled (mutation,
    review37: taking a worker of any name for one that runs nothing, or
    leaving the held tick unhandled -- a 'ticks were missed' warning and
    ``missed`` counted at the next -- passed every test)."""
    sched, intake = scheduler()
    names = sched.workers.task_names
    t0 = 1_700_000_000.0
    sched._step(t0 + 1)          # a new schedule starts with its next tick
    names.serve(["default"], frozenset({"other.job"}))
    sched._step(t0 + 10.2)
    assert intake.ids == [] and sched.held_back == 1
    names.serve(["default"], None)
    sched._step(t0 + 20.2)
    assert intake.ids == ["periodic-m-1700000020"]
    assert sched.held_back == 1 and sched.missed == 0
    names.unserve(["default"], None)
    names.unserve(["default"], frozenset({"other.job"}))
    sched._step(t0 + 30.2)       # no worker at all: the tick waits in the queue for one
    assert intake.ids[-1] == "periodic-m-1700000030" and sched.held_back == 1


def test_missed_ticks_fire_only_the_latest():
    """Fault: nobody fired for ten ticks (a long leader failover). Only the
    most recent missed tick fires — no catch-up storm — and no tick twice."""
    sched, intake = scheduler()
    t0 = 1_700_000_000.0
    sched._step(t0 + 1)          # a new schedule starts with its next tick
    assert intake.ids == []
    sched._step(t0 + 10.2)
    sched._step(t0 + 10.3)
    assert intake.ids == ["periodic-m-1700000010"]
    sched._step(t0 + 105)
    sched._step(t0 + 106)
    assert intake.ids == ["periodic-m-1700000010", "periodic-m-1700000100"]
    assert sched.missed == 1 and sched.fired == 2
    assert sched.ticks.load_last("m") == 1_700_000_100_000


def test_rejected_tick_is_submitted_again_with_the_same_id():
    """Fault: the submit of a tick is refused (a holder is down: not enough
    replicas). The same tick is submitted again, with the same id."""
    sched, intake = scheduler(answers=[c.REJECTED])
    t0 = 1_700_000_000.0
    sched._step(t0 + 1)
    sched._step(t0 + 10.1)
    assert sched.rejected == 1 and sched.ticks.load_last("m") == 1_700_000_000_000
    sched._step(t0 + 10.7)       # past the retry delay, same tick still due
    sched._step(t0 + 10.8)       # stores what was accepted
    assert intake.ids == ["periodic-m-1700000010"] * 2
    assert sched.ticks.load_last("m") == 1_700_000_010_000


def test_losing_leadership_stops_firing_at_once():
    """Fault: the leader loses leadership (session suspended). Nothing fires
    from that moment; a new term resumes from the stored tick."""
    sched, intake = scheduler()
    t0 = 1_700_000_000.0
    sched._step(t0 + 1)
    sched._on_leadership(False, 0)
    sched._step(t0 + 30.5)
    assert intake.ids == []
    sched._on_leadership(True, 2)
    sched._step(t0 + 30.6)
    assert intake.ids == ["periodic-m-1700000030"]


def test_clock_set_back_after_firing_ahead_keeps_the_schedule_firing():
    """Fault: the leader's wall clock jumps a day ahead (a bad NTP step) and
    is then set back. The tick fired while it was ahead must not stop the
    schedule until real time reaches it: it fires again at its next tick
    after the clock went back. A small step back (less than a period) does
    not fire a tick twice."""
    sched, intake = scheduler()
    t0 = 1_700_000_000.0
    sched._step(t0 + 1)
    sched._step(t0 + 10.2)
    sched._step(t0 + 86_400.5)           # a day ahead: fires only the latest tick
    assert intake.ids == ["periodic-m-1700000010", "periodic-m-1700086400"]
    sched._step(t0 + 12)                 # set back: nothing is due yet
    sched._step(t0 + 20.2)
    sched._step(t0 + 20.3)
    assert intake.ids[2:] == ["periodic-m-1700000020"]
    sched._step(t0 + 20.1)               # a small step back: no tick twice
    sched._step(t0 + 29.9)
    assert intake.ids[2:] == ["periodic-m-1700000020"]
    sched._step(t0 + 30.1)
    sched._step(t0 + 30.2)               # stores what was accepted
    assert intake.ids[2:] == ["periodic-m-1700000020", "periodic-m-1700000030"]
    assert sched.ticks.load_last("m") == 1_700_000_030_000


def test_clock_set_back_still_forgets_undeclared_schedules():
    """Fault: the clock jumps ahead, then is set back, and the schedule's
    workers are gone for good. Housekeeping must not wait for real time to
    reach the jumped-to time: the schedule is forgotten after its TTL."""
    sched, intake = scheduler()
    t0 = 1_700_000_000.0
    sched._step(t0 + 1)
    sched._step(t0 + 86_400.5)
    sched.workers.by_wid = {}
    sched._step(t0 + 2)
    sched._step(t0 + 2 + sched.specs.spec_ttl + 20)
    assert sched.specs.entries == {}


def test_schedule_nobody_declares_is_forgotten():
    """Fault: every worker declaring a schedule is gone for good (the
    schedule was removed from the code). It stops firing after the TTL."""
    sched, intake = scheduler()
    sched._step(1_700_000_001.0)
    sched.workers.by_wid = {}
    sched._step(1_700_000_001.0 + 6)
    assert "m" in sched.specs.entries
    sched._step(1_700_000_001.0 + sched.specs.spec_ttl + 20)
    assert sched.specs.entries == {} and intake.ids == []


# -- a real node and worker ---------------------------------------------------------------------
def make_app(runs: list[str], every: float = 0.5) -> miyaq.App:
    app = miyaq.App()

    @app.periodic(every=every, name="beat")
    def beat():
        runs.append(miyaq.current_task().id)

    return app


def test_ticks_no_worker_of_the_queue_runs_are_held_back_not_dead_lettered(node, client, thread_worker):
    """Fault: a schedule's workers are gone (the schedule removed from the
    code, the app redeployed elsewhere, or down) while another app's
    workers serve the same queue. The node keeps the schedule for an hour
    (docs/periodic.md, step 6), and before 2026-12-07 it fired every tick
    all that time: each went to the other app's worker, failed
    ``UnknownTask`` and was dead-lettered -- a dead letter a tick (840 in
    15 minutes of an ``every=1`` schedule in a Celery team's trial), where
    the page said its tasks wait for a worker. Now such a tick is held
    back (STATUS ``periodic.held_back``), nothing dead-lettered; the
    schedule fires again once a worker that runs its task is back."""
    runs: list[str] = []
    scheduled = miyaq.App()

    @scheduled.periodic(every=0.2, name="beat", max_retries=0)
    def beat():
        runs.append(miyaq.current_task().id)

    other = miyaq.App()
    other.task(lambda: None, name="other.job")
    first = thread_worker(scheduled, node.endpoint)
    thread_worker(other, node.endpoint)
    wait_for(lambda: runs, timeout=20, what="a tick run by the schedule's worker")
    first.stop()
    stopped = time.time()       # ticks fired before may be given back and dead-lettered: they were sent

    def dead_after() -> list[str]:
        ids = [t["id"] for t in client.dead("list")["tasks"]]
        return [i for i in ids if tick_of(i) / 1000 > stopped + 0.25]

    wait_for(lambda: client.status()["periodic"].get("held_back", 0) >= 3 or dead_after(),
             timeout=20, what="ticks held back, or dead-lettered")
    assert dead_after() == []
    assert client.status()["periodic"]["held_back"] >= 3
    ran = len(runs)
    thread_worker(scheduled, node.endpoint)
    wait_for(lambda: len(runs) > ran, timeout=20, what="a tick once the schedule's worker is back")
    assert dead_after() == []


def test_a_schedule_of_another_queue_than_its_task_is_consumed_by_the_app_s_workers(node, client, thread_worker):
    """Fault: ``@app.periodic(queue="reports")`` stacked on an ``@app.task``
    of ``default`` -- a Celery team's ``beat_schedule`` entry with
    ``options={"queue": ...}``. The ticks go to ``reports``, and before
    2026-12-07 ``app.queues()`` (what ``miyaq worker`` consumes) named only
    the tasks' queues: no worker of the app took a tick, ever. Now the
    schedules' queues are the app's queues too."""
    runs: list[str] = []
    app = miyaq.App()

    @app.periodic(every=0.2, name="nightly", queue="reports")
    @app.task(name="sweep")
    def sweep():
        runs.append(miyaq.current_task().queue)

    assert app.queues() == ["default", "reports"]
    thread_worker(app, node.endpoint)
    wait_for(lambda: runs, timeout=20, what="a tick of the schedule run by the app's worker")
    assert set(runs) == {"reports"}


def test_standalone_node_fires_each_tick_once(node, client, thread_worker):
    """Fault: two workers declare the same schedule (an overlapping deploy)
    and one re-registers. Each tick still runs once, with its deterministic id."""
    runs: list[str] = []
    app = make_app(runs)
    thread_worker(app, node.endpoint)
    thread_worker(app, node.endpoint)
    wait_for(lambda: len(set(runs)) >= 4, timeout=20, what="four ticks")
    status = client.status()["periodic"]
    assert status["schedules"] == 1 and status["leading"] and status["rejected"] == 0
    counts = Counter(runs)
    assert max(counts.values()) == 1, counts
    ticks = [tick_of(i) for i in counts]
    assert all(TICK_ID.match(i)["name"] == "beat" for i in counts)
    assert all(t % 500 == 0 for t in ticks)


def test_bad_spec_in_ready_is_refused_and_node_keeps_serving(node, client):
    """Fault: a worker (another language's) sends READY with a bad cron. It
    gets INVALID_FIELD naming the schedule; nothing is kept; the node serves on."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.endpoint)
    try:
        body = {"worker": "w-bad", "names": ["t"], "capacity": 1,
                "periodic": [{"name": "nightly", "task": "t", "cron": "0 25 * * *"}]}
        sock.send_multipart([c.TAG, c.READY, msgpack.packb(body)])
        assert sock.poll(10_000), "no answer"
        _tag, command, raw = sock.recv_multipart()
        answer = msgpack.unpackb(raw)
        assert command == c.ERROR and answer["code"] == InvalidField.code
        assert "nightly" in answer["message"] and "cron" in answer["message"]
    finally:
        sock.close(linger=0)
        ctx.term()
    status = client.status()
    assert status["periodic"]["schedules"] == 0 and status["totals"]["workers"] == 0


def test_a_schedule_whose_arguments_exceed_max_payload_is_refused_at_ready(make_node) -> None:
    """Fault: a worker declares a schedule whose arguments are over the node's
    ``max_payload`` (lowered from the default). Before 2026-12-05 the READY
    was accepted and every tick's task refused later, in the node's log
    only, counted as a missed tick. Now the READY is refused, naming the
    schedule and the limit, and nothing is kept."""
    node = make_node(max_payload=1000)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.endpoint)
    try:
        body = {"worker": "w-big", "names": ["t"], "capacity": 1,
                "periodic": [{"name": "big", "task": "t", "every": 10, "body": b"x" * 2000}]}
        sock.send_multipart([c.TAG, c.READY, msgpack.packb(body)])
        assert sock.poll(10_000), "no answer"
        _tag, command, raw = sock.recv_multipart()
        answer = msgpack.unpackb(raw)
        assert command == c.ERROR and answer["code"] == InvalidField.code
        assert "'big'" in answer["message"] and "max_payload (1000)" in answer["message"]
    finally:
        sock.close(linger=0)
        ctx.term()


# -- ZooKeeper storage --------------------------------------------------------------------------
def test_zookeeper_tick_record_is_fenced_by_epoch(zk_server, zk_cluster_name):
    """Fault: a deposed leader (epoch 4) still writes after a newer one
    (epoch 5) did. Its write is refused; specs merge newest-declared-wins."""
    zk = connect(zk_server.hosts, 4.0, 10.0)
    try:
        old, new = (ZkPeriodicStore(zk, zk_cluster_name, zk_server.hosts) for _ in range(2))
        assert old.load_last("m") is None and new.load_last("m") is None
        assert old.save_last("m", 1000, 4, "n0")
        assert new.save_last("m", 2000, 5, "n1")
        assert not old.save_last("m", 3000, 4, "n0")
        assert new.load_last("m") == 2000
        a = Schedule("m", "t", every_ms=1000)
        b = Schedule("m", "t", every_ms=2000)
        assert new.publish_spec(Declared(a, 10.0, 10.0), 300) == Declared(a, 10.0, 10.0)
        assert old.publish_spec(Declared(b, 5.0, 50.0), 300).schedule == a      # declared earlier: loses
        assert old.publish_spec(Declared(a, 1.0, 400.0), 300) == Declared(a, 10.0, 400.0)
        assert old.publish_spec(Declared(b, 20.0, 20.0), 300) == Declared(b, 20.0, 400.0)
        assert new.read_specs() == {"m": Declared(b, 20.0, 400.0)}
        new.forget("m")
        assert new.read_specs() == {} and new.load_last("m") is None
    finally:
        close_client(zk)


def test_the_leaders_periodic_reread_of_the_specs_fetches_only_what_changed(zk_server, zk_cluster_name, caplog,
                                                                            monkeypatch):
    """Cost fault: the leader rereads every stored spec every SPEC_RELOAD
    seconds; each read fetched and decoded all of them (about 87 MB at the
    limits) and logged every corrupt znode again. Now a read asks each
    znode's stat and fetches only specs created or changed since the last
    read -- and still sees a change, a deletion, a new spec and a spec
    deleted and made again with the same content."""
    zk = connect(zk_server.hosts, 4.0, 10.0)
    try:
        store = ZkPeriodicStore(zk, zk_cluster_name, zk_server.hosts)
        writer = ZkPeriodicStore(zk, zk_cluster_name, zk_server.hosts)
        specs = {name: Declared(Schedule(name, "t", every_ms=1000), 10.0, 10.0) for name in ("a", "b", "c")}
        for declared in specs.values():
            writer.publish_spec(declared, 300)
        zk.create(f"{writer.specs}/bad", b"{not json")
        fetched: list[str] = []
        real_get = zk.get_async

        def counting_get(path, *args, **kwargs):
            fetched.append(path.rsplit("/", 1)[-1])
            return real_get(path, *args, **kwargs)

        monkeypatch.setattr(zk, "get_async", counting_get)
        with caplog.at_level("WARNING", logger="miyaq.cluster.periodic_store"):
            assert store.read_specs() == specs
            assert sorted(fetched) == ["a", "b", "bad", "c"]
            fetched.clear()
            assert store.read_specs() == specs and fetched == []
        assert len([r for r in caplog.records if "bad" in r.getMessage()]) == 1

        changed = Declared(Schedule("b", "t", every_ms=2000), 20.0, 20.0)
        writer.publish_spec(changed, 300)
        writer.forget("c")
        writer.forget("a")
        writer.publish_spec(specs["a"], 300)          # deleted and made again, the same content
        writer.publish_spec(Declared(Schedule("d", "t", every_ms=1000), 30.0, 30.0), 300)
        fetched.clear()
        assert store.read_specs() == {"a": specs["a"], "b": changed,
                                      "d": Declared(Schedule("d", "t", every_ms=1000), 30.0, 30.0)}
        assert sorted(fetched) == ["a", "b", "d"]
    finally:
        close_client(zk)


# -- a real cluster -----------------------------------------------------------------------------
@pytest.fixture
def cluster(procs, zk_server, zk_cluster_name, client_for):
    return Cluster(procs, zk_server.hosts, zk_cluster_name, client_for)


def tick_runs(path: str) -> Counter:
    return Counter(e[1] for e in basic.read_events(path) if e[0] == "tick")


def test_cluster_fires_each_tick_once_and_a_new_leader_resumes(cluster, procs, tmp_path):
    """Fault: kill -9 of the leader while a 1 s schedule runs on a 3-node
    cluster. A new leader keeps firing; every tick's task ran once
    cluster-wide (a duplicate would show as a repeated id)."""
    path = str(tmp_path / "events.jsonl")
    cluster.start(3)
    procs.worker("apps.periodic_app:app", cluster.nodes["n0"].endpoint, 2, env={"MIYAQ_TEST_EVENTS": path})
    wait_for(lambda: len(tick_runs(path)) >= 3, timeout=20, what="three ticks")
    leader = cluster.ring("n0")["leader"]
    cluster.kill(leader)
    rest = [n for n in cluster.nodes if n != leader]
    cluster.wait_ring(set(rest), via=rest)
    new_leader = cluster.ring(rest[0])["leader"]
    after = time.time() * 1000
    wait_for(lambda: sum(1 for i in tick_runs(path) if tick_of(i) > after) >= 3, timeout=20,
             what="three ticks fired by the new leader")
    runs = tick_runs(path)
    assert max(runs.values()) == 1, [i for i, n in runs.items() if n > 1]
    assert all(tick_of(i) % 1000 == 0 for i in runs)
    assert cluster.stats(new_leader)["periodic"]["leading"]
    assert not any(cluster.stats(n)["periodic"]["leading"] for n in rest if n != new_leader)


def test_new_leader_fires_schedules_it_only_knows_from_zookeeper(cluster, procs, tmp_path):
    """Fault: the worker that declared a schedule dies, a node that never
    heard from it joins, then every other node is killed. The last node
    becomes leader and fires the schedule from the specs in ZooKeeper."""
    path = str(tmp_path / "events.jsonl")
    cluster.start(2)
    worker = procs.worker("apps.periodic_app:app", cluster.nodes["n0"].endpoint, 2,
                          env={"MIYAQ_TEST_EVENTS": path})
    wait_for(lambda: len(tick_runs(path)) >= 1, timeout=20, what="a tick")
    worker.kill()
    cluster.start_node("n2")
    cluster.wait_ring({"n0", "n1", "n2"})
    assert cluster.stats("n2")["periodic"]["schedules"] == 0
    cluster.kill("n0")
    cluster.kill("n1")
    cluster.wait_ring({"n2"}, via=["n2"])
    wait_for(lambda: cluster.stats("n2")["periodic"]["fired"] >= 2, timeout=20, what="n2 firing")
    tasks = cluster.client("n2").tasks(limit=100)
    assert tasks and all(TICK_ID.match(t["id"]) for t in tasks)



def test_a_standalone_node_leads_at_the_epoch_its_status_reports(node):
    """Fault (seen by a user): the log said "as leader (epoch 0)" while /status said epoch 1."""
    with miyaq.Client(node.endpoint) as client:
        status = client.status()
        ring = client.ring()
    assert status["periodic"]["leading"] is True
    assert status["periodic"]["epoch"] == ring["epoch"] == 1
