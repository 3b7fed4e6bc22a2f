"""An at-most-once task whose runner's node dies after its worker started
it, and whose handler then fails: the worker reports the FAILED to another
holder (docs/cluster.md, "A task's life in a cluster", items 6 and 7).
Every other holder keeps only a ``started-elsewhere`` placeholder, without
the task's arguments. Before 2026-12-08 the placeholder refused the FAILED:
the failure was lost, and the task stayed ``started-elsewhere`` on every
holder until ``result_ttl``. It is now dead-lettered on every holder with
the handler's error, as a single node would, marked as having lost its
arguments with n1, and a retry of it is refused. In process
(miyaq.testing.inprocess): the task's first holder is n1."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest

from miyaq.cluster.holder_events import apply_events
from miyaq.cluster.lost_args import lost_record
from miyaq.cluster.sizes import event_size
from miyaq.core.placeholders import lost_args_body
from miyaq.errors import InvalidField
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.runtime import wall
from miyaq.store.records import task_record
from miyaq.store.task import ARGS_LOST, DEAD, Task, args_lost
from miyaq.worker.execute import BadBody, decode_args
from tests.test_inproc_standby import _ask_result

pytestmark = pytest.mark.timeout(120)

NODES = ("n1", "n2", "n3")
SURVIVORS = ("n2", "n3")
ERROR = {"type": "Boom", "message": "the handler failed", "traceback": "Traceback ...\nBoom"}
LEASE = 60.0


def _started_on_n1(cluster: Any) -> tuple[str, dict[str, Any]]:
    """An at-most-once task running on n1's worker, n2 and n3 holding its
    placeholder with the lease of the S event: ``(task id, workers by node)``."""
    task_id = cluster.task_led_by("n1")
    workers = {n: cluster.worker(n) for n in NODES}
    cluster.submit_accepted("n1", task_id, name="tasks.charge", body=b"\x91\x01", at_most_once=True,
                            timeout=LEASE)
    cluster.wait_until(lambda: workers["n1"].runs(task_id), what="n1 to start the task")
    cluster.wait_until(lambda: all(task_id in cluster[n].engine.placeholder_leases for n in SURVIVORS),
                       what="the placeholders' leases on n2 and n3 (S event)")
    return task_id, workers


def _failed_to_n2(cluster: Any, task_id: str, worker: Any) -> None:
    """n1's worker reports the handler's failure to n2 (n1 stopped)."""
    assert worker.fail_at(cluster["n2"].node, task_id, 1, ERROR, retry=True)


def _dead(cluster: Any, node: str, task_id: str) -> Any:
    task = cluster[node].engine.table.dead.get(task_id)
    assert task is not None, f"{node} has no dead letter of {task_id}: {cluster[node].state(task_id)}"
    return task


def _ask(node: Any, command: str, body: dict[str, Any], cluster: Any) -> tuple[str, dict[str, Any]]:
    """``command`` through ``node``'s service handlers (a DEAD retry answers
    from a greenlet of its own): ("reply" | "error", body)."""
    endpoint = node.node.core.endpoint
    answers: list[tuple[str, dict[str, Any]]] = []
    real = endpoint.reply, endpoint.error, endpoint.reply_stored
    endpoint.reply = lambda identity, req, answer: answers.append(("reply", answer))
    endpoint.reply_stored = lambda identity, req, answer, *a, **k: answers.append(("reply", answer))
    endpoint.error = lambda identity, err, req=None: answers.append(("error", err.to_wire()))
    try:
        endpoint.handle([b"test", *codec.encode(command, {**body, "req": 1})], wall())
        cluster.wait_until(lambda: answers, what=f"the answer to {command}")
    finally:
        endpoint.reply, endpoint.error, endpoint.reply_stored = real
    assert len(answers) == 1, answers
    return answers[0]


def test_a_failed_reported_to_another_holder_after_the_runner_died_dead_letters_the_task_everywhere(inproc):
    """Fault: n1, running an at-most-once task, dies; its worker's handler
    raises and the worker sends FAILED to n2 (item 7). n2 had only the
    placeholder and refused it: the failure was lost, the task
    ``started-elsewhere`` on n2 and n3, RESULT ``not_found``. Now n2
    dead-letters it with the handler's error (an at-most-once task is never
    retried, even on a retryable failure), its ``D`` event does the same on
    n3, RESULT on both reports it dead with that error, the listings show
    the arguments unknown (lost with n1) -- its body too, which no worker
    would take for arguments --, and nothing runs again."""
    cluster = inproc(3, replicas=3)
    task_id, workers = _started_on_n1(cluster)
    cluster.stop_node("n1")
    _failed_to_n2(cluster, task_id, workers["n1"])
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == DEAD for n in SURVIVORS),
                       what="the FAILED to dead-letter the task on n2 and n3")
    for node in SURVIVORS:
        engine = cluster[node].engine
        task = _dead(cluster, node, task_id)
        assert (task.name, task.attempt, task.at_most_once, args_lost(task)) == ("tasks.charge", 1, True, "n1")
        assert task.error == ERROR and task.body == lost_args_body("n1")
        with pytest.raises(BadBody):     # a worker of a build that ran it would not run the handler
            decode_args(task.body)
        assert engine.table.tombstone(task_id) is None and task_id not in engine.placeholder_leases
        kind, body = _ask_result(cluster[node], task_id)
        assert kind == "reply" and body["state"] == DEAD and body["error"] == ERROR
        header = engine.info(task_id)
        assert header["state"] == DEAD and header[ARGS_LOST] == "n1" and header["name"] == "tasks.charge"
        assert [t[ARGS_LOST] for t in engine.dead_list(None, 10)] == ["n1"]
        assert engine.outcomes[("default", DEAD)] == 1
        assert engine.counts["default"][DEAD] == 1
    assert cluster["n2"].engine.outcomes[("default", "failed")] == 1
    cluster.advance(LEASE + 4 * cluster.settings["replica_offset"])
    cluster.settle(0.2)
    assert all(cluster[n].state(task_id) == DEAD for n in SURVIVORS)
    assert workers["n2"].times(task_id) == 0 and workers["n3"].times(task_id) == 0
    assert not cluster.crashes()


def test_a_retry_of_a_dead_letter_whose_arguments_were_lost_is_refused_and_changes_nothing(inproc):
    """Fault: an operator retries the dead letter made of the lessee's
    FAILED after n1 died (``miyaq dead retry``, the HTTP or Python API: all
    go through the engine's ``dead_retry``). Its arguments were lost with
    n1: run again it would get an empty payload. Refused whole, naming
    why and n1, nothing revived (also another dead letter named with it);
    a retry of the whole queue leaves it out; a V event from another
    holder does not revive it either. It can still be purged."""
    cluster = inproc(3, replicas=3)
    task_id, workers = _started_on_n1(cluster)
    other = cluster.task_led_by("n2")
    cluster.submit_accepted("n2", other, body=b"\x90", at_most_once=True, timeout=LEASE)
    cluster.wait_until(lambda: workers["n2"].runs(other), what="n2 to start the other task")
    assert workers["n2"].fail(other, ERROR, retry=False)
    cluster.wait_until(lambda: cluster["n2"].state(other) == DEAD, what="the other task dead on n2")
    cluster.stop_node("n1")
    _failed_to_n2(cluster, task_id, workers["n1"])
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == DEAD for n in SURVIVORS),
                       what="the dead letter on n2 and n3")
    n2 = cluster["n2"]
    with pytest.raises(InvalidField) as refused:
        n2.engine.dead_retry([other, task_id], wall())
    assert "arguments were lost with node n1" in str(refused.value) and task_id in str(refused.value)
    assert n2.state(task_id) == DEAD and n2.state(other) == DEAD
    kind, body = _ask(n2, c.DEAD, {"op": "retry", "ids": [task_id]}, cluster)
    assert kind == "error" and body["code"] == "invalid_field" and "lost with node n1" in body["message"]
    assert n2.state(task_id) == DEAD
    kind, body = _ask(n2, c.DEAD, {"op": "retry"}, cluster)      # the whole dead-letter queue
    assert kind == "reply" and body["retried"] == [other]
    assert n2.state(task_id) == DEAD
    n3 = cluster["n3"]
    assert n3.engine.revive_copy(task_id, wall()) is None and n3.state(task_id) == DEAD
    assert n2.engine.dead_purge(None, [task_id]) == 1
    cluster.wait_until(lambda: n3.state(task_id) is None, what="the purge on n3 (P event)")
    assert workers["n2"].times(task_id) == 0 and workers["n3"].times(task_id) == 0
    assert not cluster.crashes()


def test_a_placeholder_refuses_a_failed_from_anyone_but_the_lessee_of_that_attempt(inproc):
    """Fault: after n1 died running an at-most-once task, a FAILED reaches
    n2 from a worker the task was never leased to, and one from the lessee
    naming another attempt. Neither changes the placeholder (counted in
    ``not_leased``, as a live copy refuses them)."""
    cluster = inproc(3, replicas=3)
    task_id, workers = _started_on_n1(cluster)
    cluster.stop_node("n1")
    n2 = cluster["n2"]
    refused = n2.engine.not_leased
    assert not workers["n2"].fail_at(n2.node, task_id, 1, ERROR, retry=False)
    assert not workers["n1"].fail_at(n2.node, task_id, 2, ERROR, retry=False)
    assert not n2.engine.fail(task_id, 1, ERROR, False, None, wall())       # by=None: nobody leased it here
    assert n2.engine.not_leased == refused + 3
    cluster.settle(0.2)
    assert all(cluster[n].state(task_id) == STARTED_ELSEWHERE for n in SURVIVORS)
    assert not n2.engine.table.dead
    assert not cluster.crashes()


def test_a_dead_letter_without_arguments_is_dead_after_a_restart(inproc, tmp_path):
    """Fault: n2 restarts from its log after it dead-lettered the lessee's
    FAILED of an at-most-once task whose runner died (and n3, after its
    ``D`` event did). Its log held the
    placeholder (an ``F`` record) and a ``D`` record of a task it never
    had (no ``A`` record): the replay brought the placeholder back. The
    dead letter is now logged whole (an ``A`` record, its arguments
    marked lost): it comes back dead with its error and mark."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    task_id, workers = _started_on_n1(cluster)
    cluster.stop_node("n1")
    _failed_to_n2(cluster, task_id, workers["n1"])
    cluster.wait_until(lambda: cluster["n3"].state(task_id) == DEAD, what="the D event on n3")
    for node in SURVIVORS:       # n2 took the FAILED, n3 its D event: both logged it whole
        cluster.stop_node(node)
        cluster.start_node(node)
        task = _dead(cluster, node, task_id)
        assert (task.error, args_lost(task), task.name, task.attempt) == (ERROR, "n1", "tasks.charge", 1)
        assert cluster[node].tombstone(task_id) is None
        with pytest.raises(InvalidField):
            cluster[node].engine.dead_retry([task_id], wall())
    assert not cluster.crashes()


def test_a_holder_that_missed_the_dead_event_gets_the_dead_letter_from_a_resync(inproc, tmp_path):
    """Fault: n3 is down when n2 dead-letters the lessee's FAILED (n1, the
    runner, died), so it never hears the ``D`` event, and comes back from
    its log with its placeholder. Its resync with n2 brings the dead
    letter, which replaces the placeholder (a copy over a tombstone was
    never stored: n3 stayed ``started-elsewhere``)."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    task_id, workers = _started_on_n1(cluster)
    cluster.stop_node("n3")
    cluster.stop_node("n1")
    _failed_to_n2(cluster, task_id, workers["n1"])
    assert cluster["n2"].state(task_id) == DEAD
    cluster.start_node("n3")
    cluster.wait_until(lambda: cluster["n3"].state(task_id) == DEAD, timeout=30.0,
                       what="n3's resync to bring the dead letter")
    task = _dead(cluster, "n3", task_id)
    assert (task.error, args_lost(task), task.attempt) == (ERROR, "n1", 1)
    assert not cluster.crashes()


def test_a_dead_event_with_a_record_of_a_task_with_its_arguments_is_refused(inproc):
    """Fault: a peer's ``D`` event for a task n3 holds a placeholder of
    carries a record that is not of a dead letter whose arguments were lost
    (a copy with a payload, or another task's): refused and counted, the
    placeholder left as it is -- only a dead letter without arguments may
    replace it."""
    cluster = inproc(3, replicas=3)
    task_id, _ = _started_on_n1(cluster)
    n3 = cluster["n3"]
    lease = n3.engine.placeholder_leases[task_id]
    forged = Task.of(task_id, lease.spec, b"\x91\x02", 0.0, 0.0)
    forged.holders = lease.holders
    refused = n3.role.refusals.total()
    apply_events(n3.role, "n2", [["D", task_id, 1, ERROR, task_record(forged)]])     # no args_lost mark
    another = Task.of(cluster.task_id(), lease.spec, b"", 0.0, 0.0)
    another.holders, another.meta = lease.holders, {ARGS_LOST: "n1"}
    apply_events(n3.role, "n2", [["D", task_id, 1, ERROR, lost_record(another)]])   # another task's
    assert n3.role.refusals.total() == refused + 2
    assert n3.state(task_id) == STARTED_ELSEWHERE and not n3.engine.table.dead
    assert not cluster.crashes()


def test_a_runner_restarted_from_its_log_keeps_the_arguments_and_its_retry_ends_the_task_everywhere(inproc, tmp_path):
    """Fault: n1, the runner, comes back from its data dir after n2
    dead-lettered the lessee's FAILED without the arguments. n1's log
    brings the task back dead ``Lost`` with its arguments (an at-most-once
    task that ran when its node stopped): only n1 can retry it. A retry
    there runs it (its ``V`` event does not revive the copies without
    arguments; its ``S`` event makes them placeholders again), and its end
    reaches every holder."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    task_id, workers = _started_on_n1(cluster)
    cluster.stop_node("n1")
    _failed_to_n2(cluster, task_id, workers["n1"])
    cluster.wait_until(lambda: cluster["n3"].state(task_id) == DEAD, what="the D event on n3")
    cluster.start_node("n1")
    n1 = cluster["n1"]
    cluster.wait_until(lambda: n1.state(task_id) == DEAD, what="n1 to restore the task dead")
    cluster.settle(0.5)      # its resyncs with n2 and n3
    mine = _dead(cluster, "n1", task_id)
    assert args_lost(mine) is None and mine.body == b"\x91\x01"
    assert all(args_lost(_dead(cluster, n, task_id)) == "n1" for n in SURVIVORS)
    worker = cluster.worker("n1")
    assert n1.engine.dead_retry([task_id], wall()) == [task_id]
    n1.wake()
    cluster.wait_until(lambda: worker.runs(task_id), what="n1's worker to run the retried task")
    assert worker.complete(task_id, result=b"\x2a")
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == "done" for n in NODES),
                       what="the retried task done on every holder")
    assert workers["n2"].times(task_id) == 0 and workers["n3"].times(task_id) == 0
    assert not cluster.crashes()


def test_a_dead_event_carrying_a_record_counts_its_error_and_its_record_against_the_message_size():
    """Fault: the stream's chunking sized a ``D`` event by its last item,
    its error -- which, on a ``D`` event carrying a dead letter's record, is
    that record: an error of 16 KB went uncounted, and a message of such
    events could pass the size it is cut to. Both count now."""
    task = Task("a" * 32, "default", "tasks.charge", b"", at_most_once=True, replicas=3)
    task.holders, task.meta = ("n1", "n2", "n3"), {ARGS_LOST: "n1"}
    error = {"type": "Boom", "message": "x" * 16_000}
    event = ["D", task.id, 1, error, lost_record(task)]
    assert event_size(event) >= len(msgpack.packb(event))
    assert event_size(event) >= event_size(["D", task.id, 1, error]) + len(msgpack.packb(lost_record(task)))


def test_a_dead_letter_heard_from_another_holder_never_takes_a_key_another_task_holds(inproc):
    """Fault: a peer's ``D`` event (or a SYNC record) of a dead letter
    without arguments names a ``key`` its placeholder here never had -- the
    key of another task n3 holds live. Before the fix the record was
    installed as it came: n3's dedup key pointed at the dead letter, so a
    producer's resend with that key was answered with the wrong task, and
    once the dead letter was purged the key deduplicated nothing while the
    live task went on (a REPLICATE'd copy naming a held key is refused,
    this path checked nothing). A SYNC record of a task that is not
    at-most-once replaced the placeholder too (the ``D`` event's check alone
    refused that). Now the dead letter keeps its placeholder's key, never
    one another task holds, and such a record is refused and counted. A
    placeholder heard from a resync before its copy (a ghost: queue
    ``default``, no key) takes the record's queue and a key no task holds."""
    cluster = inproc(3, replicas=3)
    task_id, _ = _started_on_n1(cluster)
    other = cluster.task_id()
    cluster.submit_accepted("n1", other, name="tasks.other", key="order-42", countdown=3600)
    n3 = cluster["n3"]
    cluster.wait_until(lambda: n3.state(other) is not None, what="n3's copy of the keyed task")
    assert n3.engine.table.keys["order-42"] == other
    lease = n3.engine.placeholder_leases[task_id]

    def lost(tid: str, queue: str = "default", key: str | None = None, at_most_once: bool = True) -> Task:
        task = Task(tid, queue, "tasks.charge", b"", key=key, at_most_once=at_most_once, replicas=3)
        task.holders, task.meta, task.state, task.error = lease.holders, {ARGS_LOST: "n1"}, DEAD, ERROR
        return task

    refused = n3.role.refusals.total()
    twice = task_record(lost(task_id, at_most_once=False))       # a task that may run again
    assert not n3.role.copies.installer.install(twice, wall(), "sync", "n2")
    assert n3.role.refusals.total() == refused + 1 and n3.state(task_id) == STARTED_ELSEWHERE
    apply_events(n3.role, "n2", [["D", task_id, 1, ERROR, lost_record(lost(task_id, key="order-42"))]])
    dead = _dead(cluster, "n3", task_id)
    assert dead.key is None and args_lost(dead) == "n1"
    assert n3.engine.table.keys["order-42"] == other
    assert n3.engine.dead_purge(None, [task_id]) == 1
    assert n3.engine.table.keys["order-42"] == other
    for key, kept in (("order-42", None), ("k-7", "k-7")):      # ghosts of a resync: no key of their own
        ghost = cluster.task_id()
        n3.engine.finish_copy(ghost, STARTED_ELSEWHERE, None, None, wall())
        assert n3.tombstone(ghost).queue == "default" and n3.tombstone(ghost).key is None
        assert n3.role.copies.installer.install(task_record(lost(ghost, "mail", key)), wall(), "sync", "n2")
        dead = _dead(cluster, "n3", ghost)
        assert (dead.queue, dead.key, args_lost(dead)) == ("mail", kept, "n1")
    assert n3.engine.table.keys["order-42"] == other and n3.engine.table.keys["k-7"] == ghost
    assert n3.role.refusals.total() == refused + 1
    assert not cluster.crashes()
