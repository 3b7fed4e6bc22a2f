"""Handoff's quick retries (``HANDOFF_LAG_RETRY``), in-process, with the
handoff's clock driven by the test: each holder that refused copies on an
older ring, or could not be sent them, is sent them again at its own quick
retry, whatever round another holder's quick retry made first; and the
quick retries stay limited (``HANDOFF_LAG_RETRIES`` a holder per ring
change).

The handoff's clock (``miyaq.cluster.handoff.monotonic``) is set far ahead
of the ticker's, so no round comes from the ticker: the test runs each
round itself, as the handoff greenlet would (``Handoff.retry``), at the
times it chooses."""
from __future__ import annotations

from typing import Any

import pytest

from miyaq.cluster import handoff as handoff_pass
from miyaq.constants import CLUSTER_TICK, HANDOFF_LAG_RETRIES, HANDOFF_LAG_RETRY, HANDOFF_RETRY
from miyaq.runtime import monotonic


def _driven(monkeypatch: Any) -> list[float]:
    """The handoff's clock, ``[now]``, 1000 s ahead of the process's."""
    now = [monotonic() + 1000.0]
    monkeypatch.setattr(handoff_pass, "monotonic", lambda: now[0])
    return now


def _stored(cluster: Any, count: int) -> list[str]:
    tids = [cluster.task_id() for _ in range(count)]
    cluster.accepted([cluster.submit("n1", t, countdown=300) for t in tids])
    cluster.wait_until(cluster.net.quiet, what="the tasks stored on their holders")
    return tids


def _sent(cluster: Any, dst: str, tid: str) -> int:
    """How many REPLICATEs n1 sent ``dst`` with ``tid``."""
    return len(cluster.net.messages("REPLICATE", src="n1", dst=dst, task=tid))


def test_a_quick_retry_asked_for_after_another_holder_s_is_not_pushed_back_by_that_holder_s_round(
        inproc, monkeypatch):
    """Fault simulated (audit review29): two new holders refuse their copies
    on an older ring, n2 first, n3 0.2 s later, within one round. n2's
    refusal planned the next round at its quick retry (0.5 s); n3's found a
    round planned before its own quick retry and kept its own time (0.7 s).
    The round at n2's time sent n3 nothing (not due yet) and planned the
    next a whole ``HANDOFF_RETRY`` on: n3's copies waited 5.5 s, not 0.7 s.
    Now the round plans the next at the earliest time of a holder still
    owed copies (n3's), and n3 is sent its copies at its quick retry."""
    cluster = inproc(3, replicas=3)
    handoff = cluster["n1"].role.handoff
    to_n2, to_n3 = _stored(cluster, 2)
    stored = {"n2": _sent(cluster, "n2", to_n2), "n3": _sent(cluster, "n3", to_n3)}
    now = _driven(monkeypatch)
    start = now[0]
    n2, n3 = _owed_one_each(handoff, to_n2, to_n3)
    for retry in (n2, n3):       # a round sent each its chunk
        retry.sent(start)
        retry.awaiting = 1
    handoff.next_retry = start + HANDOFF_RETRY
    refused = {"ids": [], "epoch": cluster["n1"].role.view.epoch - 1}
    handoff._callback("n2", [to_n2], n2, [])(refused)
    now[0] += 0.2
    handoff._callback("n3", [to_n3], n3, [])(refused)
    assert (n2.not_before, n3.not_before) == (start + HANDOFF_LAG_RETRY, start + 0.2 + HANDOFF_LAG_RETRY)
    assert handoff.next_retry == n2.not_before

    now[0] = n2.not_before
    handoff.retry(now[0])        # n2's quick retry; n3's is not due yet
    assert _sent(cluster, "n2", to_n2) > stored["n2"], "n2's quick retry did not come"
    assert _sent(cluster, "n3", to_n3) == stored["n3"], "n3 sent its copies before its quick retry"
    now[0] = n3.not_before
    handoff.retry(now[0])
    assert _sent(cluster, "n3", to_n3) > stored["n3"], (
        f"n3's quick retry did not come: the next round is {handoff.next_retry - start:.2f} s after the first "
        f"refusal, n3's own time {n3.not_before - start:.2f} s")
    handoff.leaving.clear()


def test_a_round_that_finds_no_holder_due_plans_the_next_at_a_holder_s_quick_retry(inproc, monkeypatch):
    """Fault simulated: the round planned for n2's quick retry finds a chunk
    to n2 still on its way (sent as its link came up), and n3's quick retry
    0.2 s ahead: no holder is due. The round planned the next a whole
    ``HANDOFF_RETRY`` later, and n3's copies waited for it."""
    cluster = inproc(3, replicas=3)
    handoff = cluster["n1"].role.handoff
    to_n2, to_n3 = _stored(cluster, 2)
    stored = _sent(cluster, "n3", to_n3)
    now = _driven(monkeypatch)
    start = now[0]
    n2, n3 = _owed_one_each(handoff, to_n2, to_n3)
    n2.awaiting, n2.not_before = 1, start
    n3.not_before = start + 0.2
    handoff.next_retry = start
    handoff.retry(start)         # n2 has a chunk on its way, n3 is not due yet: nothing is sent
    assert _sent(cluster, "n3", to_n3) == stored
    now[0] = n3.not_before
    handoff.retry(now[0])
    assert _sent(cluster, "n3", to_n3) > stored, (
        f"n3's quick retry did not come: the next round is {handoff.next_retry - start:.2f} s after the first, "
        f"n3's own time {n3.not_before - start:.2f} s")
    handoff.leaving.clear()


@pytest.mark.parametrize("apart", [0.2, 0.01])
def test_two_unreachable_holders_get_their_quick_retries_each_and_no_more(inproc, monkeypatch, apart):
    """Fault simulated: two new holders never reachable (no connection to
    them: every send fails at once), the failure of the first send to n3
    ``apart`` after n2's. Each round that plans the next at the other holder's
    own time must not hand out quick retries without end: counted for the
    whole handoff, only when a refusal planned the next round sooner, the
    two would take turns -- n2's round, then n3's 0.2 s later, each failure
    finding a round planned before its quick retry -- every 0.5 s for ever.
    Each holder gets its own ``HANDOFF_LAG_RETRIES`` quick retries (one
    holder's do not use up the other's), then waits the doubled resend
    wait; and each round plans the next no sooner than a ticker round
    (``CLUSTER_TICK``) after itself: with the failures 10 ms apart, n3's
    round comes 50 ms after n2's, not 10 ms."""
    cluster = inproc(3, replicas=3)
    handoff = cluster["n1"].role.handoff
    to_n2, to_n3 = _stored(cluster, 2)
    for holder in ("n2", "n3"):
        cluster.net.refuse("REPLICATE", src="n1", dst=holder)
    now = _driven(monkeypatch)
    start = now[0]
    n2, n3 = _owed_one_each(handoff, to_n2, to_n3)
    handoff.next_retry = start + HANDOFF_RETRY
    for holder, tid, retry in (("n2", to_n2, n2), ("n3", to_n3, n3)):     # a pass's send that could not go
        retry.sent(now[0])
        retry.awaiting = 1
        handoff._callback(holder, [tid], retry, [True])(None)
        now[0] += apart
    tries: dict[str, list[float]] = {"n2": [], "n3": []}
    stored = {"n2": _sent(cluster, "n2", to_n2), "n3": _sent(cluster, "n3", to_n3)}
    rounds = 0
    while handoff.next_retry < start + 30 and rounds < 100:
        rounds += 1
        at = now[0] = handoff.next_retry
        handoff.retry(at)
        cluster.wait_until(lambda: not n2.awaiting and not n3.awaiting, what="the failed sends' callbacks run")
        assert handoff.next_retry >= at + CLUSTER_TICK, (rounds, at - start, handoff.next_retry - start)
        for holder, tid in (("n2", to_n2), ("n3", to_n3)):
            sent = _sent(cluster, holder, tid)
            tries[holder] += [at - start] * (sent - stored[holder])
            stored[holder] = sent
    quick = {h: [t for t in at if t < HANDOFF_RETRY] for h, at in tries.items()}
    assert {h: len(at) for h, at in quick.items()} == {"n2": HANDOFF_LAG_RETRIES, "n3": HANDOFF_LAG_RETRIES}, tries
    assert rounds < 30, (rounds, tries)
    handoff.leaving.clear()


def test_a_holder_with_a_chunk_on_its_way_does_not_plan_the_next_round(inproc, monkeypatch):
    """A round sends n3 its copies while a chunk to n2 is still on its way,
    n2's own time 0.2 s ahead. That chunk's answer plans n2's next resend
    (``_callback``); the round plans the next ``HANDOFF_RETRY`` on, not at
    n2's time: a round then would find n2 still awaiting and n3's chunk on
    its way, and send nothing but the unanswered outcomes again, spending
    their attempts (mutation of review32: n2 counted with its chunk on the
    way passed every test)."""
    cluster = inproc(3, replicas=3)
    handoff = cluster["n1"].role.handoff
    to_n2, to_n3 = _stored(cluster, 2)
    stored = _sent(cluster, "n3", to_n3)
    now = _driven(monkeypatch)
    start = now[0]
    n2, n3 = _owed_one_each(handoff, to_n2, to_n3)
    n2.awaiting, n2.not_before = 1, start + 0.2
    n3.not_before = start
    handoff.next_retry = start
    handoff.retry(start)
    assert _sent(cluster, "n3", to_n3) > stored, "n3, due, was not sent its copies"
    assert handoff.next_retry == start + HANDOFF_RETRY, handoff.next_retry - start
    cluster.wait_until(lambda: not n3.awaiting, what="n3's answer")
    n2.awaiting = 0
    handoff.leaving.clear()


def _owed_one_each(handoff: Any, to_n2: str, to_n3: str) -> tuple[Any, Any]:
    """The handoff still owes n2 the task ``to_n2`` and n3 ``to_n3``: the
    two holders' quick-retry states."""
    handoff.leaving[to_n2] = {"n2"}
    handoff.leaving[to_n3] = {"n3"}
    return handoff._retry_of("n2"), handoff._retry_of("n3")
