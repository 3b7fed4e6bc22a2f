"""The purge marks a SYNC answer carries (docs/cluster.md, "Purged dead
letters stay purged"): which dead copies the asker drops for them, how a bad
mark is refused, and how the marks are paged within ``max_message``. The
end-to-end case (a holder cut off during a purge) is in
test_inproc_purge_after_restart.py. In-process (miyaq.testing.inprocess)."""
from __future__ import annotations

import msgpack
import pytest
from test_inproc_purge_after_restart import _dead_letters

from miyaq.constants import RESYNC_CHUNK, RESYNC_PURGED, RESYNC_STONES
from miyaq.runtime import wall
from miyaq.store.records import transfer_record

pytestmark = pytest.mark.timeout(90)


def _dead_letter(cluster) -> str:
    """A task led by n1, dead-lettered on every holder."""
    return _dead_letters(cluster, 1)[0]


def _drop(node, marks: list) -> None:
    """Apply ``marks`` as n1's SYNC answer would (no clock shift)."""
    with node.role.events.applying_remote():
        node.role.resync.apply_purge_marks("n1", marks, 0.0, wall())


def _pages(node, asker: str, max_message: int) -> list[dict]:
    """Every answer of one resync of ``asker`` served by ``node``, each
    checked to fit ``max_message`` and to move the cursor on."""
    pages: list[dict] = []
    cursor = 0
    while True:
        answer = node.role.resync.serve(asker, {"cursor": cursor})
        assert len(msgpack.packb(answer)) <= max_message
        pages.append(answer)
        if answer["next"] is None:
            return pages
        assert answer["next"] > cursor and len(pages) < 1000
        cursor = answer["next"]


def test_a_purge_mark_drops_only_a_dead_copy_made_before_that_purge(inproc):
    """Fault guarded: a purge mark taken for any copy of its id would drop
    a task submitted again with the id after the purge (its dead copy was
    made after the mark), or a live copy. Only a dead copy made at or
    before the purge is purged, and the purge is remembered from its own
    time."""
    cluster = inproc(3, replicas=3)
    task_id = _dead_letter(cluster)
    n3 = cluster["n3"]
    created = n3.engine.table.dead[task_id].created
    _drop(n3, [[task_id, created - 1.0]])          # a purge older than this copy: an earlier task of the id
    assert task_id in n3.engine.table.dead and not n3.engine.table.purged.was(task_id)
    waiting = cluster.task_led_by("n1")
    cluster.submit_accepted("n1", waiting, body=b"x", countdown=3600)
    cluster.wait_until(lambda: waiting in n3.engine.table.live, what="n3's copy of the waiting task")
    _drop(n3, [[waiting, wall()]])             # a live copy
    assert waiting in n3.engine.table.live
    at = created       # made at the purge's time: dropped (the node's clock has moved on since)
    _drop(n3, [[task_id, at]])
    assert task_id not in n3.engine.table.dead
    assert n3.engine.table.purged.get(task_id) == at     # the purge's time, not this node's
    assert not cluster.crashes()


def test_a_bad_purge_mark_is_refused_counted_and_changes_nothing(inproc):
    """Fault: a peer's SYNC answer with malformed purge marks (not a pair,
    a bad id, a time out of range or not a number) must not drop or mark
    anything, nor break the resync: each is refused and counted."""
    cluster = inproc(3, replicas=3)
    task_id = _dead_letter(cluster)
    n3 = cluster["n3"]
    before = n3.role.refusals.total()
    _drop(n3, [[task_id], [task_id, wall(), 1], ["no such id!", wall()], [task_id, -1.0],
               [task_id, "soon"], [task_id, float("nan")], "junk", [5, wall()]])
    assert n3.role.refusals.total() - before == 8
    assert task_id in n3.engine.table.dead and not n3.engine.table.purged.was(task_id)
    assert not cluster.crashes()


def test_a_sync_answers_purge_marks_are_paged_within_max_message_and_bounded(inproc):
    """Fault guarded: the marks (up to ``max_tombstones`` of them) sent in
    one answer would pass a peer's ``max_message`` and be dropped whole,
    every time. With the smallest ``max_message`` allowed, every answer of
    a resync fits it, the cursor always grows, and the answers carry the
    ``RESYNC_PURGED`` newest marks, each once -- not the older ones."""
    max_message = 1024 + 64 * 1024
    cluster = inproc(2, replicas=2, max_payload=1024, max_message=max_message)
    n1 = cluster["n1"]
    now = wall()
    ids = [f"{i:06d}".ljust(64, "x") for i in range(RESYNC_PURGED + 100)]
    for i, task_id in enumerate(ids):
        n1.engine.table.purged.mark(task_id, now - len(ids) + i)     # the last the newest
    pages = _pages(n1, "n2", max_message)
    sent = [task_id for answer in pages for task_id, _ in answer.get("purged", [])]
    assert len(pages) > 1
    assert sorted(sent) == sorted(ids[-RESYNC_PURGED:])
    assert not cluster.crashes()


def test_a_purge_mark_is_read_on_this_nodes_clock(inproc):
    """Fault guarded (review39, a mutant no test killed): a mark's ``at`` is
    the purging holder's wall clock. Compared unmoved with this copy's
    ``created`` (this node's clock), a purge by a holder whose clock is an
    hour behind looks older than the copy, and the stale dead letter
    survives; by one whose clock is an hour ahead, a dead letter made here
    after that purge (the id submitted again) looks older, and is purged.
    The mark is moved by the answer's clock shift first."""
    cluster = inproc(3, replicas=3)
    n3 = cluster["n3"]
    stale, newer = _dead_letters(cluster, 2)
    dead = n3.engine.table.dead
    stale_made, newer_made = dead[stale].created, dead[newer].created
    with n3.role.events.applying_remote():
        # n1's clock an hour behind ours (shift +3600): purged when the copy was made, by our clock
        n3.role.resync.apply_purge_marks("n1", [[stale, stale_made - 3600.0]], 3600.0, wall())
        # n1's clock an hour ahead (shift -3600): purged 10 s before this copy was made, by our clock
        n3.role.resync.apply_purge_marks("n1", [[newer, newer_made + 3600.0 - 10.0]], -3600.0, wall())
    assert stale not in dead and n3.engine.table.purged.get(stale) == stale_made
    assert newer in dead and not n3.engine.table.purged.was(newer)
    assert not cluster.crashes()


def test_a_purge_mark_from_the_future_is_remembered_from_now_at_the_latest(inproc):
    """Fault guarded (review39, a mutant no test killed): a mark whose
    ``at`` is past this node's clock (a peer's clock far ahead with no
    usable ``clock`` to shift by, or a buggy peer) was remembered at that
    time: its P record is refused at replay (a time past now), and as the
    oldest mark it would hold back the sweep of every mark made after it
    (:meth:`~miyaq.store.purge_marks.PurgeMarks.sweep` stops at the first
    mark not yet due). The purge is remembered at this node's now at the
    latest."""
    cluster = inproc(3, replicas=3)
    task_id = _dead_letter(cluster)
    n3 = cluster["n3"]
    before = wall()
    _drop(n3, [[task_id, 9e9]])
    assert task_id not in n3.engine.table.dead
    assert before <= n3.engine.table.purged.get(task_id) <= wall()
    assert not cluster.crashes()


def test_an_answer_with_tombstones_and_purge_marks_fits_max_message(inproc):
    """Fault guarded (review39, a mutant no test killed: the marks given the
    whole message instead of its quarter): the pages past the tasks carry
    tombstones (up to half the message) and purge marks together; every
    answer must still fit ``max_message``, or the peer drops it whole,
    every time. Each tombstone and each mark is sent once."""
    max_message = 1024 + 64 * 1024
    cluster = inproc(2, replicas=2, max_payload=1024, max_message=max_message)
    n1 = cluster["n1"]
    now = wall()
    stones = [f"stone{i:04d}" for i in range(200)]
    for stone in stones:
        n1.engine.restore_tombstone({"id": stone, "state": "done", "at": now, "queue": "default", "attempt": 1,
                                     "result": b"r" * 1000}, now)
    marks = [f"{i:06d}".ljust(64, "x") for i in range(2000)]
    for i, task_id in enumerate(marks):
        n1.engine.table.purged.mark(task_id, now - len(marks) + i)
    pages = _pages(n1, "n2", max_message)
    sent_stones = [stone[0] for answer in pages for stone in answer["stones"]]
    sent_marks = [task_id for answer in pages for task_id, _ in answer.get("purged", [])]
    together = sum(bool(answer["stones"] and answer.get("purged")) for answer in pages)
    assert together > 1
    assert sorted(sent_stones) == stones and sorted(sent_marks) == marks
    assert not cluster.crashes()


def test_a_dead_copy_made_after_a_purge_here_is_stored_and_a_stale_one_is_not(inproc):
    """Fault (review39): a holder refused every dead copy of an id it had
    purged, whenever that copy was made. A holder down (or cut off) while
    the id was submitted again after the purge, and that new task
    dead-lettered, comes back with the purge remembered (its log's ``P``
    record) and refused the new dead letter from every resync and handoff
    for the mark's life (a tombstone's): it alone did not list it, nor
    could retry or purge it -- where a SYNC answer's purge mark spares a
    dead copy made after the purge. A dead copy is now refused only if it
    was made at or before the purge remembered here, as the marks rule."""
    cluster = inproc(3, replicas=3)
    newer, stale = _dead_letters(cluster, 2)
    n1, n3 = cluster["n1"], cluster["n3"]
    for task_id, before in ((newer, True), (stale, False)):
        created = n3.engine.table.dead[task_id].created
        with n3.role.events.applying_remote():      # purged here alone: a purge of an earlier task of the id,
            n3.engine.dead_purge(None, [task_id], at=created - 10.0 if before else created + 0.001)
        assert task_id not in n3.engine.table.dead and n3.engine.table.purged.was(task_id)
        n3.role.install(transfer_record(n1.engine.table.dead[task_id]), wall(), "sync", "n1")
    assert newer in n3.engine.table.dead and not n3.engine.table.purged.was(newer)      # made after: stored
    assert stale not in n3.engine.table.dead and n3.engine.table.purged.was(stale)      # made before: stale
    assert not cluster.crashes()


@pytest.mark.parametrize("field", ["purged", "stones", "tasks"])
def test_a_sync_answer_with_a_list_longer_than_any_page_is_refused_whole(inproc, field):
    """Fault: a buggy or hostile peer answers SYNC with a message's worth of
    purge marks (or tombstones, or task records): 938,237 marks in 16 MiB
    held the asker's hub 0.6-3.1 s (review39). A list longer than a page of
    ``Resync.serve`` ever holds refuses the answer whole -- counted once,
    nothing applied, the resync asked again after a backoff -- even when
    its first items would have purged a dead letter here."""
    most = {"purged": RESYNC_PURGED, "stones": RESYNC_STONES, "tasks": RESYNC_CHUNK}[field]
    cluster = inproc(3, replicas=3)
    task_id = _dead_letter(cluster)
    n3 = cluster["n3"]
    before = n3.role.refusals.total()
    mark = [task_id, wall()]
    too_many = most + 1
    answer = {"tasks": [], "stones": [], "purged": [mark] * (too_many if field == "purged" else 1), "next": None}
    if field != "purged":
        answer[field] = [["junk"]] * too_many
    with n3.role.events.applying_remote():
        n3.role.resync._apply("n1", answer, 0, 0)
    assert n3.role.refusals.total() - before == 1
    assert n3.role.refusals.by_source().get("sync")
    assert task_id in n3.engine.table.dead and not n3.engine.table.purged.was(task_id)
    answer[field] = answer[field][:most] if field == "purged" else []
    with n3.role.events.applying_remote():
        n3.role.resync._apply("n1", answer, 0, 0)      # a page's worth is applied
    assert task_id not in n3.engine.table.dead
    assert not cluster.crashes()
