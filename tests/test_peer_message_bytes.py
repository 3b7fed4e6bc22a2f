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
        cluster.submit("n1", task_id)
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


def test_a_node_restarted_empty_gets_back_every_outcome_of_large_results_and_takes_resends_as_duplicates(inproc):
    """Fault (a review audit of the budget): the SYNC answer's tombstones --
    sent in its first page only, with no cursor of their own -- were cut at
    half the 1 MiB budget, so a node restarted empty got back 1 of 12
    outcomes of 300 KB; the client's resends of those ids to it were taken
    for new tasks, and the REPLICATE answers, cut at the budget too, said
    "finished" without the result: 10 of the 12 ended done with no result
    there (a RESULT answered ``{'state': 'done'}``), passed on to the other
    holders. Both are bounded by ``max_message`` only again: every outcome
    comes back with its result, and every resend is a duplicate."""
    cluster = inproc(3, replicas=3)
    worker = cluster.worker("n1")
    ids = [cluster.task_led_by("n1") for _ in range(LARGE)]
    for task_id in ids:
        cluster.submit("n1", task_id)
    cluster.wait_until(lambda: all(worker.times(t) == 1 for t in ids), what="every task leased on n1")
    for task_id in ids:
        assert worker.complete(task_id, bytes(TASK_BYTES))
    cluster.wait_until(lambda: all(cluster[h].state(t) == DONE for h in ("n2", "n3") for t in ids),
                       what="the other holders to hear every end")
    cluster.stop_node("n3")
    back = cluster.start_node("n3")
    cluster.wait_until(lambda: all(back.tombstone(t) is not None for t in ids), timeout=30,
                       what="every outcome back on n3 from the resyncs")
    assert all(back.tombstone(t).result == bytes(TASK_BYTES) for t in ids)
    with _one_burst(back, "wake"):
        resends = [cluster.submit("n3", t) for t in ids]
    cluster.wait_until(lambda: all(s.status for s in resends), what="the resends answered")
    assert {s.status for s in resends} == {"duplicate"}
    assert all(cluster[h].tombstone(t).result == bytes(TASK_BYTES) for h in cluster.ids for t in ids)
    assert all(worker.times(t) == 1 for t in ids) and not cluster.crashes()
