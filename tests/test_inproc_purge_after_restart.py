"""Dead letters purged at one holder of a cluster stay purged on every
holder, though a copy of them served before the purge is still on its way
(docs/cluster.md, "Purged dead letters stay purged"): a SYNC answer of a
restarted holder's resync, and the same after a restart of the holder that
heard the purge (its log's ``P`` records say when); and a holder that
missed the purge's ``P`` events drops its dead copies at its next resync
(the SYNC answers carry the purge marks). In-process
(miyaq.testing.inprocess), with a log on every node."""
from __future__ import annotations

import logging

from miyaq.core.cancels_ahead import tombstones_apart

import pytest

pytestmark = pytest.mark.timeout(90)

NODES = ("n1", "n2", "n3")


def _dead_letters(cluster, n: int) -> list[str]:
    """``n`` tasks led by n1, dead-lettered on every holder."""
    ids = [cluster.task_led_by("n1") for _ in range(n)]
    for task_id in ids:
        cluster.submit_accepted("n1", task_id, body=b"x")
    worker = cluster.worker("n1")
    for task_id in ids:
        cluster.wait_until(lambda: worker.runs(task_id), what=f"{task_id} to run")
        worker.fail(task_id, {"type": "Failure", "message": "no"}, retry=False)
    cluster.wait_until(lambda: all(t in cluster[n].engine.table.dead for n in NODES for t in ids),
                       what="every holder to dead-letter them")
    return ids


def _holding(cluster, ids: list[str]) -> dict[str, list[str]]:
    found = {n: [t for t in ids if t in cluster[n].engine.table.dead or t in cluster[n].engine.table.live]
             for n in cluster.nodes}
    return {n: held for n, held in found.items() if held}


def test_dead_letters_purged_just_after_a_holders_restart_do_not_come_back_from_its_resync(inproc, tmp_path):
    """Fault (review38): a purge left nothing behind, so a copy served
    before it -- here the SYNC answers of n2's resync after its restart
    from its log, served by n1 and n3 before n1 purged -- installed the dead
    letters again on n2 after its ``P`` events had dropped them (and, from
    n2's answers to the others' resyncs, on every holder). The answers are
    held until every holder has let the purged tasks go, then delivered:
    none of the tasks comes back."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    ids = _dead_letters(cluster, 4)
    cluster.stop_node("n2")
    served = cluster.net.hold("ANSWER", dst="n2", answering="SYNC")
    cluster.start_node("n2")
    cluster.wait_until(lambda: {m.src for m in served.held} >= {"n1", "n3"},
                       what="n1's and n3's answers to n2's resync, served")
    assert all(t in cluster["n2"].engine.table.dead for t in ids)     # restored from its log
    assert set(ids) <= set().union(*(m.task_ids() for m in served.held))      # the answers carry them
    done = cluster["n2"].role.resync.completed
    assert cluster["n1"].engine.dead_purge(None, ids) == len(ids)
    cluster.wait_until(lambda: not _holding(cluster, ids), what="every holder to let the purged tasks go")
    served.release()
    cluster.wait_until(lambda: cluster["n2"].role.resync.completed >= done + 2, what="n2's resyncs to end")
    cluster.wait_until(lambda: all(cluster[n].role.not_coordinating() == "" for n in NODES), what="coordinating")
    assert _holding(cluster, ids) == {}
    assert not cluster.crashes()
    for node in NODES:          # each holder remembers the ids, and STATUS shows how many
        assert tombstones_apart(cluster[node].engine)["purged"] == len(ids), node


def test_a_holder_restarted_after_a_purge_still_drops_a_stale_copy_of_the_dead_letters(inproc, tmp_path):
    """Fault: the purge was not remembered across a restart. n2 misses n1's
    purge (cut off); n3 hears it, restarts from its log, and resyncs from
    n2, whose answer still holds the dead letters: n3 must not store them
    again (its log's ``P`` records say when they were purged). n2's own
    copies stay until its resyncs bring it the purge marks: those answers
    are held here until n3 has had n2's answer."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    ids = _dead_letters(cluster, 3)
    cluster.net.cut("n2")
    assert cluster["n1"].engine.dead_purge(None, ids) == len(ids)
    cluster.wait_until(lambda: set(_holding(cluster, ids)) == {"n2"}, what="n1 and n3 to let the tasks go")
    cluster.stop_node("n3")
    answers = cluster.net.messages("ANSWER", src="n2", dst="n3", answering="SYNC")
    to_n2 = cluster.net.hold("ANSWER", dst="n2", answering="SYNC")
    cluster.net.heal("n2")
    cluster.start_node("n3")
    cluster.wait_until(lambda: any(ids[0] in m.task_ids() for m in cluster.net.messages(
        "ANSWER", src="n2", dst="n3", answering="SYNC")[len(answers):] if m.fate == "delivered"),
        what="n2's answer to n3's resync, with the dead letters")
    cluster.wait_until(lambda: all(cluster[n].role.not_coordinating() == "" for n in NODES), what="coordinating")
    assert set(_holding(cluster, ids)) == {"n2"}
    to_n2.release()
    cluster.wait_until(lambda: not _holding(cluster, ids), what="n2 to drop its copies at its resync")
    assert not cluster.crashes()


def test_a_holder_that_missed_a_purge_drops_its_dead_copies_at_its_next_resync(inproc, caplog):
    """Fault (review38, documented as a limit until 2026-12-07): a holder
    cut off while another purged the dead letters never heard the ``P``
    events, and a resync did not repair it (the answers list the tasks
    their source holds, and a purged task is one it lacks): n3 kept its
    dead copies -- in its ``/dead`` listing, and handed back to others.
    The answers now carry the source's purge marks, and n3, healed, drops
    its dead copies at its resync and remembers the purge. A dead letter
    that was not purged stays dead on every holder."""
    caplog.set_level(logging.INFO, logger="miyaq.cluster.sync")
    cluster = inproc(3, replicas=3)
    ids = _dead_letters(cluster, 4)
    purged, kept = ids[:3], ids[3]
    cluster.net.cut("n3")
    assert cluster["n1"].engine.dead_purge(None, purged) == len(purged)
    cluster.wait_until(lambda: set(_holding(cluster, purged)) == {"n3"}, what="n1 and n2 to let the tasks go")
    cluster.net.heal("n3")
    cluster.wait_until(lambda: not _holding(cluster, purged), what="n3 to drop the dead letters at its resync")
    assert any(m.body.get("purged") for m in cluster.net.messages("ANSWER", dst="n3", answering="SYNC")
               if m.fate == "delivered")         # it learnt them from a SYNC answer
    cluster.wait_until(lambda: all(cluster[n].role.not_coordinating() == "" for n in NODES), what="coordinating")
    assert not _holding(cluster, purged)
    assert all(kept in cluster[n].engine.table.dead for n in NODES)
    assert [t.id for t in cluster["n3"].engine.table.iter_dead()] == [kept]
    assert tombstones_apart(cluster["n3"].engine)["purged"] == len(purged)    # remembered there too
    assert any("it had purged" in r.getMessage() for r in caplog.records)      # the operator is told
    assert not cluster.crashes()


def test_a_holder_down_during_a_purge_drops_its_dead_copies_when_it_restarts_from_its_log(inproc, tmp_path):
    """Fault (review38): the same as a holder cut off, for one down while
    another purged: restarted from its log, n3 brought its dead copies
    back and kept them -- its reconcile's resyncs did not carry the purge.
    They do now, and its log says the purge (a second restart keeps them
    purged)."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    ids = _dead_letters(cluster, 3)
    cluster.stop_node("n3")
    assert cluster["n1"].engine.dead_purge(None, ids) == len(ids)
    cluster.wait_until(lambda: not _holding(cluster, ids), what="n1 and n2 to let the tasks go")
    cluster.start_node("n3")
    cluster.wait_until(lambda: all(cluster[n].role.not_coordinating() == "" for n in NODES), what="coordinating")
    cluster.wait_until(lambda: not _holding(cluster, ids), what="n3 to drop the dead letters it restored")
    cluster.stop_node("n3")
    answers = cluster.net.hold("ANSWER", dst="n3", answering="SYNC")
    cluster.start_node("n3")
    assert not _holding(cluster, ids)       # as replayed, no resync answered yet
    assert all(cluster["n3"].engine.table.purged.was(t) for t in ids)
    answers.release()
    assert not cluster.crashes()


def test_a_holder_down_while_a_purged_id_is_submitted_again_and_dead_lettered_gets_that_dead_letter(inproc, tmp_path):
    """Fault (review39): a holder remembers the purge of a dead letter from
    its log, and refused every dead copy of that id -- also one of the task
    submitted again with the id while it was down, dead-lettered since: its
    resyncs' answers brought that dead letter and it refused it, for the
    purge's life, the only holder without it. A dead copy made after the
    purge is stored; the stale one is still refused
    (test_purge_marks_sync.py)."""
    cluster = inproc(3, replicas=3, min_acks=2, data_dir=str(tmp_path), fsync="always")
    task_id = cluster.task_led_by("n1")
    cluster.submit_accepted("n1", task_id, body=b"x")
    worker = cluster.worker("n1")
    cluster.wait_until(lambda: worker.runs(task_id), what="the task to run")
    worker.fail(task_id, {"type": "Failure", "message": "no"}, retry=False)
    cluster.wait_until(lambda: all(task_id in cluster[n].engine.table.dead for n in NODES), what="dead letters")
    assert cluster["n1"].engine.dead_purge(None, [task_id]) == 1
    cluster.wait_until(lambda: not _holding(cluster, [task_id]), what="every holder to purge it")
    cluster.stop_node("n3")
    cluster.submit_accepted("n1", task_id, body=b"again")      # the id used again, stored on n1 and n2
    cluster.wait_until(lambda: worker.runs(task_id), what="the new task to run")
    worker.fail(task_id, {"type": "Failure", "message": "again"}, retry=False)
    cluster.wait_until(lambda: all(task_id in cluster[n].engine.table.dead for n in ("n1", "n2")),
                       what="n1 and n2 to dead-letter the new task")
    cluster.start_node("n3")
    assert cluster["n3"].engine.table.purged.was(task_id)      # from its log's P record
    cluster.wait_until(lambda: task_id in cluster["n3"].engine.table.dead, what="n3 to get the new dead letter")
    assert cluster["n3"].engine.table.dead[task_id].error == {"type": "Failure", "message": "again"}
    assert not cluster["n3"].engine.table.purged.was(task_id)
    assert not cluster.crashes()
