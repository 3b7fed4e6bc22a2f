"""A replication stream's silence and a failed resync's retry, in-process
(miyaq.testing.inprocess) and on the receiver alone: a stream held behind a
message still crossing within the link's ``peer_heartbeat_timeout`` asks no
resync; a resync that failed is asked again after a short backoff of its
own, whatever ``peer_heartbeat_timeout`` says and whether or not the stream
is silent. The clocks are driven (``cluster.advance``, a patched
``monotonic``); nothing is timed."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from miyaq.cluster import stream_numbering
from miyaq.constants import PEER_HEARTBEAT_TIMEOUT, RESYNC_RETRY, RESYNC_RETRY_MAX, STREAM_HEARTBEAT
from miyaq.protocol import codec

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("patience, crossing", [(PEER_HEARTBEAT_TIMEOUT, 4.5), (20.0, 19.5)])
def test_a_stream_held_behind_a_message_crossing_within_the_links_patience_asks_no_resync(inproc, patience,
                                                                                          crossing):
    """Fault: on a slow link a stream message (up to 1 MiB of results: 3.5 s
    at 2.4 Mbit/s) holds the stream's heartbeats behind it, and the stream
    is silent while it crosses -- within ``peer_heartbeat_timeout``, which
    the operator sizes for that link. A fixed silence of 3.5 s
    (``STREAM_SILENCE``) asked the sender for a resync whatever the
    setting: every task they share, in pages of up to 1 MiB over that same
    link. Here n1's stream to n3 is held ``crossing`` seconds (of the
    process's clock), just under ``patience``: no resync; held past
    ``patience`` plus a heartbeat, the stream is suspect and n3 resyncs."""
    cluster = inproc(3, peer_heartbeat_timeout=patience)
    sub = cluster["n3"].role.subscriber
    base, syncs = sub.resyncs, len(cluster.net.messages("SYNC", src="n3", dst="n1"))
    held = [cluster.net.hold("EVENTS", src="n1", dst="n3"), cluster.net.hold("HEARTBEAT", src="n1", dst="n3")]
    cluster.advance(crossing)
    cluster.settle(0.2)                # the network's silence checks run while the stream is held
    for rule in held:
        rule.release()
    cluster.settle(0.2)
    assert sub.resyncs == base
    assert len(cluster.net.messages("SYNC", src="n3", dst="n1")) == syncs
    held = [cluster.net.hold("EVENTS", src="n1", dst="n3"), cluster.net.hold("HEARTBEAT", src="n1", dst="n3")]
    cluster.advance(patience + 2 * STREAM_HEARTBEAT)
    cluster.wait_until(lambda: sub.resyncs > base, what="n3 to resync the stream silent past its patience")
    for rule in held:
        rule.release()
    assert sub.silence == patience + STREAM_HEARTBEAT
    assert not cluster.crashes()


@pytest.mark.parametrize("patience", [PEER_HEARTBEAT_TIMEOUT, 600.0])
def test_a_failed_first_resync_is_asked_again_soon_whatever_the_peer_heartbeat_timeout(inproc, patience):
    """Fault: a node's first resync of a peer (at its start or join: the
    stream misses what was sent before it subscribed) fails -- the peer
    link not up yet refuses the SYNC at once -- while that peer's stream
    heartbeats come. A failed resync was asked again only when the stream
    showed a gap or went silent: with heartbeats coming, never, and the
    node never had what the peer sent before it subscribed; with the
    silence grown with ``peer_heartbeat_timeout`` (600 s here), a silent
    stream's retry would have waited minutes. Now it is asked again
    ``RESYNC_RETRY`` after it failed, each failure in a row doubling the
    wait up to ``RESYNC_RETRY_MAX``: the clock is moved that far only."""
    cluster = inproc(3, ring=False, peer_heartbeat_timeout=patience)
    refused = cluster.net.refuse("SYNC", src="n3", dst="n1")
    cluster.publish(["n1", "n2", "n3"])
    sub = cluster["n3"].role.subscriber
    # The first resync and the one its stream's first heartbeat asks (a new incarnation) both refused:
    cluster.wait_until(lambda: refused.hits >= 2 and sub.caught_up("n1"), what="n3's resyncs of n1 refused")
    refused.remove()
    assert not sub.synced_since({}, ["n1"])
    cluster.advance(RESYNC_RETRY_MAX)
    cluster.wait_until(lambda: sub.synced_since({}, ["n1"]), what="n3's resync of n1 asked again and completed")
    assert [m.fate for m in cluster.net.messages("SYNC", src="n3", dst="n1")][-1] != "refused"
    assert not cluster.crashes()


def test_a_resync_failing_again_and_again_is_asked_again_at_growing_bounded_intervals(monkeypatch):
    """The receiver's bookkeeping on its own (no network, its clock driven):
    a resync of a peer that is not connected fails at once. Asked again at
    every check (each ``STREAM_HEARTBEAT``) it would be a SYNC a second for
    as long as the peer is away, each answer of a live one a pass over its
    tasks; so the retry waits ``RESYNC_RETRY``, then twice as long at each
    failure in a row, never more than ``RESYNC_RETRY_MAX``; one that
    completes starts over. Heartbeats keep coming all along (the stream is
    not silent): the retry does not wait for a silence."""
    clock, asked, receiver, heartbeat = _followed_with_heartbeats(monkeypatch)
    receiver._follow("p1")
    heartbeat()                                              # its incarnation: another resync once this one ends
    receiver.resync_done("p1", asked[-1], complete=True)
    assert len(asked) == 2
    waits = []
    for _ in range(6):
        receiver.resync_done("p1", asked[-1], complete=False)
        failed_at, before = clock[0], len(asked)
        for _ in range(100):                     # 25 s of checks, a heartbeat before each
            clock[0] += 0.25
            heartbeat()
            receiver._check_silence(clock[0])
            if len(asked) > before:
                waits.append(clock[0] - failed_at)
                break
        else:
            waits.append(None)
            break
    assert waits == [RESYNC_RETRY, 2 * RESYNC_RETRY, 4 * RESYNC_RETRY, RESYNC_RETRY_MAX, RESYNC_RETRY_MAX,
                     RESYNC_RETRY_MAX]
    receiver.resync_done("p1", asked[-1], complete=True)
    receiver._ask_resync("p1", "test: a gap")
    receiver.resync_done("p1", asked[-1], complete=False)
    clock[0] += RESYNC_RETRY
    receiver._check_silence(clock[0])
    assert receiver.sources["p1"].syncing      # back to the first wait


def test_a_resync_that_completes_before_a_failed_ones_retry_leaves_no_retry_due(monkeypatch):
    """A resync fails, and before its retry is due a gap asks another, which
    completes: the stream is in step, nothing more is due. The retry the
    failure planned is dropped when the gap's resync starts (mutation of
    review32: keeping it passed every test, and a needless resync -- a pass
    over every task the two nodes share, in pages over the link -- followed
    each such completion)."""
    clock, asked, receiver, heartbeat = _followed_with_heartbeats(monkeypatch)
    receiver._follow("p1")
    heartbeat()
    receiver.resync_done("p1", asked[-1], complete=True)
    receiver.resync_done("p1", asked[-1], complete=True)       # the one its incarnation asked
    assert not receiver.sources["p1"].syncing
    receiver._ask_resync("p1", "test: a first gap")
    receiver.resync_done("p1", asked[-1], complete=False)       # its retry due RESYNC_RETRY from now
    clock[0] += RESYNC_RETRY / 2
    receiver._ask_resync("p1", "test: a second gap")
    receiver.resync_done("p1", asked[-1], complete=True)
    done = len(asked)
    for _ in range(4 * int(RESYNC_RETRY_MAX)):        # past any retry, a heartbeat before each check
        clock[0] += 0.25
        heartbeat()
        receiver._check_silence(clock[0])
    assert len(asked) == done, "a resync asked after the stream was in step again"
    assert not receiver.sources["p1"].syncing


def _followed_with_heartbeats(monkeypatch: Any) -> tuple[list[float], list[int], Any, Callable[[], None]]:
    """A receiver on a driven clock (``clock[0]``) that will follow p1 with
    a 600 s peer heartbeat timeout, the resyncs it asks (``asked``), and a
    function that delivers one of p1's heartbeats to it."""
    clock = [100.0]
    monkeypatch.setattr(stream_numbering, "monotonic", lambda: clock[0])
    asked: list[int] = []
    receiver = stream_numbering.StreamReceiver("me", lambda src, events: None, lambda src, n: asked.append(n))
    receiver.silence = 600.0 + STREAM_HEARTBEAT

    def heartbeat() -> None:
        receiver._handle([stream_numbering.topic("me"), codec.pack(
            {"src": "p1", "inc": 7, "seq": 0, "epoch": 1, "hb": True, "zk": True, "proto": 1})])

    return clock, asked, receiver, heartbeat
