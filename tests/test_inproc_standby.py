"""Standby copies, in-process (miyaq.testing.inprocess): before a copy that
is not the runner's runs, it asks the other holders (QUERY), and only
silence lets it run. Each test sets up its fault on the in-memory network."""
from __future__ import annotations

from typing import Any

from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.constants import QUERY_TIMEOUT
from miyaq.runtime import wall
from miyaq.store.task import DEAD, DONE, RETRYING, SCHEDULED, Task
from miyaq.testing.consumer import InProcessWorker


def test_lost_started_event_standby_asks_and_waits_for_the_runner(inproc):
    """Fault: the STARTED event of a running task is lost on its way to every
    other holder (and the runner's heartbeats with it, so no gap shows). Each
    standby copy's timer fires at its offset, it asks the runner (QUERY),
    hears "running until lease end" and waits past the lease: it never runs
    while the runner runs. The task ends done on every holder, run once."""
    cluster = inproc(3)
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    runner, standbys = holders[0], holders[1:]
    cluster.net.drop("EVENTS", src=runner, event="S")
    cluster.net.drop("HEARTBEAT", src=runner)
    workers = {h: cluster.worker(h) for h in holders}

    sub = cluster.submit_accepted(standbys[0], tid)
    cluster.wait_until(lambda: workers[runner].runs(tid), what="the runner to start the task")
    lease_end = cluster[runner].task(tid).lease_end
    for h in standbys:
        cluster.wait_until(lambda h=h: cluster.net.messages("ANSWER", src=runner, dst=h, answering="QUERY", task=tid),
                           what=f"{h}'s standby copy to ask the runner")
    cluster.settle(0.1)
    assert sub.status == "accepted"
    assert cluster.net.messages("EVENTS", src=runner, event="S")[0].fate == "dropped"
    for h in standbys:
        copy = cluster[h].task(tid)
        assert copy.state == SCHEDULED and copy.standby
        assert cluster[h].due_at(tid) >= lease_end, f"{h}'s copy would run before the runner's lease ends"
        assert workers[h].times(tid) == 0
        assert cluster[h].role.standby.deferrals >= 1 and cluster[h].role.standby.takeovers == 0

    workers[runner].complete(tid)
    cluster.wait_until(lambda: all(cluster[h].state(tid) == DONE for h in holders), what="done on every holder")
    assert [workers[h].times(tid) for h in holders] == [1, 0, 0]
    assert all(cluster[h].role.events.duplicates == 0 for h in holders)
    assert cluster[runner].state(tid) == DONE and not cluster.crashes()


def test_at_most_once_copy_told_by_query_that_the_task_started_never_runs(inproc):
    """Fault: the STARTED event of an at-most-once task is lost (heartbeats
    too), and its runner then dies while the task runs. The standby copy's
    QUERY hears that the task is running: for an at-most-once task that is
    the same news as the lost event, so the copy ends "started-elsewhere" at
    once -- it does not wait for the lease and then run the task a second
    time once the runner went silent."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    runner, standby = cluster.holders(tid, 2)
    cluster.net.drop("EVENTS", src=runner, event="S")
    cluster.net.drop("HEARTBEAT", src=runner)
    workers = {h: cluster.worker(h) for h in (runner, standby)}
    cluster.submit_accepted(runner, tid, at_most_once=True)
    cluster.wait_until(lambda: workers[runner].runs(tid), what="the runner to start the task")
    cluster.wait_until(lambda: cluster.net.messages("ANSWER", src=runner, dst=standby, answering="QUERY", task=tid),
                       what="the standby copy to ask the runner")
    cluster.stop_node(runner)
    cluster.advance(cluster[standby].config.default_timeout + 3 * cluster.settings["replica_offset"])
    cluster.wait_until(lambda: cluster[standby].state(tid) == STARTED_ELSEWHERE, what="the copy dropped")
    assert workers[standby].times(tid) == 0 and cluster[standby].role.standby.takeovers == 0


def test_a_copy_reranked_by_a_ring_change_asks_the_old_runner_too(inproc):
    """Fault: a ring change (the runner's weight drops) moves a running task
    off its runner, which has not heard of the new ring yet and goes on
    running it; the runner's STARTED event and heartbeats are lost. The
    other old holder, re-ranked beside a node that does not know the task,
    finds its copy due. Asking only its holders in the new ring it would
    hear "unknown" and run the task a second time (a chaos run's unexplained
    duplicate at a ring change); it asks every live member of the ring,
    hears from the old runner that the task runs, and waits."""
    ring = ["n1", "n2", "n3"]
    cluster = inproc(3, ring=ring, replicas=2)
    while True:
        tid = cluster.task_id()
        runner, other = cluster.holders(tid, 2)
        new_view = cluster.script.view(ring, weights={runner: 0.05})
        new = [m.node_id for m in new_view.holders(tid, 2)]
        if runner not in new and other in new:
            break
    third = next(n for n in ring if n not in (runner, other))
    cluster.net.drop("EVENTS", src=runner, event="S")
    cluster.net.drop("HEARTBEAT", src=runner)
    workers = {n: cluster.worker(n) for n in ring}
    cluster.accepted([cluster.submit(runner, tid, timeout=60)])
    cluster.wait_until(lambda: workers[runner].runs(tid), what="the runner to start the task")

    epoch = cluster.publish(ring, weights={runner: 0.05}, withhold=[runner])
    cluster.wait_until(lambda: cluster[other].role.view.epoch == epoch, what=f"{other} on the new ring")
    cluster.advance(4.0)      # eight offsets: the re-ranked copy comes due and asks, more than once
    cluster.wait_until(lambda: cluster.net.messages("ANSWER", src=runner, dst=other, answering="QUERY", task=tid),
                       what=f"{other}'s copy to ask the old runner")
    cluster.settle(0.1)
    assert workers[runner].runs(tid)
    assert workers[other].times(tid) == 0 and workers[third].times(tid) == 0, cluster.describe([tid])
    assert cluster[other].role.standby.takeovers == 0 and not cluster.crashes()


def _runner_dies_while_its_worker_runs(inproc: Any, timeout: float) -> tuple[Any, str, str, str, dict[str, Any]]:
    """Two holders; the runner starts the task for its worker, the standby
    copy hears the STARTED event (and so whom the attempt was leased to), and
    the runner's node is stopped. Returns (cluster, task id, runner, standby, workers)."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    runner, standby = cluster.holders(tid, 2)
    workers = {h: cluster.worker(h) for h in (runner, standby)}
    cluster.accepted([cluster.submit(runner, tid, timeout=timeout)])
    cluster.wait_until(lambda: workers[runner].runs(tid), what="the runner to start the task")
    cluster.wait_until(lambda: (cluster[standby].task(tid) or Task("x", "q", None, b"")).lessees,
                       what="the standby copy to hear whom the attempt was leased to")
    return cluster, tid, runner, standby, workers


def test_a_final_failure_the_runners_node_took_with_it_is_applied_by_the_standby(inproc):
    """Fault: the runner's node dies after its worker's FAILED -- a failure
    the handler said not to retry -- reached it, before it told the other
    holder. The worker sends the FAILED again to the other holder
    (worker/routing.py); its standby copy, leased to that worker by the
    STARTED event it heard, dead-letters the task. Before, it ignored a
    FAILED on a copy not running there, and ran the task again once the
    lease was over."""
    cluster, tid, runner, standby, workers = _runner_dies_while_its_worker_runs(inproc, timeout=2.0)
    attempt = workers[runner].delivered[-1][1]
    cluster.stop_node(runner)

    assert workers[runner].fail_at(cluster[standby].node, tid, attempt, retry=False)

    assert cluster[standby].state(tid) == DEAD
    assert cluster[standby].task(tid).error["type"] == "Injected"
    cluster.advance(2.0 + 4 * cluster.settings["replica_offset"])     # past the lease and the standby's turn
    cluster.settle(0.1)
    assert workers[standby].times(tid) == 0 and cluster[standby].role.standby.takeovers == 0
    assert cluster[standby].state(tid) == DEAD and not cluster.crashes()


def test_a_retryable_failure_sent_to_the_standby_waits_its_backoff_then_the_copy_asks_and_runs(inproc):
    """Fault: as above, with a failure to retry in 1 s. The standby copy
    waits out the backoff -- not the rest of the runner's 60 s lease -- still
    as a standby: it asks first (the runner is gone: silence), then runs the
    next attempt."""
    cluster, tid, runner, standby, workers = _runner_dies_while_its_worker_runs(inproc, timeout=60.0)
    attempt = workers[runner].delivered[-1][1]
    cluster.stop_node(runner)

    assert workers[runner].fail_at(cluster[standby].node, tid, attempt, retry=True, delay=1.0)

    copy = cluster[standby].task(tid)
    assert copy.state == RETRYING and copy.standby and copy.error["type"] == "Injected"
    assert cluster[standby].due_at(tid) < copy.eta + 0.5 < wall() + 10     # not the lease's end
    cluster.advance(1.5)
    cluster.wait_until(lambda: workers[standby].runs(tid), timeout=QUERY_TIMEOUT + 10,
                       what="the standby copy to ask, hear silence and run the retry")
    assert workers[standby].delivered == [(tid, attempt + 1)]
    assert cluster[standby].role.standby.takeovers == 1 and not cluster.crashes()


def test_a_final_failure_sent_to_the_standby_while_the_runner_lives_dead_letters_every_copy(inproc):
    """Fault: only the worker's connection to the runner was lost (the
    runner lives and still holds the attempt running); the worker sends its
    final FAILED to the standby. The standby dead-letters the task and its D
    event dead-letters the runner's copy too: no holder runs it again."""
    cluster, tid, runner, standby, workers = _runner_dies_while_its_worker_runs(inproc, timeout=60.0)
    attempt = workers[runner].delivered[-1][1]

    assert workers[runner].fail_at(cluster[standby].node, tid, attempt, retry=False)

    cluster.wait_until(lambda: cluster[runner].state(tid) == DEAD, what="the runner's copy dead-lettered")
    assert cluster[standby].state(tid) == DEAD
    assert [workers[h].times(tid) for h in (runner, standby)] == [1, 0] and not cluster.crashes()


def test_a_failure_from_anyone_but_the_attempts_lessee_changes_no_standby_copy(inproc):
    """Bad input: a FAILED for a standby copy from a worker the attempt was
    not leased to (another worker, a hostile client with a worker key) is
    refused and counted: the copy waits as before."""
    cluster, tid, runner, standby, workers = _runner_dies_while_its_worker_runs(inproc, timeout=60.0)
    attempt = workers[runner].delivered[-1][1]
    engine = cluster[standby].node.core.engine
    before = (cluster[standby].state(tid), cluster[standby].due_at(tid), engine.not_leased)

    assert not workers[standby].fail_at(cluster[standby].node, tid, attempt, retry=False)
    assert not workers[runner].fail_at(cluster[standby].node, tid, attempt + 1, retry=False)   # not its attempt

    assert (cluster[standby].state(tid), cluster[standby].due_at(tid)) == before[:2]
    assert engine.not_leased == before[2] + 1


def test_a_retryable_failure_sent_to_the_standby_while_the_runner_lives_runs_nothing_twice(inproc):
    """Fault: only the worker's connection to the runner was lost, and it
    sends a retryable FAILED to the standby. When the retry's backoff is
    over the standby copy asks first; the runner says it still runs the
    attempt, so the copy waits for that lease -- it does not start a second
    run beside the runner's."""
    cluster, tid, runner, standby, workers = _runner_dies_while_its_worker_runs(inproc, timeout=60.0)
    attempt = workers[runner].delivered[-1][1]

    assert workers[runner].fail_at(cluster[standby].node, tid, attempt, retry=True, delay=1.0)

    cluster.advance(1.5)
    cluster.wait_until(lambda: cluster.net.messages("ANSWER", src=runner, dst=standby, answering="QUERY", task=tid),
                       what="the standby copy to ask the runner")
    cluster.settle(0.1)
    assert workers[runner].runs(tid) and workers[standby].times(tid) == 0
    assert cluster[standby].due_at(tid) >= cluster[runner].task(tid).lease_end
    assert cluster[standby].role.standby.takeovers == 0 and not cluster.crashes()


class _DiesAsItDispatches(InProcessWorker):
    """A consumer on the runner's node that cuts that node off the network
    the moment a task is handed to it: the node is killed as the DISPATCH
    leaves, and nothing it sends afterwards arrives anywhere."""

    def __init__(self, cluster: Any, node_id: str) -> None:
        self.cluster, self.node_id = cluster, node_id
        super().__init__(cluster[node_id].node, ["default"], 100)

    def deliver(self, tasks: list[Task]) -> bool:
        self.cluster.net.cut(self.node_id, "out")
        return super().deliver(tasks)


def test_a_node_killed_as_it_dispatches_has_already_told_the_standby_who_runs_the_task(inproc):
    """Fault: the runner's node dies the moment it hands a task to its
    worker. The worker runs it and, its node lost, sends its DONE to the
    other holder (worker/routing.py). The STARTED event -- who the attempt
    was leased to -- left before the DISPATCH (the dispatcher announces
    before it delivers), so the standby copy takes that DONE and never runs
    the task. Before, the event left after the dispatch and died with the
    node: the standby refused a DONE from a worker it did not know and ran
    the task a second time (the chaos harness's "holder-kill")."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    runner, standby = cluster.holders(tid, 2)
    standby_worker = cluster.worker(standby)
    dying = _DiesAsItDispatches(cluster, runner)
    cluster.submit(standby, tid, timeout=2.0)
    cluster.wait_until(lambda: dying.times(tid), what="the runner to hand the task to its worker")
    attempt = dying.delivered[-1][1]
    cluster.stop_node(runner)

    cluster.wait_until(lambda: (getattr(cluster[standby].task(tid), "lessees", None) or [])[-1:]
                       == [(attempt, dying.principal)],
                       what="the standby copy to hear whom the attempt was leased to")
    assert dying.complete_at(cluster[standby].node, tid, attempt)

    assert cluster[standby].state(tid) == DONE
    cluster.advance(2.0 + 4 * cluster.settings["replica_offset"])     # past the lease and the standby's turn
    cluster.settle(0.1)
    assert standby_worker.times(tid) == 0 and cluster[standby].role.standby.takeovers == 0
    assert cluster[standby].state(tid) == DONE and not cluster.crashes()


def test_a_started_event_heard_while_the_standby_asks_keeps_it_from_running(inproc):
    """Fault: a standby copy came due and asks the runner (QUERY); the
    runner starts the task meanwhile and its STARTED event arrives, but its
    answer never does (a node busy with a handoff misses the 1 s deadline).
    The event pushed the copy's timer past the runner's lease: silence at
    the deadline must not undo that. Before, the copy decided on the
    answers alone, heard silence and ran the task a second time (a dense
    chaos kill run: 26 copies taken over at once, 1 s after a ring change)."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    runner, standby = cluster.holders(tid, 2)
    standby_worker = cluster.worker(standby)
    cluster.net.drop("ANSWER", src=runner, dst=standby, answering="QUERY")
    cluster.accepted([cluster.submit(runner, tid, timeout=30)])  # no worker on the runner yet: its copy waits, ready
    cluster.wait_until(lambda: cluster.net.messages("QUERY", src=standby, dst=runner, task=tid),
                       what="the standby copy asking the runner")
    worker = cluster.worker(runner)
    cluster.wait_until(lambda: worker.runs(tid) and cluster[standby].task(tid).lessees,
                       what="the runner's STARTED event at the standby, while it asks")
    assert tid in cluster[standby].role.standby.asking

    cluster.advance(QUERY_TIMEOUT + 0.5)          # the answer never comes: silence
    cluster.wait_until(lambda: tid not in cluster[standby].role.standby.asking, what="the question over")
    cluster.settle(0.2)
    assert standby_worker.times(tid) == 0 and cluster[standby].role.standby.takeovers == 0
    assert cluster[standby].due_at(tid) >= cluster[runner].task(tid).lease_end
    assert worker.runs(tid) and not cluster.crashes()


def test_a_ttl_that_passes_while_the_task_runs_expires_no_copy(inproc):
    """A task with a ttl starts on its runner well inside it and runs past it
    (a long lease). A ttl never interrupts a run (docs/semantics.md). Before
    2026-12-05 each standby copy's timer was armed at the ttl too, expired the
    copy there and told the other holders: the runner's run was aborted and
    its result thrown away. Now a standby copy never expires by itself."""
    cluster = inproc(3)
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    runner = holders[0]
    workers = {h: cluster.worker(h) for h in holders}
    sub = cluster.accepted([cluster.submit(runner, tid, ttl=3, timeout=60)])[0]
    cluster.wait_until(lambda: workers[runner].runs(tid) and sub.result, what="the runner to start the task")
    cluster.advance(5)
    cluster.settle(0.2)
    assert [cluster[h].state(tid) for h in holders] == ["running", SCHEDULED, SCHEDULED]
    assert workers[runner].aborted == []
    assert workers[runner].complete(tid, result=b"\x01", attempt=1)
    cluster.wait_until(lambda: all(cluster[h].state(tid) == DONE for h in holders), what="every copy done")


def test_a_copy_that_takes_over_a_task_past_its_ttl_expires_it(inproc):
    """Fault: the runner of a task with a ttl is stopped before it starts the
    task (no worker there). The standby copy does not expire by itself; at its
    offset it asks, hears nothing, takes the task over -- and then, the ttl
    long past and the task never started, expires it rather than run it."""
    cluster = inproc(3, replicas=2)
    tid = cluster.task_id()
    runner, standby = cluster.holders(tid, 2)
    worker = cluster.worker(standby)
    sub = cluster.submit_accepted(runner, tid, ttl=1)
    cluster.wait_until(lambda: sub.result, what="the submit to be acknowledged")
    cluster.stop_node(runner)
    cluster.advance(cluster.settings["replica_offset"] + 3)
    cluster.wait_until(lambda: cluster[standby].state(tid) == "expired", what="the copy to expire")
    assert worker.times(tid) == 0


def _ask_result(node: Any, task_id: str) -> tuple[str, dict[str, Any]]:
    """RESULT (no wait) through ``node``'s service handlers: ("reply" | "error", body)."""
    from miyaq.protocol import codec
    from miyaq.protocol import commands as c
    endpoint = node.node.core.endpoint
    answers: list[tuple[str, dict[str, Any]]] = []
    real_reply, real_error = endpoint.reply, endpoint.error
    endpoint.reply = lambda identity, req, body: answers.append(("reply", body))
    endpoint.error = lambda identity, err, req=None: answers.append(("error", err.to_wire()))
    try:
        endpoint.handle([b"test", *codec.encode(c.RESULT, {"id": task_id, "req": 1})], wall())
    finally:
        endpoint.reply, endpoint.error = real_reply, real_error
    assert len(answers) == 1, answers
    return answers[0]


def at_most_once_started_elsewhere(cluster: Any) -> tuple[str, str, str, dict[str, Any]]:
    """An at-most-once task submitted through a holder that does not run it,
    started by its runner, and that holder's copy dropped as
    "started-elsewhere": ``(task id, runner, that holder, workers by holder)``."""
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    runner, other = holders[0], holders[1]
    workers = {h: cluster.worker(h) for h in holders}
    sub = cluster.submit_accepted(other, tid, at_most_once=True)
    cluster.wait_until(lambda: sub.result and workers[runner].runs(tid), what="the runner to start the task")
    cluster.wait_until(lambda: cluster[other].state(tid) == STARTED_ELSEWHERE, what="the copy dropped")
    return tid, runner, other, workers


def test_the_other_holders_of_an_at_most_once_task_answer_its_outcome(inproc):
    """An at-most-once task submitted through a holder that does not run it
    (the HTTP gateway of any node, a client without the ring yet): that
    holder's copy is dropped as "started-elsewhere" when the runner starts
    it. Before 2026-12-05 that placeholder stayed for good: the runner's
    finish did not replace it, and RESULT answered it as the outcome, so the
    client's ``result()`` raised ``Timeout: task ... is still
    started-elsewhere`` at once. Now, while the outcome is not there, RESULT
    answers ``not_found`` (the client asks the next node), and the finish
    replaces the placeholder."""
    cluster = inproc(3)
    tid, runner, other, workers = at_most_once_started_elsewhere(cluster)
    kind, body = _ask_result(cluster[other], tid)
    assert kind == "error" and body["code"] == "not_found" and "another of its holders" in body["message"]
    assert workers[runner].complete(tid, result=b"\x2a", attempt=1)
    for h in workers:
        cluster.wait_until(lambda h=h: cluster[h].state(tid) == DONE, what=f"{h} to hear the finish")
        kind, body = _ask_result(cluster[h], tid)
        assert kind == "reply" and body["state"] == DONE and body["result"] == b"\x2a"


def test_two_standby_copies_asking_at_once_run_once_when_one_direction_is_silent(inproc):
    """Fault: two standby copies of a task nobody started (a client's
    resend: every copy asks first) ask each other at once, and the answer
    from the smaller node id to the larger one is lost (after a network
    fault heals, a stale TCP connection waits out its retransmission timer
    while the other direction already works); the smaller id's STARTED
    event is lost too. The smaller id hears the larger one's standby answer
    and runs the task, as it should. The larger id hears silence from it --
    but that node asked about the task meanwhile, so it is alive and holds
    a standby copy: the larger id waits an offset, asks again, hears that
    the task runs and waits past its lease. Before, it took silence for
    absence and ran the task a second time (a chaos run, `isolate`: seven
    tasks run twice 1-2 s after the heal)."""
    cluster = inproc(3, replicas=2)
    while True:
        tid = cluster.task_id()
        first, second = cluster.holders(tid, 2)
        if second < first:      # the rank-0 copy is the larger id: it asks first, the smaller one meanwhile
            break
    small, large = second, first
    cluster.net.drop("ANSWER", src=small, dst=large, answering="QUERY", count=1)
    cluster.net.drop("EVENTS", src=small, event="S")
    cluster.net.drop("HEARTBEAT", src=small)
    workers = {h: cluster.worker(h) for h in (small, large)}

    cluster.accepted([cluster.submit(large, tid, resent=True, timeout=30)])  # a lease the clock jumps below do not end
    cluster.wait_until(lambda: cluster.net.messages("QUERY", src=large, dst=small, task=tid),
                       what="the larger id's copy asking the smaller")
    assert tid in cluster[large].role.standby.asking
    cluster.advance(cluster.settings["replica_offset"])      # the smaller id's copy comes due and asks
    cluster.wait_until(lambda: workers[small].runs(tid), what="the smaller id's copy to run the task")
    assert cluster.net.messages("ANSWER", src=small, dst=large, answering="QUERY")[0].fate == "dropped"

    cluster.advance(QUERY_TIMEOUT + 0.5)          # the larger id's question ends: the smaller one silent
    cluster.wait_until(lambda: tid not in cluster[large].role.standby.asking, what="the question over")
    cluster.settle(0.2)
    assert workers[large].times(tid) == 0, cluster.describe([tid])
    assert cluster[large].role.standby.takeovers == 0 and cluster[large].role.standby.deferrals >= 1

    cluster.advance(2 * cluster.settings["replica_offset"])   # it asks again, and hears that the task runs
    cluster.wait_until(lambda: len(cluster.net.messages("ANSWER", src=small, dst=large, answering="QUERY")) >= 2,
                       what="the larger id's second question answered")
    cluster.settle(0.2)
    assert workers[large].times(tid) == 0 and cluster[large].role.standby.takeovers == 0
    assert cluster[large].due_at(tid) >= cluster[small].task(tid).lease_end
    assert workers[small].times(tid) == 1 and not cluster.crashes()


def test_a_standby_copy_made_to_ask_early_by_a_smaller_id_does_not_run_when_that_one_is_silent(inproc):
    """Fault: as above, but the larger id's copy is the later one: the
    smaller id's copy asks first, and its QUERY makes the larger id's copy
    ask at once instead of at its offset (``StandbyChecker.asked_about``);
    the smaller id's answer to it is lost, and so is its STARTED event.
    The QUERY that made it ask showed the smaller id alive and asking: the
    larger id waits rather than run the task a second time."""
    cluster = inproc(3, replicas=2)
    cluster.advance(2 * cluster.settings["replica_offset"])   # tasks due an offset past the ring: they may ask early
    while True:
        tid = cluster.task_id()
        small, large = cluster.holders(tid, 2)
        if small < large:
            break
    cluster.net.drop("ANSWER", src=small, dst=large, answering="QUERY", count=1)
    cluster.net.drop("EVENTS", src=small, event="S")
    cluster.net.drop("HEARTBEAT", src=small)
    workers = {h: cluster.worker(h) for h in (small, large)}

    cluster.accepted([cluster.submit(small, tid, resent=True, timeout=30)])
    cluster.wait_until(lambda: workers[small].runs(tid), what="the smaller id's copy to run the task")
    cluster.wait_until(lambda: cluster.net.messages("QUERY", src=large, dst=small, task=tid),
                       what="the larger id's copy asking early")
    assert cluster.net.messages("ANSWER", src=small, dst=large, answering="QUERY")[0].fate == "dropped"
    cluster.advance(QUERY_TIMEOUT + 0.5)
    cluster.wait_until(lambda: tid not in cluster[large].role.standby.asking, what="the question over")
    cluster.settle(0.2)
    assert workers[large].times(tid) == 0, cluster.describe([tid])
    assert cluster[large].role.standby.takeovers == 0 and cluster[large].role.standby.deferrals >= 1
    assert workers[small].times(tid) == 1 and not cluster.crashes()


def test_what_a_node_notes_of_other_members_questions_is_bounded(inproc, monkeypatch):
    """Fault: a peer's QUERYs name a sender that is no member of the ring
    (a buggy or hostile peer's ``from``), and more standby copies are asked
    about than the node keeps notes of. Neither is noted past its bound:
    a non-member never, and past ``MAX_ASKED_BY`` tasks the notes start
    again."""
    from miyaq.cluster import standby as standby_module
    monkeypatch.setattr(standby_module, "MAX_ASKED_BY", 2)
    cluster = inproc(3, replicas=3)
    node = sorted(cluster.nodes)[0]
    other = next(n for n in sorted(cluster.nodes) if n != node)
    tids = []
    for _ in range(3):
        tid = cluster.task_id()
        cluster.submit_accepted(node, tid, resent=True, countdown=60)   # every copy a standby, far from due
        tids.append(tid)
    cluster.wait_until(lambda: all(cluster[node].task(t) is not None and cluster[node].task(t).standby for t in tids),
                       what="three standby copies")
    checker = cluster[node].role.standby
    checker.asked_about(tids[0], "intruder")
    assert checker.asked_by == {}
    for tid in tids:
        checker.asked_about(tid, other)
    assert len(checker.asked_by) <= 2 and tids[2] in checker.asked_by
    assert set(checker.asked_by[tids[2]]) == {other}
