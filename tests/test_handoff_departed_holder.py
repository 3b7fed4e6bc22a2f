"""Handoff to a joining node that never becomes reachable (in the ring, its
link never up): how often the old holders try it, and what they do once a
ring change takes it out again (in-process cluster, miyaq.testing.inprocess;
time on the cluster's clock, tries counted at the senders' links)."""
from __future__ import annotations

from collections import Counter

from miyaq.cluster.peer_requests import REPLICATE
from miyaq.constants import HANDOFF_CONFIRM_TIMEOUT, HANDOFF_LAG_RETRIES, HANDOFF_RETRY, HANDOFF_RETRY_MAX
from miyaq.runtime import monotonic

OLD = ["n1", "n2", "n3"]
JOINED = ["n1", "n2", "n3", "n4", "n5"]
UNREACHABLE = "n4"


def _submit_many(cluster, count: int) -> list[str]:
    subs = cluster.accepted([cluster.submit(OLD[i % 3], countdown=3600) for i in range(count)])
    return [s.task_id for s in subs]


def _count_tries(cluster, monkeypatch) -> Counter[str]:
    """Sender -> REPLICATEs it tried to send to the unreachable node (none goes)."""
    tries: Counter[str] = Counter()
    for node_id in OLD:
        link = cluster[node_id].role.peer
        send = link._send_request

        def counted(dst: str, frames: list[bytes], send=send, src=node_id) -> bool:
            if dst == UNREACHABLE and frames[1] == REPLICATE:
                tries[src] += 1
            return send(dst, frames)
        monkeypatch.setattr(link, "_send_request", counted)
    return tries


def _join_unreachable(cluster) -> tuple[int, dict[str, object]]:
    """n4 and n5 join the ring; n4 runs but no link to it ever comes up:
    (the new epoch, n4's endpoint to attach it later)."""
    endpoint = cluster.net.nodes[UNREACHABLE]
    cluster.net.detach(UNREACHABLE)
    view = cluster.script.publish(JOINED)
    cluster.wait_until(lambda: all(h.role.view.epoch == view.epoch for h in cluster.nodes.values()),
                       what="every node on the ring with the joiners")
    return view.epoch, endpoint


def _waiting_for(cluster, node_id: str) -> dict[str, int]:
    """Old node -> its handoff entries still waiting for ``node_id``."""
    return {n: sum(1 for w in cluster[n].role.handoff.leaving.values() if node_id in w) for n in OLD}


def _run(cluster, seconds: float, step: float = 1.0) -> None:
    cluster.advance(seconds, step=step)
    cluster.settle(0.01)


def test_a_joiner_taken_out_of_the_ring_is_no_longer_waited_for_nor_sent_copies(inproc, monkeypatch):
    """Fault: a joining node never becomes reachable, and 2 s later a ring
    change takes it out again. A peer's handoff of a task can reach an old
    holder before that holder's own pass does, and store the new ring's
    holders on its copy; the pass then found the holders unchanged and
    left the entry that waited for the departed node: the copies were sent
    to it for ever, every ~81 s (29 of 600 tasks, on all three old
    holders). Now no entry waits for a node that is no longer a holder,
    and nothing is tried to it after it left."""
    cluster = inproc(5, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 600)
    tries = _count_tries(cluster, monkeypatch)
    _join_unreachable(cluster)
    _run(cluster, 2.0)
    assert sum(_waiting_for(cluster, UNREACHABLE).values()), "the old holders must wait for the joiner"

    view = cluster.script.publish(OLD + ["n5"])
    cluster.wait_until(lambda: all(h.role.view.epoch == view.epoch for h in cluster.nodes.values()),
                       what="every node on the ring without the unreachable joiner")
    cluster.wait_until(lambda: not any(cluster[n].role.handoff.busy for n in OLD), what="the passes over")
    before = sum(tries.values())
    for _ in range(12):         # two minutes: past the sweeps and several of the old resends
        _run(cluster, 10.0)
    assert _waiting_for(cluster, UNREACHABLE) == {n: 0 for n in OLD}
    assert sum(tries.values()) == before, tries
    for tid in tids:
        assert all(cluster[h].task(tid) is not None for h in cluster.holders(tid)), tid
    assert {n: cluster[n].role.handoff.pending() for n in OLD} == {n: 0 for n in OLD}
    assert not cluster.crashes()


def test_the_quick_retries_to_an_unreachable_joiner_are_used_once_per_ring_change(inproc, monkeypatch):
    """Fault: a joining node never becomes reachable. The HANDOFF_LAG_RETRIES
    quick retries (a link not up yet) were started afresh by every pass, the
    sweeps of the minute after the change too: each old holder tried it in
    bursts of about seven (35 tries in 600 s instead of 11; each retry
    rebuilds the record of every copy waiting for it). Now they are used
    once for the ring change, then the resends back off; once the joiner
    comes up it gets every copy, and the other joiner got its copies at once."""
    cluster = inproc(5, ring=OLD, replicas=2)
    tids = _submit_many(cluster, 150)
    tries = _count_tries(cluster, monkeypatch)
    _, endpoint = _join_unreachable(cluster)
    to_unreachable = [t for t in tids if UNREACHABLE in cluster.holders(t)]
    to_reachable = [t for t in tids if "n5" in cluster.holders(t)]
    assert to_unreachable and to_reachable
    seconds = 120
    for _ in range(seconds // 10):
        _run(cluster, 10.0)
    assert all(cluster["n5"].task(t) is not None for t in to_reachable)
    senders = {n for n in OLD if tries[n]}
    assert senders, "some old node must hand tasks to the unreachable joiner"
    # The pass's send, the quick retries, then resends ever further apart
    # (each try fails at once: none waits for a timeout): 10 in 120 s; 28 before.
    most = 1 + HANDOFF_LAG_RETRIES + 5
    assert all(tries[n] <= most for n in senders), (tries, most)

    cluster.net.attach(UNREACHABLE, endpoint)
    _run(cluster, HANDOFF_RETRY_MAX + HANDOFF_CONFIRM_TIMEOUT + HANDOFF_RETRY)
    cluster.wait_until(lambda: all(cluster[UNREACHABLE].task(t) is not None for t in to_unreachable),
                       what="every copy on the joiner once it is reachable")
    cluster.wait_until(lambda: all(cluster[n].role.handoff.pending() == 0 for n in OLD),
                       what="every handoff confirmed")
    assert not cluster.crashes()


def test_a_sweep_pass_does_not_push_back_a_planned_resend(inproc, monkeypatch):
    """Fault: a sweep pass (every HANDOFF_SWEEP in the minute after a ring
    change) planned the next resend HANDOFF_RETRY after its own end,
    whatever had been planned before: a resend due at the sweep, or a
    second before it, waited 5 s more. Now a resend planned before the
    pass stands."""
    cluster = inproc(5, ring=OLD, replicas=2)
    _submit_many(cluster, 60)
    _count_tries(cluster, monkeypatch)
    _join_unreachable(cluster)
    _run(cluster, 4.0)      # past the quick retries
    handoff = next(cluster[n].role.handoff for n in OLD if cluster[n].role.handoff.pending())
    for _ in range(10):     # a moment with a resend planned, not yet due, and no pass or resend under way
        if not handoff.busy and monotonic() < handoff.next_retry < monotonic() + HANDOFF_RETRY:
            break
        _run(cluster, 0.5, step=0.5)
    planned = handoff.next_retry
    assert not handoff.busy and monotonic() < planned < monotonic() + HANDOFF_RETRY
    last_run = handoff.last_run
    handoff.request()           # a sweep pass (no ring change)
    cluster.wait_until(lambda: handoff.last_run > last_run or handoff.next_retry < planned, what="the sweep pass")
    cluster.wait_until(lambda: not handoff.busy, what="the sweep pass over")
    assert handoff.next_retry <= planned, (handoff.next_retry, planned, monotonic())
    assert not cluster.crashes()
