"""What the cluster parts of a node keep, and for how long: each table is
bounded, by count, bytes or time as documented, whatever its peers send.

In-process clusters (miyaq.testing.inprocess): counted in the parts' own
tables and on the in-memory wire, not by the process's memory; time passes
on the cluster's clock (``cluster.advance``)."""
from __future__ import annotations

import pytest

from miyaq.cluster import holder_events
from miyaq.cluster import sync as sync_module
from miyaq.cluster.peer_requests import SYNC
from miyaq.constants import DEPARTED_GRACE, EARLY_EVENT_BYTES, EARLY_EVENT_TTL
from miyaq.protocol.failurespec import cut_error
from miyaq.store.table import TaskTable, error_bytes, stone_bytes
from miyaq.store.task import Task

#: An error at the documented maximum: 16 names of 16,384 characters each.
BIG_ERROR = {f"k{i:02d}": chr(ord("a") + i) * 16384 for i in range(16)}
#: What a node keeps of it: cut to ERROR_BYTES where it enters.
KEPT_BYTES = error_bytes(cut_error(dict(BIG_ERROR)))


def _publish(cluster, src: str, dst: str, events: list[list]) -> None:
    """``src`` publishes ``events`` to ``dst`` on its stream, as its engine would."""
    cluster[src].role.publisher.send(dst, events)


def _held_bytes(events: holder_events.EventPublisher) -> int:
    return sum(EARLY_EVENT_BYTES + (error_bytes(ev[3]) if ev[0] == "D" else 0) for _, ev, _ in events.early.values())


# -- early STARTED and DEAD events ----------------------------------------------------------

def test_dead_events_of_at_most_once_tasks_are_not_held_where_the_copy_ended(inproc):
    """Fault: ordinary use. At-most-once tasks start on their first holder:
    the other holders end their copies at once (``started-elsewhere``
    tombstones). The tasks then fail for good and the DEAD events reach
    holders that have no copy: each was kept as an "early" event, for a
    copy that would never come, until 10,000 newer ones pushed it out
    (2,000 such tasks left 38.9 MiB of error text on each other holder). An
    S or D event for an id with a tombstone here is not kept now."""
    cluster = inproc(3, replicas=3)
    worker = cluster.worker("n1")
    tids = [cluster.task_led_by("n1") for _ in range(20)]
    cluster.accepted([cluster.submit("n2", t, at_most_once=True) for t in tids])
    cluster.wait_until(lambda: all(worker.runs(t) for t in tids), what="n1 runs every task")
    error = {"type": "ValueError", "message": "bad input", "traceback": "x" * 16384}
    for tid in tids:
        worker.fail(tid, error, retry=True)

    def dead_events_to(dst: str) -> int:
        return sum(len(m.events("D")) for m in cluster.net.messages("EVENTS", src="n1", dst=dst)
                   if m.fate == "delivered")

    cluster.wait_until(lambda: dead_events_to("n2") == dead_events_to("n3") == len(tids) and cluster.net.quiet(),
                       what="every DEAD event delivered")
    for node_id in ("n2", "n3"):
        assert {cluster[node_id].state(t) for t in tids} == {"started-elsewhere"}
        events = cluster[node_id].role.events
        assert len(events.early) == 0 and events.early_bytes == 0, (node_id, len(events.early))
    assert not cluster.crashes()


def test_early_events_are_dropped_after_their_60_s_and_bounded_in_bytes(inproc, monkeypatch):
    """Fault: a peer publishes DEAD events for ids this node does not hold,
    each with an error at the documented maximum (16 x 16,384 characters).
    They were kept by count only (10,000: 2.5 GiB of such errors; 1,000 of
    them held 251 MiB), and past their 60 s until 10,000 newer ones came: the
    60 s was looked at only when an event was taken out. They are now kept
    within MAX_EARLY_EVENT_BYTES (the oldest dropped first) and dropped once
    60 s old, by the next one kept or by the ticker."""
    one = EARLY_EVENT_BYTES + KEPT_BYTES
    budget = 5 * one + one // 2
    monkeypatch.setattr(holder_events, "MAX_EARLY_EVENT_BYTES", budget)
    cluster = inproc(2, replicas=2)
    events = cluster["n1"].role.events
    for i in range(12):
        _publish(cluster, "n2", "n1", [["D", f"early-{i}", 1, {k: v[:-1] + str(i % 10) for k, v in BIG_ERROR.items()}]])
    cluster.wait_until(lambda: cluster.net.quiet() and "early-11" in events.early, what="the events applied")
    assert events.early_bytes == _held_bytes(events) <= budget
    assert len(events.early) == budget // one
    assert list(events.early)[-1] == "early-11"       # the newest kept, the oldest dropped

    cluster.advance(EARLY_EVENT_TTL + 2.0, step=1.0)
    cluster.wait_until(lambda: not events.early, what="the ticker dropping the expired early events")
    assert events.early_bytes == 0

    # Expired ones go as soon as another is kept, ticker or not.
    monkeypatch.setattr(events, "drop_expired_early", lambda now: None)       # the ticker's call does nothing
    _publish(cluster, "n2", "n1", [["S", "s-1", 1, 0.0, False, None]])
    cluster.wait_until(lambda: "s-1" in events.early, what="an S event kept")
    cluster.advance(EARLY_EVENT_TTL + 2.0, step=1.0)
    assert "s-1" in events.early
    _publish(cluster, "n2", "n1", [["S", "s-2", 1, 0.0, False, None]])
    cluster.wait_until(lambda: "s-2" in events.early, what="another S event kept")
    assert list(events.early) == ["s-2"] and events.early_bytes == EARLY_EVENT_BYTES
    assert not cluster.crashes()


# -- tombstones' bytes -----------------------------------------------------------------------

def test_tombstones_from_a_peers_finished_events_count_their_error_text(inproc):
    """Fault: a peer publishes FINISHED events for ids this node does not
    hold, each with an error at the documented maximum. Each became a
    tombstone keeping the peer's error, counted nowhere: 1,000 of them held
    251 MiB while ``result_bytes`` said 0, and they pushed real tombstones
    out by count only. The error text now counts in ``result_bytes``; and
    since such ends are kept apart from finished tasks' tombstones
    (miyaq.cluster.ends_ahead), one that would take ``result_bytes`` past
    ``max_result_bytes`` is refused: no finished task's tombstone is
    forgotten for them."""
    max_result_bytes = 2 * KEPT_BYTES + KEPT_BYTES // 2
    cluster = inproc(2, replicas=2, max_result_bytes=max_result_bytes)
    table = cluster["n1"].engine.table
    for i in range(12):
        error = {k: v[:-1] + str(i % 10) for k, v in BIG_ERROR.items()}
        _publish(cluster, "n2", "n1", [["F", f"fin-{i}", "cancelled", None, error]])
    cluster.wait_until(lambda: cluster.net.quiet() and table.ends_ahead_refused == 10,
                       what="the events applied or refused")
    kept = list(table.tombstones.values())
    assert [s.id for s in kept] == ["fin-0", "fin-1"]
    assert table.result_bytes == sum(stone_bytes(s.result, s.error) for s in kept) > 0
    assert table.result_bytes <= max_result_bytes
    assert table.results_dropped == 0
    assert not cluster.crashes()


def _table(**limits) -> TaskTable:
    settings = {"max_tombstones": 100, "tombstone_ttl": 60.0, "max_dead": 10, "max_result_bytes": 10_000}
    return TaskTable(**{**settings, **limits})


def _finish(table: TaskTable, task_id: str, result: bytes | None, error, now: float = 1000.0) -> None:
    task = Task(task_id, "default", None, b"payload")
    task.error = error
    table.add(task)
    table.bury(task, "done" if error is None else "failed", result, now)


def _books_balance(table: TaskTable) -> int:
    kept = sum(stone_bytes(s.result, s.error) for s in table.tombstones.values())
    assert table.result_bytes == kept
    return kept


@pytest.mark.parametrize("error", [{"type": "E", "message": "m" * 300},
                                   {"type": "É", "message": "ü" * 300, "code": 7, "retry": None}])
def test_a_tombstones_error_counts_with_its_result_through_bury_replace_expire_and_evict(error):
    """Fault: a tombstone's error text was outside ``result_bytes`` (only
    results counted). It now counts, as UTF-8, and the sum stays equal to
    what the tombstones keep as they are buried, replaced, expired by age,
    evicted by count and forgotten at twice ``max_result_bytes``."""
    size = error_bytes(error)
    assert size >= 300 * (2 if "É" in error["type"] else 1)
    table = _table()
    _finish(table, "a", b"r" * 100, error)
    assert _books_balance(table) == 100 + size
    _finish(table, "a", None, None)             # replaced: the old one's bytes go
    assert _books_balance(table) == 0
    _finish(table, "a", b"r" * 10, error)       # replaced again
    assert _books_balance(table) == 10 + size

    _finish(table, "b", None, error, now=2000.0)
    table.sweep(now=1000.0 + 61.0)              # "a" expired, "b" not
    assert list(table.tombstones) == ["b"] and _books_balance(table) == size

    small = _table(max_tombstones=2)
    for i in range(5):
        _finish(small, f"t{i}", b"x", error)
    assert len(small.tombstones) == 2 and _books_balance(small) == 2 * (1 + size)

    tight = _table(max_result_bytes=size)       # forgotten past 2 x size
    for i in range(5):
        _finish(tight, f"t{i}", None, error)
    assert _books_balance(tight) <= 2 * size and tight.results_dropped == 3
    while tight.tombstones:
        tight.sweep(now=10_000.0)
    assert tight.result_bytes == 0


# -- per departed node, per asker -------------------------------------------------------------

def test_a_node_that_left_the_ring_for_good_leaves_no_stream_sequence_behind(inproc):
    """Fault: nodes join under new ids and leave (containers recreated,
    machines replaced). Everything a node kept per departed node was let go
    after DEPARTED_GRACE, except its stream's sequence number per
    destination (``StreamSender.seqs``): 200 join and leave rounds left 202
    entries, never pruned. It is forgotten with the rest now."""
    members = ["n1", "n2", "n3"]
    cluster = inproc(members, replicas=4)
    worker = cluster.worker("n1")
    publisher = cluster["n1"].role.publisher
    for i in range(3):
        node_id = f"c{i}"
        cluster.start_node(node_id)
        cluster.publish(members + [node_id])
        tid = cluster.task_led_by("n1", replicas=4)
        cluster.submit_accepted("n1", tid, replicas=4)
        cluster.wait_until(lambda: worker.runs(tid), what=f"{tid} running on n1")
        worker.complete(tid)
        cluster.wait_until(lambda: node_id in publisher.seqs, what=f"n1's FINISHED event published to {node_id}")
        cluster.stop_node(node_id)
        cluster.publish(members)
    assert {"c0", "c1", "c2"} <= set(publisher.seqs)
    cluster.advance(DEPARTED_GRACE + 2.0, step=1.0)
    cluster.wait_until(lambda: set(publisher.seqs) <= {"n2", "n3"},
                       what="the departed nodes' sequence numbers forgotten")
    assert not cluster["n1"].role.departed()
    assert not cluster.crashes()


def test_a_resync_snapshot_nobody_comes_back_for_is_dropped_without_another_sync(inproc, monkeypatch):
    """Fault: a peer opens a resync (SYNC cursor 0) and never asks for the
    rest (it died, or gave up). Its snapshot (the ids the two nodes share)
    was dropped after SYNC_SNAPSHOT_TTL only when another SYNC came: in a
    quiet cluster it stayed for good, though the docs say 20 s. The
    cluster ticker drops it now."""
    monkeypatch.setattr(sync_module, "RESYNC_CHUNK", 1)
    cluster = inproc(3, replicas=3)
    cluster.accepted([cluster.submit("n1", countdown=3600) for _ in range(3)])
    resync = cluster["n1"].role.resync
    answers: list = []
    cluster["n2"].role.peer.request("n1", SYNC, {"cursor": 0}, 5.0, answers.append)
    cluster.wait_until(lambda: answers, what="the answer to cursor 0")
    assert answers[0]["next"] == 1 and list(resync._snapshots) == ["n2"]
    cluster.advance(sync_module.SYNC_SNAPSHOT_TTL + 2.0, step=1.0)
    cluster.wait_until(lambda: not resync._snapshots, what="the unused snapshot dropped")
    assert not cluster.crashes()
