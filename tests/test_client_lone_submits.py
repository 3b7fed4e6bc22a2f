"""Lone submits of a threaded client (miyaq.client.short_path): one that
leaves beside a few unacknowledged ones, the acknowledgement read after the
send, and the deaf I/O thread that sleeps on without a pass while callers
read the acknowledgements in passing."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from miyaq.client import core as client_core
from miyaq.client import short_path
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime.clock import monotonic
from miyaq.testing.harness import wait_for
from raw_nodes import CountingNode

IO_THREAD = "miyaq-client-io"


def _answered(client: Any, node: CountingNode) -> bool:
    """The client asked for a STATUS and got it (the node played meanwhile)."""
    asking = threading.Thread(target=client.status)
    asking.start()
    wait_for(lambda: node.pump(10) or not asking.is_alive(), what="a STATUS answered")
    return True


def _asleep_and_deaf(client: Any, node: CountingNode) -> None:
    """The client's I/O thread asleep and deaf, the node answering its
    requests meanwhile (a RING of its own keeps it listening until answered)."""
    io = client._io
    wait_for(lambda: node.pump(10) or (io._armed and io._deaf), what="the I/O thread asleep and deaf")


def _answered_once(client: Any, node: CountingNode) -> None:
    """The client connected, a STATUS answered that its caller read itself
    (the first ones may find the I/O thread awake and queue), the I/O thread
    asleep and deaf."""
    io = client._io
    wait_for(lambda: _answered(client, node) and node.pump(10) is None and io._armed and io._deaf,
             what="the I/O thread asleep and deaf after a STATUS")


def _senders(io: Any) -> list[tuple[str, bytes]]:
    """Record (thread, command) of each message the core sends."""
    sent: list[tuple[str, bytes]] = []
    send = io.send

    def recording(node: int, frames: list[bytes]) -> bool:
        sent.append((threading.current_thread().name, frames[1]))
        return send(node, frames)

    io.send = recording
    return sent


def _long_lazy_wait(monkeypatch: Any) -> None:
    """Acknowledgements left to callers for up to 30 s, timers a minute apart:
    the I/O thread wakes only when it is woken."""
    monkeypatch.setattr(short_path, "LAZY_ACK_WAIT", 30.0)
    monkeypatch.setattr(client_core, "MAX_POLL", 60.0)


def test_a_lone_submit_beside_unacknowledged_ones_leaves_from_the_callers_thread(client_for, monkeypatch):
    """Fault it guards against: a node slow to acknowledge (a loaded machine)
    turned every lone submit made while the one before was unacknowledged
    into a wake-up of the I/O thread, which sent it alone all the same. Up to
    LONE_UNACKED unacknowledged, a lone submit now leaves from the caller;
    past that it is queued for the I/O thread, as before."""
    _long_lazy_wait(monkeypatch)
    node = CountingNode()
    try:
        client = client_for(node.endpoint)
        _answered_once(client, node)
        io = client._io
        sent = _senders(io)
        me = threading.current_thread().name
        for i in range(short_path.LONE_UNACKED + 2):
            client.submit("echo", [i])                  # none is acknowledged
            wait_for(lambda: node.pump(10) or len(node.batches) == i + 1, what=f"submit {i} read")
            _asleep_and_deaf(client, node)
            time.sleep(2 * short_path.SHORT_PATH_GAP)  # lone submits, not a stream
        senders = [who for who, cmd in sent if cmd == c.SUBMIT]   # (the I/O thread may ask for the ring)
        assert senders == [me] * (short_path.LONE_UNACKED + 1) + [IO_THREAD]
        assert all(len(ids) == 1 for _, ids in node.batches)
        node.ack_all()
        client.flush(timeout=10)
    finally:
        node.close()


def test_a_lone_submit_leaves_before_the_acknowledgement_before_it_is_read(client_for, monkeypatch):
    """The caller reads the acknowledgements left for it after its own
    submit left, not before: what it reads in passing is not part of the
    submit's latency."""
    _long_lazy_wait(monkeypatch)
    node = CountingNode()
    try:
        client = client_for(node.endpoint)
        _answered_once(client, node)
        io = client._io
        events: list[tuple[str, Any]] = []
        send, on_frames = io.send, io.core.on_frames

        def sending(n: int, frames: list[bytes]) -> bool:
            events.append(("send", frames[1]))
            return send(n, frames)

        def reading(n: int, frames: list[bytes], now: float) -> None:
            events.append(("read", frames[1]))
            on_frames(n, frames, now)

        io.send, io.core.on_frames = sending, reading
        first = client.submit("echo", [1])
        wait_for(lambda: node.pump(10) or node.batches, what="the first submit read")
        node.ack_all()
        node.batches.clear()
        _asleep_and_deaf(client, node)
        wait_for(lambda: _ack_waiting(io) and io._armed and io._deaf, what="its acknowledgement in, unread")
        time.sleep(2 * short_path.SHORT_PATH_GAP)
        events.clear()
        second = client.submit("echo", [2])
        assert first.accepted and not second.accepted
        assert events == [("send", c.SUBMIT), ("read", c.SUBMITTED)]
        wait_for(lambda: node.pump(10) or node.batches, what="the second submit read")
        node.ack_all()
        client.flush(timeout=10)
    finally:
        node.close()


def test_a_refusal_read_in_passing_is_retried_at_once(client_for, monkeypatch):
    """Fault it guards against: the caller of a lone submit reads, after its
    own submit left, a BUSY answer to the one before; the I/O thread slept
    on timers set before that retry existed, so the refused submit would
    wait for the I/O thread's next pass (here a minute) instead of its
    backoff (tens of milliseconds)."""
    _long_lazy_wait(monkeypatch)
    node = CountingNode()
    try:
        client = client_for(node.endpoint)
        _answered_once(client, node)
        io = client._io
        first = client.submit("echo", [1])
        wait_for(lambda: node.pump(10) or node.batches, what="the first submit read")
        peer, ids = node.batches.pop()
        node.sock.send_multipart([peer, *codec.encode(c.SUBMITTED, {"results": [
            [ids[0], "rejected", {"code": "busy", "message": "full"}]]})])
        wait_for(lambda: _ack_waiting(io) and io._armed and io._deaf, what="the refusal in, unread")
        time.sleep(2 * short_path.SHORT_PATH_GAP)
        second = client.submit("echo", [2])           # reads the refusal after it left
        assert io.core.submits.busy_replies == 1
        wait_for(lambda: node.pump(10) or len(node.batches) == 2, timeout=5, what="the refused submit sent again")
        assert sorted(i for _, batch in node.batches for i in batch) == sorted([first.id, second.id])
        node.ack_all()
        client.flush(timeout=10)
        assert first.accepted and second.accepted
    finally:
        node.close()


def _ack_waiting(io: Any) -> bool:
    with io.lock:
        return io._readable()


def _passes(io: Any) -> list[float]:
    """When the I/O thread made each pass (it runs the core's timers once a pass)."""
    passes: list[float] = []
    on_timer = io.core.on_timer

    def recording(now: float) -> None:
        if threading.current_thread().name == IO_THREAD:
            passes.append(monotonic())
        on_timer(now)

    io.core.on_timer = recording
    return passes


def test_the_deaf_io_thread_sleeps_on_while_lone_submits_go_on(node, client, monkeypatch):
    """Fault it guards against: at a steady rate of lone submits the I/O
    thread's deaf sleep ended every LAZY_ACK_WAIT and it made a whole pass
    (the lock, the timers, every socket read) to find the callers had read
    the acknowledgements: about as much CPU as a submit, 50 times a second.
    It now sleeps on while callers keep coming; once they stop, it still
    reads the last acknowledgement when the lazy wait ends."""
    monkeypatch.setattr(client_core, "MAX_POLL", 60.0)
    monkeypatch.setattr(short_path, "LAZY_ACK_WAIT", 0.05)
    io = client._io
    wait_for(lambda: client.status() and io._armed and io._deaf, what="the I/O thread asleep and deaf")
    passes = _passes(io)
    readers: list[str] = []
    on_frames = io.core.on_frames

    def reading(n: int, frames: list[bytes], now: float) -> None:
        readers.append(threading.current_thread().name)
        on_frames(n, frames, now)

    io.core.on_frames = reading
    handles = []
    start = monotonic()
    while monotonic() - start < 0.6:             # twelve lazy waits' worth of lone submits
        handles.append(client.submit("echo", [len(handles)]))
        time.sleep(0.01)
    # The first lone submit wakes the deaf thread (it slept for the minute of
    # MAX_POLL): one pass; then none while the submits went on, but for a
    # caller that found the thread in its short look and queued (before: one
    # every LAZY_ACK_WAIT, a dozen).
    during = len(passes)
    assert during <= 5, passes
    # A caller reads the acknowledgements that came in passing, after its
    # send: on a loaded host its own may have come by then (the caller
    # descheduled right after the send). The case at hand is the last
    # acknowledgement nobody read: a few more lone submits make one.
    for _ in range(20):
        if not handles[-1].accepted:
            break
        handles.append(client.submit("echo", [len(handles)]))
    else:
        pytest.fail("every caller read its own acknowledgement in passing: no case of one left unread")
    wait_for(lambda: handles[-1].accepted, timeout=10, what="the last acknowledgement read with nobody waiting")
    assert readers[-1] == IO_THREAD
    assert len(passes) <= during + 2, passes
