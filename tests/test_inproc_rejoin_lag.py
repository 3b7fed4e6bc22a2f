"""A node back in the ring whose view lags, in-process
(miyaq.testing.inprocess): restarted from its log, it sees a ring without
itself while the others already have the ring that includes it again. Its
pass hands its copies to the others, which store them placed by their newer
ring (itself among the holders) and confirm on that ring's epoch: it keeps
its copies until its own view reaches that epoch, and a pass on it places
them (docs/cluster.md, "Handoff")."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from miyaq.cluster.handoff import Handoff
from miyaq.cluster.handoff_held import HELD_COPY_TTL, HeldCopies
from miyaq.store.task import Task

ALL = ["n1", "n2", "n3"]
TASKS = 90


def _restart_n1_with_a_lagging_view(inproc, tmp_path) -> tuple[object, list[str]]:
    """TASKS tasks on three holders each; n1 stops, the ring goes on without
    it, n1 restarts from its log (seeing that ring, without itself) and the
    ring with n1 again reaches every node but n1. Returns (cluster, ids)."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="never")
    subs = cluster.accepted([cluster.submit("n2", countdown=3600) for _ in range(TASKS)])
    tids = [s.task_id for s in subs]
    cluster.wait_until(lambda: all(_copies(cluster, t) == ALL for t in tids), what="three copies of each task")
    cluster.stop_node("n1")
    cluster.publish(["n2", "n3"])
    cluster.start_node("n1")                                  # sees the ring without itself
    cluster.script.publish(ALL, withhold=["n1"])              # the others have n1 back; n1 does not know yet
    return cluster, tids


def _copies(cluster, tid: str) -> list[str]:
    return sorted(n for n, h in cluster.nodes.items() if h.task(tid) is not None)


def test_a_node_back_whose_view_lags_a_second_keeps_its_copies_confirmed_on_the_newer_ring(inproc, tmp_path):
    """Fault: n1 restarts while its view lags 1 s behind the others': its
    pass, on the ring without itself, hands every copy to n2 and n3, which
    store it listing n1 among the holders (their ring has it) and confirm at
    the newer epoch. Before the fix n1 dropped its copies on those
    confirmations; n2 and n3 found nothing to send it (their copies already
    listed it), and its resync came while its view still lagged: of 600
    tasks, 256 lived on two holders for good (/tmp/review22). Now every task
    has its three copies once n1's view caught up, n1's listing itself."""
    cluster, tids = _restart_n1_with_a_lagging_view(inproc, tmp_path)
    cluster.settle(1.0)
    assert cluster["n1"].role.view.epoch < cluster.script.current.epoch
    cluster.script.deliver("n1")
    epoch = cluster.script.current.epoch
    cluster.wait_until(lambda: cluster.settled(epoch), what=f"every node on epoch {epoch}")
    cluster.settle(1.0)                     # n1's pass on the ring with itself
    cluster.advance(30)                     # resends and sweeps: nothing drops the copies later
    cluster.settle(0.3)
    missing = [t for t in tids if _copies(cluster, t) != ALL]
    assert not missing, f"{len(missing)} of {TASKS} tasks lack a copy: {missing[:5]}"
    for tid in tids:
        copy = cluster["n1"].task(tid)
        assert "n1" in copy.holders and copy.rank == copy.holders.index("n1")
    assert not cluster.crashes()


def test_copies_kept_for_a_newer_ring_are_dropped_if_the_view_never_reaches_it(inproc, tmp_path):
    """Fault: as above, but n1's view never reaches the newer ring. The
    copies it keeps for it are kept HELD_COPY_TTL at most, then dropped as
    every holder by its view confirmed them (bounded in time)."""
    cluster, tids = _restart_n1_with_a_lagging_view(inproc, tmp_path)
    handoff = cluster["n1"].role.handoff
    cluster.wait_until(lambda: len(handoff.held) > 0 and not handoff.leaving and not handoff.busy,
                       what="n1's copies confirmed on the newer ring")
    held = len(handoff.held)
    kept = [t for t in tids if cluster["n1"].task(t) is not None]
    assert len(kept) >= held
    cluster.advance(HELD_COPY_TTL / 2)
    cluster.settle(0.2)
    assert len(handoff.held) == held
    cluster.advance(HELD_COPY_TTL / 2 + 2)
    cluster.wait_until(lambda: not handoff.held, what="the held copies' time to end")
    assert sum(1 for t in tids if cluster["n1"].task(t) is not None) == len(kept) - held
    assert not cluster.crashes()


def test_held_copies_are_bounded_in_count_and_keep_their_first_deadline(monkeypatch):
    """Copies held for a newer ring: at most MAX_HELD_COPIES (a hold past it
    is refused, and the copy dropped as before); a second confirmation
    raises the epoch waited for but not the deadline."""
    held = HeldCopies(2)
    assert held.hold("a", 3, 0.0) and held.hold("b", 3, 1.0)
    assert not held.hold("c", 3, 2.0) and "c" not in held
    assert held.hold("a", 5, 10.0)                  # already held: no new room needed
    assert held.reached(4) == ["b"]
    assert held.expired(HELD_COPY_TTL - 1) == []
    assert held.expired(HELD_COPY_TTL) == ["a"]     # its first hold's deadline
    assert len(held) == 0


@pytest.mark.parametrize("answer", [{"ids": ["t"]}, {"ids": ["t"], "epoch": "3"}])
def test_a_confirmation_without_an_epoch_drops_the_copy_as_before(answer):
    """An old peer's answer (no epoch, or not an int) holds nothing."""
    handoff = Handoff.__new__(Handoff)
    handoff.held = HeldCopies()
    handoff.role = SimpleNamespace(node_id="n1", view=SimpleNamespace(epoch=2),
                                   holders_for=lambda task: ["n2", "n3"])
    task = Task("t", "default", "x", b"", replicas=3)
    task.holders = ("n2", "n3")
    assert handoff._not_a_holder(task, answer)
    assert not handoff.held
    assert not handoff._not_a_holder(task, {"ids": ["t"], "epoch": 3})
    assert "t" in handoff.held


def test_a_copy_this_nodes_view_makes_it_a_holder_of_is_kept_though_its_holders_say_otherwise():
    """Fault: a pass on this node's new view has not placed a copy yet (its
    holders are still the older ring's, without this node) when the last
    confirmation of an earlier handoff of it comes, on the same epoch: by
    its view this node is a holder, so the copy is kept (and nothing held)."""
    handoff = Handoff.__new__(Handoff)
    handoff.held = HeldCopies()
    handoff.role = SimpleNamespace(node_id="n1", view=SimpleNamespace(epoch=3),
                                   holders_for=lambda task: ["n1", "n2", "n3"])
    task = Task("t", "default", "x", b"", replicas=3)
    task.holders = ("n2", "n3")
    assert not handoff._not_a_holder(task, {"ids": ["t"], "epoch": 3})
    assert not handoff.held
