"""The clients' submit window bounded in bytes (``window_bytes``), not only
in count (``window``).

Fault: a producer of large tasks whose node reads every SUBMIT and never
acknowledges one (a node paused or wedged: :class:`raw_nodes.CountingNode`
played by :class:`raw_nodes.NodesPlayer`, which acknowledges nothing here).
Before 2026-12-07 only the count bounded what a client held unacknowledged:
10,000 tasks -- of 1 MiB, 10 GB -- before ``submit()`` blocked. Now it blocks
once the tasks held would pass ``window_bytes``, and times out naming that
bound; a lone task larger than the bound still goes (nothing else in flight),
and small tasks meet the count bound as before.

Each test fills the window while ``submit_timeout`` is long (the submits in
flight outlive the test), then shortens it for the one submit that is to
find the window full: it gives up long before any slot could be freed.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

import miyaq
import miyaq.aio
from miyaq.client.sizes import ENVELOPE
from miyaq.client.wire import pack_args
from miyaq.protocol import commands as c
from raw_nodes import CountingNode, NodesPlayer

pytestmark = pytest.mark.timeout(60)

NEVER = 10 ** 9          # tasks a NodesPlayer reads before it acknowledges: never
LONG = 30.0              # submit_timeout while the window fills: the submits outlive the test
GIVE_UP = 0.3            # the blocked submit's: long before any of those is resolved

BLOB = bytes(100 * 1024)
"""A large task's argument: 100 KiB."""


def task_size(*args: Any) -> int:
    """What a task of ``args`` counts for in the window's bytes: its payload and the envelope."""
    return len(pack_args(args)) + ENVELOPE


BIG = task_size(BLOB)
"""What a large task counts for."""


def _held(client: Any) -> tuple[int, int]:
    """(unacknowledged submits, their bytes) of a client of either flavour."""
    core = client._io.core
    return core.in_flight, core.bytes_in_flight


def test_the_default_byte_bound_is_256_mib_and_a_client_takes_it() -> None:
    from miyaq.client.sizes import WINDOW_BYTES
    assert WINDOW_BYTES == 256 * 1024 * 1024
    assert miyaq.aio.Client("tcp://127.0.0.1:1").window_bytes == WINDOW_BYTES


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_large_tasks_to_a_node_that_never_acknowledges_block_at_the_byte_bound_not_the_count(client_for, green):
    """Fault: the node never acknowledges; the tasks are 100 KiB each. With
    ``window=1000`` and ``window_bytes=1 MiB`` ten are held (1 MiB), and the
    eleventh times out naming the byte bound. Before, all 1,000 would have
    been taken (100 MB) and the eleventh went through at once."""
    silent = CountingNode()
    with NodesPlayer([silent], tasks=NEVER) as player:
        c1 = client_for(silent.endpoint, window=1000, window_bytes=1024 * 1024, submit_timeout=LONG, green=green)
        fits = (1024 * 1024) // BIG
        assert fits == 10
        for i in range(fits):
            c1.submit("echo", [BLOB])
        assert _held(c1) == (fits, fits * BIG)
        c1.submit_timeout = GIVE_UP
        with pytest.raises(miyaq.Timeout) as info:
            c1.submit("echo", [BLOB])
        message = str(info.value)
        assert "window_bytes=1048576" in message and f"{fits * BIG:,} bytes unacknowledged" in message, message
        assert _held(c1) == (fits, fits * BIG)          # the refused one holds nothing
        assert not player.problems, player.problems


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_a_lone_task_larger_than_the_byte_bound_is_admitted_and_then_holds_the_window(client_for, green):
    """A task over ``window_bytes`` goes when nothing else is unacknowledged
    (it would wait for ever otherwise); while it is, even a small one waits
    for the bytes."""
    silent = CountingNode()
    with NodesPlayer([silent], tasks=NEVER) as player:
        c1 = client_for(silent.endpoint, window_bytes=64 * 1024, submit_timeout=LONG, green=green)
        c1.submit("echo", [BLOB])                      # idle: admitted at once (else a Timeout, LONG s later)
        assert _held(c1) == (1, BIG)
        c1.submit_timeout = GIVE_UP
        with pytest.raises(miyaq.Timeout, match="window_bytes=65536"):
            c1.submit("echo", [1])
        assert _held(c1) == (1, BIG)
        assert not player.problems, player.problems


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_tasks_larger_than_the_byte_bound_go_one_at_a_time_to_a_real_node(node, client_for, green):
    c1 = client_for(node.endpoint, window_bytes=1024, green=green)
    handles = [c1.submit("echo", [BLOB]) for _ in range(3)]     # each waits for the one before
    c1.flush(timeout=30)
    assert all(h.accepted for h in handles)
    assert _held(c1) == (0, 0)


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_small_tasks_meet_the_count_bound_as_before_and_the_error_names_it(client_for, green):
    silent = CountingNode()
    with NodesPlayer([silent], tasks=NEVER) as player:
        c1 = client_for(silent.endpoint, window=5, submit_timeout=LONG, green=green)
        for i in range(5):
            c1.submit("echo", [i])
        c1.submit_timeout = GIVE_UP
        with pytest.raises(miyaq.Timeout) as info:
            c1.submit("echo", [5])
        assert "5 submits unacknowledged (window=5)" in str(info.value), str(info.value)
        held, held_bytes = _held(c1)
        assert held == 5 and held_bytes == sum(task_size(i) for i in range(5))
        assert not player.problems, player.problems


@pytest.mark.parametrize("options,named", [
    (dict(window_bytes=0), "window_bytes"), (dict(window_bytes=1.5), "window_bytes"),
    (dict(window_bytes=True), "window_bytes"), (dict(window_bytes=None), "window_bytes"),
])
def test_a_bad_window_bytes_is_a_config_error_naming_it(options, named):
    for make in (miyaq.Client, miyaq.aio.Client):
        with pytest.raises(miyaq.ConfigError, match=f"^{named} must be an integer of at least 1"):
            make("tcp://127.0.0.1:1", **options)


def test_the_asyncio_client_blocks_at_the_byte_bound_too():
    """The same fault for ``miyaq.aio.Client``: ten 100 KiB tasks fill 1 MiB,
    the eleventh times out naming the byte bound; a lone larger task goes
    on an idle client."""
    silent = CountingNode()

    async def main() -> tuple[int, int, str, tuple[int, int]]:
        async with miyaq.aio.Client(silent.endpoint, window=1000, window_bytes=1024 * 1024,
                                    submit_timeout=LONG) as client:
            for _ in range(10):
                await client.submit("echo", [BLOB])
            held = _held(client)
            client.submit_timeout = GIVE_UP
            try:
                await client.submit("echo", [BLOB])
                message = "not blocked"
            except miyaq.Timeout as exc:
                message = str(exc)
            await client.close(flush=False)
        async with miyaq.aio.Client(silent.endpoint, window_bytes=1024, submit_timeout=GIVE_UP) as lone:
            await lone.submit("echo", [BLOB])                # idle: admitted however large
            lone_held = _held(lone)
            await lone.close(flush=False)
        return held[0], held[1], message, lone_held

    with NodesPlayer([silent], tasks=NEVER) as player:
        count, held_bytes, message, lone_held = asyncio.run(main())
        assert not player.problems, player.problems
    assert (count, held_bytes) == (10, 10 * BIG)
    assert "window_bytes=1048576" in message and f"{10 * BIG:,} bytes unacknowledged" in message, message
    assert lone_held == (1, BIG)


def test_the_asyncio_clients_waiting_submits_all_get_the_bytes_a_large_one_frees(monkeypatch):
    """One acknowledgement wakes one waiting submit (miyaq.aio.window); when
    it frees the bytes of several -- a large task's, and five small ones
    wait -- each one admitted passes the wake-up on: every one gets in woken,
    none by its wait's own timeout (each waits ``POLL``, a second, at most,
    then looks again: without the pass, four of them got in only so, a
    second late). Here that poll is an hour: a waiter not woken never gets in."""
    import miyaq.aio.window
    monkeypatch.setattr(miyaq.aio.window, "POLL", 3600.0)
    node = CountingNode()
    small = bytes(40 * 1024)

    async def main() -> tuple[tuple[int, int], list[bool]]:
        async with miyaq.aio.Client(node.endpoint, window_bytes=280 * 1024, submit_timeout=LONG) as client:
            room = client._io.room
            real_wait = room.wait_turn
            outcomes: list[bool] = []
            entered = 0

            async def wait_turn(p: Any, fits: Any, deadline: float, check: Any) -> bool:
                nonlocal entered
                entered += 1
                admitted = await real_wait(p, fits, deadline, check)
                outcomes.append(admitted)
                return admitted

            room.wait_turn = wait_turn      # type: ignore[method-assign]
            await client.submit("echo", [bytes(250 * 1024)])
            waiting = [asyncio.create_task(client.submit("echo", [small])) for _ in range(5)]
            for _ in range(1000):                  # until all five wait: 250 + 40 KiB would pass 280 KiB
                if entered >= 5:
                    break
                await asyncio.sleep(0.01)
            assert entered >= 5 and not any(t.done() for t in waiting)
            await client.request(c.STATUS, {})     # the node acknowledges the large task now
            await asyncio.wait_for(asyncio.gather(*waiting), 30)
            held = _held(client)
            await client.close(flush=False)
        return held, outcomes

    # The node acknowledges what it read once a STATUS was asked: the large task, and nothing after.
    with NodesPlayer([node], tasks=1, asked=(c.STATUS,)) as player:
        held, outcomes = asyncio.run(main())
        assert not player.problems, player.problems
    assert held == (5, 5 * task_size(small))
    assert outcomes and all(outcomes), outcomes


def test_two_submits_of_one_id_in_flight_give_back_both_their_bytes_when_one_answer_resolves_them():
    """Fault: the same id submitted again while its first submit is
    unacknowledged (a retry with the same id): the second joins the first
    (Pending.join), and the one acknowledgement resolves both. Each took its
    bytes in the window; both are given back, not only the first's (the
    bytes would stay held for good, shrinking the window a little at each
    such retry until nothing more fits)."""
    from test_client_core import Waiter, make, submitted
    from miyaq.client.pending import Pending

    core, transport = make(1)
    first = Pending({"id": "t1", "name": "echo", "body": bytes(1000)}, Waiter(), 0.0, 30.0)
    again = Pending({"id": "t1", "name": "echo", "body": bytes(3000)}, Waiter(), 0.0, 30.0)
    for p in (first, again):
        core.admitted(p)
        core.submit(p)
        core.on_timer(0.0)
    assert (core.in_flight, core.bytes_in_flight) == (2, 4000 + 2 * ENVELOPE)
    core.on_frames(0, submitted([["t1", "accepted", None]]), 0.001)
    assert first.waiter.value == again.waiter.value
    assert (core.in_flight, core.bytes_in_flight) == (0, 0)


def test_a_resend_that_joins_a_later_submit_of_its_id_gives_back_what_joined_it_too():
    """Fault: an id submitted three times while unacknowledged (a caller
    retrying with the same id), its first try's acknowledgement late
    (``ack_timeout``) and its resend going to a node it cannot reach while
    the third submit reaches the task's home node. The second had joined
    the first; since 2026-12-07 it takes the first's place when the first
    is late, and is resent when it is late too: both resends join the
    third (before, the second joined the resend: Pending.join of a submit
    that others joined). The one acknowledgement resolves all three and
    gives back all their bytes, each copy its own size: dropping what had
    joined the resend (mutation of review32, when the joined bytes were
    one sum) held the second's bytes in the window for good."""
    from test_client_core import Waiter, make, submitted
    from miyaq.client.pending import Pending

    class OnNode0:
        """The ring places every task on node 0."""
        def home(self, routing_key: str) -> int:
            return 0

    core, transport = make(3)
    core.nodes.placement = OnNode0()
    first, second, third = (Pending({"id": "t1", "name": "echo", "body": bytes(n)}, Waiter(), 0.0, 30.0)
                            for n in (1000, 2000, 4000))
    for p in (first, second):
        core.admitted(p)
        core.submit(p)
        core.on_timer(0.0)
    assert core.submits.pending == {"t1": first} and first.joined == [second]
    transport.connected -= {1, 2}            # the resend avoids node 0 (silent): nowhere to go
    core.on_timer(5.5)                       # the first try's acknowledgement is late
    core.admitted(third)
    core.submit(third)
    core.on_timer(20.0)
    # Each unacknowledged copy was resent on its own (the second took the first's place, then was late too).
    assert core.submits.pending == {"t1": third} and core.submits.waiting == [first, second]
    transport.connected |= {1, 2}
    for now in (20.5, 21.0, 22.0, 24.0):
        core.on_timer(now)
    assert not core.submits.waiting and core.submits.pending == {"t1": third}
    assert (core.in_flight, core.bytes_in_flight) == (3, 7000 + 3 * ENVELOPE)
    core.on_frames(0, submitted([["t1", "accepted", None]]), 24.1)
    assert all(p.waiter.done and p.waiter.value == third.waiter.value for p in (first, second))
    assert (core.in_flight, core.bytes_in_flight) == (0, 0)


def test_a_task_that_fills_the_byte_bound_exactly_goes_in_and_one_byte_more_waits():
    """The bound is what the held tasks may reach, not pass (``blocked_by``;
    mutation of review32: ``>=`` for ``>`` passed every test): with one
    task in flight, a second that brings the bytes to ``window_bytes``
    exactly is let in, one a byte larger is kept out by the bytes, and
    ``window`` held submits by the count."""
    from test_client_core import Waiter, make
    from miyaq.client.pending import Pending
    from miyaq.client.window import blocked_by

    core, _ = make(1)
    held = Pending({"id": "t1", "name": "echo", "body": bytes(1000)}, Waiter(), 0.0, 30.0)
    core.admitted(held)
    bound = held.size + 500
    assert blocked_by(core, 2, bound, 500) is None
    assert blocked_by(core, 2, bound, 501) == "bytes"
    assert blocked_by(core, 1, bound, 1) == "count"


def test_an_apps_window_bytes_reaches_its_client():
    app = miyaq.App("tcp://127.0.0.1:1", window_bytes=12345)
    try:
        assert app.client.window_bytes == 12345
    finally:
        app.close()
