"""The numbers users alert on say what happened: STATUS ``errors`` and
``miyaq_protocol_errors_total`` count every refused submit, a cluster's
holders count an at-most-once task's end like any other task's, the
start-delay and run histograms observe the attempt they name, and the
console's chart does not drop when the node forgets empty queues.

The histogram tests drive an :class:`~miyaq.core.engine.Engine` with
explicit times and a :class:`~miyaq.gateway.task_timings.TaskTimings` listener
whose clock the test sets; the cluster tests use the in-process cluster
(:mod:`miyaq.testing.inprocess`)."""
from __future__ import annotations

from typing import Any

import pytest
from gateway_harness import FIXTURES
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.gateway import task_timings as timings_module
from miyaq.gateway.task_timings import TaskTimings
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import wall
from miyaq.store.task import DONE, Task

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

T0 = 1_700_000_000.0


# -- helpers -------------------------------------------------------------------------------------
class Consumer:
    """A worker as the engine sees one: holds leased tasks."""

    def __init__(self) -> None:
        self.principal = "c"
        self.running: dict[str, Task] = {}

    def abort(self, ids: list[str]) -> None:
        pass

    def lease_expired(self, task: Task, now: float) -> None:
        pass


class Timed:
    """An engine with a TaskTimings listener whose clock is ``self.now``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr(timings_module, "wall", lambda: self.now)
        self.engine = Engine(NodeConfig())
        self.registry = CollectorRegistry()
        self.timings = TaskTimings(self.registry)
        self.engine.listeners.append(self.timings)
        self.consumer = Consumer()

    def submit(self, task_id: str, queue: str = "q") -> None:
        self.engine.submit(Task(task_id, queue, "echo", b"", eta=self.now, created=self.now), self.now)

    def lease(self, queue: str = "q") -> Task:
        task = self.engine.take([queue], self.now)
        assert task is not None
        self.engine.start(task, self.consumer, self.now)
        return task

    def observed(self, name: str, queue: str = "q") -> tuple[float, float]:
        """(count, sum) of histogram ``name`` for ``queue``."""
        found = {s.name: s.value for family in text_string_to_metric_families(generate_latest(self.registry).decode())
                 for s in family.samples if s.labels.get("queue") == queue and s.name.startswith(name)}
        return found.get(f"{name}_count", 0.0), found.get(f"{name}_sum", 0.0)


def raw_submit(sock: Any, tasks: list[dict[str, Any]]) -> list[list[Any]]:
    sock.send_multipart([c.TAG, c.SUBMIT, codec.pack({"tasks": tasks})])
    assert sock.poll(10_000), "no SUBMITTED answer"
    frames = sock.recv_multipart()
    assert frames[1] == c.SUBMITTED
    return codec.unpack(frames[2])["results"]


# -- refused submits ------------------------------------------------------------------------------
def test_submits_refused_because_the_node_is_full_are_counted_by_code(make_node, client_for, ctx, sockets):
    """Fault: a node at ``max_tasks`` answers ZeroMQ SUBMITs ``rejected``
    with ``busy``; the refusals were counted on a counter nothing read, so
    STATUS ``errors`` (and ``miyaq_protocol_errors_total``, which reads the
    same counter) showed nothing while producers were being turned away.
    An invalid task in the same SUBMIT is counted once, as before."""
    import zmq

    node = make_node(max_tasks=3)
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sockets.append(sock)
    sock.connect(node.endpoint)
    stored = raw_submit(sock, [{"id": f"f{i}", "name": "job", "countdown": 600} for i in range(3)])
    assert [r[1] for r in stored] == [c.ACCEPTED] * 3
    refused = raw_submit(sock, [{"id": f"z{i}", "name": "job"} for i in range(5)] + [{"id": "bad id", "name": "job"}])
    assert [r[1] for r in refused] == [c.REJECTED] * 6
    assert [r[2]["code"] for r in refused] == ["busy"] * 5 + ["invalid_field"]
    status = client_for(node.endpoint).status()
    assert status["errors"] == {"busy": 5, "invalid_field": 1}
    assert status["outcomes"].get("submitted") == 3


def test_a_clustered_node_counts_the_submits_its_engine_refuses(inproc):
    """Fault: in a cluster, a holder coordinating a ZeroMQ SUBMIT it cannot
    store (full: ``max_tasks``) answered ``rejected``/``busy`` from the
    replicating intake's engine-refusal branch and counted it nowhere.
    A refusal given to an in-process submitter (the HTTP gateway, which
    counts its own answers by status) is not counted in ``errors``."""
    cluster = inproc(3, max_tasks=1)
    cluster.submit_accepted("n1", cluster.task_id(), countdown=600)
    endpoint = cluster["n1"].node.core.endpoint
    endpoint.handlers[c.SUBMIT](b"\x00a-zeromq-client", {"tasks": [{"id": "z1", "name": "job"}]}, wall())
    endpoint.flush_acks()
    assert endpoint.errors["busy"] == 1
    over_http = cluster.answered([cluster.submit("n1", cluster.task_id())])[0]
    assert over_http.error_code == "busy"
    assert dict(endpoint.errors) == {"busy": 1}


# -- outcomes in a cluster ------------------------------------------------------------------------
def test_every_holder_counts_an_at_most_once_tasks_done_and_no_placeholder(inproc):
    """Fault: the holders that did not run an at-most-once task counted the
    placeholder they keep when it starts (outcome ``started-elsewhere``,
    which no document lists) and never counted the task's ``done`` when the
    runner's outcome replaced it: per node ``done`` read [1, 0, 0] where an
    ordinary task reads [1, 1, 1]."""
    cluster = inproc(3)
    amo, ordinary = cluster.task_id(), cluster.task_id()
    holders = cluster.holders(amo)
    workers = {h: cluster.worker(h) for h in cluster.nodes}
    cluster.submit_accepted(holders[1], amo, at_most_once=True)
    runner = cluster.wait_until(lambda: next((h for h, w in workers.items() if w.runs(amo)), None),
                                what="a holder to start the at-most-once task")
    others = [h for h in holders if h != runner]
    cluster.wait_until(lambda: all(cluster[h].state(amo) == STARTED_ELSEWHERE for h in others),
                       what="the other holders to drop their copies")
    assert all("started-elsewhere" not in cluster[h].engine.outcome_totals() for h in holders)
    workers[runner].complete(amo)
    cluster.wait_until(lambda: all(cluster[h].state(amo) == DONE for h in holders), what="done on every holder")

    cluster.submit_accepted(holders[0], ordinary)
    ran = cluster.wait_until(lambda: next((h for h, w in workers.items() if w.runs(ordinary)), None),
                             what="the ordinary task to start")
    workers[ran].complete(ordinary)
    cluster.wait_until(lambda: all(cluster[h].state(ordinary) == DONE for h in cluster.holders(ordinary)),
                       what="the ordinary task done on every holder")
    totals = {h: cluster[h].engine.outcome_totals() for h in holders}
    assert [totals[h].get("done") for h in holders] == [2, 2, 2], totals
    assert all(set(t) <= {"submitted", "started", "completed", "done"} for t in totals.values()), totals
    assert sum(t.get("started", 0) for t in totals.values()) == 2
    assert sum(t.get("completed", 0) for t in totals.values()) == 2
    assert not cluster.crashes()


# -- histograms -----------------------------------------------------------------------------------
def test_a_dead_letter_retried_later_adds_no_second_start_delay(monkeypatch):
    """Fault: a task dead-lettered at its first attempt and retried from
    the dead letters 3 s later started "for the first time" again (its
    attempt count starts over): ``miyaq_task_start_delay_seconds`` got a
    second observation, of the 3 s since its eta. The start delay is
    observed once per task, at its first lease."""
    timed = Timed(monkeypatch)
    timed.submit("d")
    timed.now += 0.5
    task = timed.lease()
    assert timed.engine.fail("d", task.attempt, {"type": "E", "message": "no"}, False, None, timed.now)
    timed.now += 3.0
    assert timed.engine.dead_retry(["d"], timed.now) == ["d"]
    task = timed.lease()
    assert timed.engine.complete("d", task.attempt, b"ok", timed.now)
    assert timed.observed("miyaq_task_start_delay_seconds") == (1.0, 0.5)


def test_a_task_given_back_unstarted_is_not_observed_starting_twice(monkeypatch):
    """Fault: a worker stopped while holding prefetched tasks gives them
    back unstarted (RETURN: no attempt spent); each was observed in
    ``miyaq_task_start_delay_seconds`` when it was leased, and again when it
    was leased anew with the same attempt number -- 3 tasks gave 5
    observations."""
    timed = Timed(monkeypatch)
    for i in range(3):
        timed.submit(f"p{i}")
    timed.now += 0.25
    leased = [timed.lease() for _ in range(3)]
    for task in leased[1:]:
        assert timed.engine.release(task.id, timed.now)
    timed.now += 2.0
    again = [timed.lease(), timed.lease()]
    assert {t.id for t in again} == {"p1", "p2"} and all(t.attempt == 1 for t in again)
    for task in [leased[0], *again]:
        assert timed.engine.complete(task.id, task.attempt, b"ok", timed.now)
    assert timed.observed("miyaq_task_start_delay_seconds") == (3.0, 0.75)
    assert not timed.timings._released and not timed.timings._started


def test_a_late_done_is_measured_from_its_own_attempts_start(monkeypatch):
    """Fault: attempt 1's lease runs out, attempt 2 is leased, and attempt
    1's DONE finishes the task (it did run); ``miyaq_task_run_seconds``
    kept one start per task, attempt 2's, and recorded 0.2 s for a run
    of 2.2 s. A DONE taken while the task waits for its next attempt (which
    attempt it reports is not known then) is not observed."""
    timed = Timed(monkeypatch)
    timed.submit("L")
    first = timed.lease()
    timed.now += 2.0
    timed.engine.lose(first, "lease expired", timed.now)
    second = timed.lease()
    assert second.attempt == 2
    timed.now += 0.2
    assert timed.engine.complete("L", 1, b"ok", timed.now)
    count, total = timed.observed("miyaq_task_run_seconds")
    assert count == 1 and total == pytest.approx(2.2)

    timed.submit("W", queue="w")
    lost = timed.lease("w")
    timed.now += 1.0
    timed.engine.lose(lost, "lease expired", timed.now)
    assert timed.engine.complete("W", 1, b"ok", timed.now)    # the task waits ready: its DONE is taken
    assert timed.observed("miyaq_task_run_seconds", "w") == (0.0, 0.0)
    assert timed.observed("miyaq_task_latency_seconds", "w")[0] == 1.0
    assert not timed.timings._ended and not timed.timings._started


def test_what_the_timings_keep_per_task_is_bounded(monkeypatch):
    """Constraint: the starts of attempts that ended without a DONE, and
    the tasks given back unstarted, are kept for at most ``MAX_KEPT``
    tasks (the oldest go first), whatever happens to the others."""
    monkeypatch.setattr(TaskTimings, "MAX_KEPT", 4)
    timed = Timed(monkeypatch)
    for i in range(10):
        timed.submit(f"r{i}", queue=f"r{i}")        # a queue each: a task put back is not leased again
        timed.engine.release(timed.lease(f"r{i}").id, timed.now)
        timed.submit(f"l{i}", queue=f"l{i}")
        timed.engine.lose(timed.lease(f"l{i}"), "lease expired", timed.now)
    assert list(timed.timings._released) == ["r6", "r7", "r8", "r9"]
    assert list(timed.timings._ended) == ["l6", "l7", "l8", "l9"]


# -- the console's chart --------------------------------------------------------------------------
def test_the_consoles_chart_keeps_counting_when_empty_queues_are_pruned(make_http_node):
    """Fault: past 100 queues the engine forgets the empty ones and moves
    their outcome counts into its pruned totals; the console's chart summed
    only the per-queue counters, so the second it forgot 150 finished
    queues showed 0 submits while 10 had come in (the sum fell by 150)."""
    node = make_http_node()

    def scenario() -> list[float]:
        activity, engine = node.node.part("gateway").console.activity, node.node.core.engine
        now = wall()
        rates = []
        activity.sample(now)
        for i in range(150):
            task = task_from_wire({"id": f"m{i}", "name": "job", "queue": f"made-up-{i}"}, now, node.config)
            engine.submit(task, now)
            engine.cancel(task.id, now)
        activity.sample(now + 1.0)
        rates.append(activity.latest()["submitted"])
        engine.compact_lanes()
        assert len(engine.counts) <= 1 and engine.pruned_outcomes["submitted"] >= 150
        for i in range(10):
            engine.submit(task_from_wire({"id": f"s{i}", "name": "job", "queue": "steady", "countdown": 600},
                                         now, node.config), now)
        activity.sample(now + 2.0)
        rates.append(activity.latest()["submitted"])
        return rates

    assert node.call(scenario) == [150.0, 10.0]
