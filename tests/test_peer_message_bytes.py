"""Messages between nodes carry at most ``PEER_MESSAGE_BYTES`` of payloads
and results (in-process cluster, miyaq.testing.inprocess; sizes read off
the in-memory wire).

Before 2026-12-06 only ``max_message`` (16 MiB) and counts bounded them: a
burst of large tasks went to each holder as one REPLICATE, a handoff, a
SYNC answer or a batch of finished events as one message of up to 16 MiB,
which takes longer than the 5 s the peer link waits for a SYNC answer or a
handoff's confirmation (and than ``peer_heartbeat_timeout``, libzmq
hearing the heartbeat's answer only behind it) on any link under 27 Mbit/s:
sent again and again, it never arrived in time.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from miyaq.cluster import sync as sync_module
from miyaq.cluster.sizes import PEER_MESSAGE_BYTES
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import wall
from miyaq.store.records import task_record
from miyaq.store.task import DONE

TASK_BYTES = 300_000
LARGE = 12            # 3.6 MB of payloads: more than three messages' worth
OLD = ["n1", "n2", "n3"]
ALL = ["n1", "n2", "n3", "n4"]
MOST = PEER_MESSAGE_BYTES + TASK_BYTES + 64 * 1024
"""The most one message may weigh: the budget, one more task than it holds
(a run is cut once it is passed), and the fixed fields of its records."""


@contextmanager
def _one_burst(owner: Any, wake: str) -> Iterator[None]:
    """The node's loop does not run between the calls made inside (its
    ``owner.wake`` waits): what they make the node send leaves at once, as
    after a burst of messages its reader took in one go."""
    setattr(owner, wake, lambda: None)
    try:
        yield
    finally:
        delattr(owner, wake)
    getattr(owner, wake)()


def _sizes(cluster, kind: str, **match) -> list[int]:
    return [len(m.frames[-1]) for m in cluster.net.messages(kind, **match)]


def _carried(cluster, kind: str, **match) -> set[str]:
    ids: set[str] = set()
    for m in cluster.net.messages(kind, **match):
        ids |= m.task_ids()
    return ids


def test_a_burst_of_large_tasks_is_replicated_and_handed_off_in_messages_of_a_mebibyte(inproc):
    """Fault: 12 tasks of 300 KB submitted at once went to each other holder
    as one REPLICATE of 3.6 MB, and to a node joining the ring as one
    handoff; a restarted node's SYNC was answered with all of them in one
    message. Each message now carries at most PEER_MESSAGE_BYTES of
    payloads, and together they carry every task."""
    cluster = inproc(4, ring=OLD, replicas=3)
    with _one_burst(cluster["n1"], "wake"):
        subs = [cluster.submit("n1", countdown=3600, body=bytes(TASK_BYTES)) for _ in range(LARGE)]
    ids = {s.task_id for s in subs}
    cluster.wait_until(lambda: all(s.status == "accepted" for s in subs), what="every submit accepted")
    for holder in ("n2", "n3"):
        assert _carried(cluster, "REPLICATE", src="n1", dst=holder) == ids
        sizes = _sizes(cluster, "REPLICATE", src="n1", dst=holder)
        assert len(sizes) >= 4 and max(sizes) <= MOST, sizes

    cluster.stop_node("n3")
    cluster.start_node("n3")        # empty: it fetches every task it holds with SYNC
    cluster.wait_until(lambda: all(cluster["n3"].task(t) is not None for t in ids), what="n3 resynced")
    answers = [m for m in cluster.net.messages("ANSWER", dst="n3") if "next" in m.body]
    assert set().union(*(m.task_ids() for m in answers)) >= ids
    assert max(len(m.frames[-1]) for m in answers) <= MOST

    cluster.publish(ALL)            # n4 joins: it becomes a holder of most of them
    moved = {t for t in ids if "n4" in cluster.holders(t)}
    assert len(moved) * TASK_BYTES > 2 * PEER_MESSAGE_BYTES, "enough must move to n4"
    cluster.wait_until(lambda: all(cluster["n4"].task(t) is not None for t in moved), what="the handoff to n4")
    sizes = _sizes(cluster, "REPLICATE", dst="n4")
    assert sizes and max(sizes) <= MOST, sizes


def test_large_results_go_to_the_other_holders_and_to_a_new_holder_in_messages_of_a_mebibyte(inproc, monkeypatch):
    """Fault: 12 tasks finished at once with results of 300 KB: their F
    events went to each other holder as one stream message of 3.6 MB, and
    their outcomes to a node joining the ring as one REPLICATE of stones;
    a QUERY about them, and a REPLICATE of them again (a client's resend),
    were answered with every result in one message. Each now carries at
    most PEER_MESSAGE_BYTES of results (a QUERY answer leaves out the rest:
    the asker asks again), and together the stream messages and the handoff
    carry every one. A REPLICATE answer still carries every result (as far
    as ``max_message``): its asker cannot tell a result left out from none."""
    cluster = inproc(4, ring=OLD, replicas=3)
    worker = cluster.worker("n1")
    ids = {cluster.task_led_by("n1") for _ in range(LARGE)}
    for task_id in ids:
        cluster.submit_accepted("n1", task_id)     # resent if refused after a freeze (a loaded machine)
    cluster.wait_until(lambda: all(worker.times(t) == 1 for t in ids), what="every task leased on n1")
    with _one_burst(worker, "_wake"):
        for task_id in ids:
            assert worker.complete(task_id, bytes(TASK_BYTES))
    cluster.wait_until(lambda: all(cluster[h].state(t) == DONE for h in ("n2", "n3") for t in ids),
                       what="the other holders to hear every end")
    for holder in ("n2", "n3"):
        finished = [m for m in cluster.net.messages("EVENTS", src="n1", dst=holder) if m.events("F")]
        assert {e[1] for m in finished for e in m.events("F")} == ids
        assert len(finished) >= 4 and max(len(m.frames[-1]) for m in finished) <= MOST

    answer = cluster["n2"].role.copies.on_query("n3", {"ids": sorted(ids)})
    results = sum(len(state[1] or b"") for state in answer["states"].values())
    assert 0 < results <= PEER_MESSAGE_BYTES + TASK_BYTES and len(answer["states"]) < LARGE

    holder = cluster["n2"]
    answers: list[dict[str, Any]] = []
    monkeypatch.setattr(holder.role.peer, "later", lambda: answers.append)
    records = []
    for task_id in sorted(ids):
        task = task_from_wire({"id": task_id, "name": "job"}, wall(), holder.config)
        task.holders = tuple(cluster.holders(task_id))
        records.append(task_record(task))
    holder.role.copies.on_replicate("n1", {"tasks": records})
    cluster.wait_until(lambda: answers, what="the answer to the REPLICATE, once written")
    finished = answers[0]["finished"]
    assert set(finished) == ids
    # Every result, whatever the budget: the asker cannot tell a result left
    # out from none, and would store and pass on the end without it (a review
    # of 2026-12-06: 10 of 12 resent tasks ended done with no result).
    assert all(outcome[1] == bytes(TASK_BYTES) for outcome in finished.values())

    cluster.publish(ALL)
    moved = {t for t in ids if "n4" in cluster.holders(t)}
    assert len(moved) * TASK_BYTES > 2 * PEER_MESSAGE_BYTES, "enough must move to n4"
    cluster.wait_until(lambda: all(cluster["n4"].tombstone(t) is not None for t in moved),
                       what="the outcomes handed to n4")
    stones = [m for m in cluster.net.messages("REPLICATE", dst="n4") if m.body.get("stones")]
    assert stones and max(len(m.frames[-1]) for m in stones) <= MOST


MIB = 1 << 20
MANY = 20             # 20 MiB of results: more than a SYNC answer's half of max_message (16 MiB)


def _finish_on_n1(cluster, count: int, size: int) -> tuple[Any, list[str]]:
    """``count`` tasks led by n1, run there once by the worker returned and
    finished with results of ``size`` bytes."""
    worker = cluster.worker("n1")
    ids = [cluster.task_led_by("n1") for _ in range(count)]
    for task_id in ids:
        cluster.submit_accepted("n1", task_id)     # resent if refused after a freeze (a loaded machine)
    cluster.wait_until(lambda: all(worker.times(t) == 1 for t in ids), what="every task leased on n1")
    for task_id in ids:
        assert worker.complete(task_id, bytes(size))
    cluster.wait_until(lambda: all(cluster[h].state(t) == DONE for h in ("n2", "n3") for t in ids),
                       timeout=30, what="the other holders to hear every end")
    return worker, ids


def _every_result_everywhere(cluster, ids: list[str], size: int) -> bool:
    return all(cluster[h].tombstone(t) is not None and cluster[h].tombstone(t).result == bytes(size)
               for h in cluster.ids for t in ids)


@pytest.mark.parametrize("count, size", [(LARGE, TASK_BYTES), (MANY, MIB)], ids=["12x300KB", "20x1MiB"])
def test_a_node_restarted_empty_gets_back_every_outcome_of_large_results_and_takes_resends_as_duplicates(
        inproc, count, size):
    """Faults: (12 x 300 KB, a review audit of the 1 MiB budget) the SYNC
    answer's tombstones, cut at half the budget, brought 1 of 12 outcomes
    back to a node restarted empty, and the REPLICATE answers to its
    resends, cut too, said "finished" without the results: 10 of 12 ended
    done with no result there; (20 x 1 MiB, an audit of sizes at the
    limits) even bounded by max_message only, the tombstones -- on the
    first page only, with no cursor for the rest -- brought back 7 of 20,
    the resends were 13 new tasks, and 6 ended done with no result. The
    tombstones are now paged: every outcome comes back with its result,
    every resend is a duplicate, and no node holds a result None."""
    cluster = inproc(3, replicas=3)
    worker, ids = _finish_on_n1(cluster, count, size)
    cluster.stop_node("n3")
    back = cluster.start_node("n3")
    cluster.wait_until(lambda: all(back.tombstone(t) is not None for t in ids), timeout=30,
                       what="every outcome back on n3 from the resyncs")
    assert all(back.tombstone(t).result == bytes(size) for t in ids)
    # Restarted empty while the ring lists it, n3 reconciles (coordinates no
    # submit) until its resyncs came: a client's submit would go elsewhere.
    cluster.wait_until(lambda: not back.role.reconciling, what="n3's reconcile to end")
    with _one_burst(back, "wake"):
        resends = [cluster.submit("n3", t) for t in ids]
    cluster.wait_until(lambda: all(s.status for s in resends), what="the resends answered")
    assert {s.status for s in resends} == {"duplicate"}
    assert _every_result_everywhere(cluster, ids, size)
    assert all(worker.times(t) == 1 for t in ids) and not cluster.crashes()


def test_a_resent_copy_told_finished_without_its_result_asks_for_it_rather_than_end_without_it(inproc, monkeypatch):
    """Fault (an audit of sizes at the limits): a node that did not get the
    outcomes back (here: its resyncs bring back 2 tombstones) took a burst
    of resends of 20 tasks finished with results of 1 MiB as new tasks; the
    REPLICATE answers said them finished but left out every result past
    half of max_message, and the node could not tell a result left out from
    none: 6 of 20 ended done with result None there, and it told the other
    holders so. An answer now names the results it left out
    (``results_left_out``); the resent copy (a standby copy) is not finished
    on it but asks the holders, whose QUERY answers carry the result: every
    node ends with every result, and none runs again."""
    monkeypatch.setattr(sync_module, "RESYNC_STONES", 2)
    cluster = inproc(3, replicas=3)
    worker, ids = _finish_on_n1(cluster, MANY, MIB)
    cluster.stop_node("n3")
    back = cluster.start_node("n3")
    cluster.wait_until(lambda: back.role.resync.completed >= 2, timeout=30, what="n3's resyncs")
    cluster.wait_until(lambda: not back.role.reconciling, what="n3's reconcile to end (restarted empty)")
    with _one_burst(back, "wake"):
        resends = [cluster.submit("n3", t) for t in ids]
    cluster.wait_until(lambda: all(s.status for s in resends), timeout=30, what="the resends answered")
    finished = [m.body["finished"] for m in cluster.net.messages("ANSWER", dst="n3") if m.body.get("finished")]
    assert max(map(len, finished)) > MANY // 2, "the burst must leave results out: more than half 16 MiB"
    cluster.wait_until(lambda: _every_result_everywhere(cluster, ids, MIB), timeout=30,
                       what="every result on every node")
    assert all(worker.times(t) == 1 for t in ids) and not cluster.crashes()


def test_sync_answers_page_the_tombstones_each_once_with_a_growing_cursor(inproc, monkeypatch):
    """Fault: a SYNC answer carried tombstones on its first page only, with
    no cursor of their own: what did not fit half the message was never
    sent. They now come from the snapshot taken at cursor 0 in pages (beside
    the tasks, then alone past the tasks' positions): the cursor grows
    strictly, every tombstone comes exactly once, and one gone since the
    snapshot is skipped."""
    monkeypatch.setattr(sync_module, "RESYNC_CHUNK", 1)
    cluster = inproc(3, replicas=3)
    _, finished = _finish_on_n1(cluster, 6, 400_000)    # one a page: half the 1 MiB budget holds one
    waiting = cluster.accepted([cluster.submit("n1", countdown=3600) for _ in range(3)])
    resync = cluster["n1"].role.resync
    cursor: int | None = 0
    cursors, stones, tasks = [], [], []
    while cursor is not None:
        answer = resync.serve("n3", {"cursor": cursor})
        cursors.append(cursor)
        stones += [s[0] for s in answer["stones"]]
        tasks += [r["id"] for r in answer["tasks"]]
        if cursor == 0:
            gone = cluster["n1"].role.engine.table.tombstones.pop_oldest().id     # dropped after the snapshot
            assert gone in finished and gone not in stones
        cursor = answer["next"]
        assert cursor is None or cursor > cursors[-1]
    assert len(cursors) == len(stones) == 5 and cursors[-1] > 3      # one a page; past the tasks, stones alone
    assert sorted(stones) == sorted(set(finished) - {gone})
    assert set(tasks) == {s.task_id for s in waiting} and len(tasks) == 3
    assert not resync._snapshots and not cluster.crashes()


def test_a_resync_whose_pages_cross_slowly_keeps_its_snapshot_as_long_as_the_asker_waits(inproc, monkeypatch):
    """Fault: a slow link between two nodes, for which the operator set
    ``peer_heartbeat_timeout`` (30 s here): the asker waits that long for a
    SYNC page (since 2026-12-07), but the source dropped its snapshot once
    unused for 20 s (``SYNC_SNAPSHOT_TTL``, four times the 5 s wait of
    before). A page that took 25 s to cross, and the asker's question for
    the next one, found no snapshot: the next pages were cut from a fresh
    list, with no tombstones (a node restarted empty got back only the
    outcomes of its first page) and positions shifted by the tasks finished
    meanwhile. The source now keeps a snapshot four times the longer wait.
    The 25 s pass on the cluster's clock between pages, as a page crossing
    that link takes them (the fault, no timing asserted)."""
    monkeypatch.setattr(sync_module, "RESYNC_CHUNK", 1)
    cluster = inproc(3, replicas=3, peer_heartbeat_timeout=30.0)
    _, finished = _finish_on_n1(cluster, 3, 400_000)    # one a page: half the 1 MiB budget holds one
    resync = cluster["n1"].role.resync
    cursor: int | None = 0
    stones: list[str] = []
    while cursor is not None:
        answer = resync.serve("n3", {"cursor": cursor})
        stones += [s[0] for s in answer["stones"]]
        cursor = answer["next"]
        if cursor is not None:
            cluster.advance(sync_module.SYNC_SNAPSHOT_TTL + 5.0, step=1.0)     # within the asker's 30 s
    assert sorted(stones) == sorted(finished)
    assert not cluster.crashes()
