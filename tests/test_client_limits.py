"""A node's limits for a SUBMIT -- max_message, max_payload, max_batch --
told in its RING reply and kept by the client: what no node could take
fails at once with InvalidField, nothing else is sent past them.

Before 2026-12-04 a task over a node's max_message (or a batch of tasks
that together passed a lowered one) made libzmq drop the client's
connection; the client sent it again on every reconnection until
``submit_timeout`` and then blamed the connection (``Unavailable``)."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

import miyaq
import miyaq.aio
from miyaq.client.nodes import Nodes
from miyaq.client.pending import Pending
from miyaq.client.sizes import Limits, limits_from
from miyaq.client.sizes import ASK_LIMITS_ABOVE, LIMITS_POLL, LIMITS_WAIT
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from test_client_core import Waiter, make, pending, submitted

MiB = 1024 * 1024
LIMITS = {"max_message": 2 * MiB, "max_payload": MiB, "max_batch": 3}


def ring_reply(req: int, limits: dict[str, Any] | None = LIMITS) -> list[bytes]:
    body: dict[str, Any] = {"req": req, "epoch": 1, "leader": "n1", "vnodes": 0, "members": {}, "node": "n1"}
    if limits is not None:
        body["limits"] = limits
    return codec.encode(c.REPLY, body)


def large(task_id: str, size: int) -> tuple[Any, Any]:
    """A submit of ``size`` bytes of body: made with it, as the client makes
    one (a Pending takes its size when it is made)."""
    waiter = Waiter()
    return Pending({"id": task_id, "name": "echo", "body": b"x" * size}, waiter, 0.0, 30.0), waiter


@pytest.mark.parametrize("value", [None, [], {"max_message": 2 * MiB}, {**LIMITS, "max_batch": 0},
                                   {**LIMITS, "max_payload": "1"}, {**LIMITS, "max_message": 100},
                                   {**LIMITS, "max_batch": True}])
def test_limits_that_make_no_sense_are_not_taken(value):
    """Fault: a buggy or hostile node's RING reply. The client keeps its own bounds."""
    assert limits_from(value) is None


def test_limits_heard_from_one_node_stand_for_the_others_until_they_answer():
    nodes = Nodes(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"])
    assert not nodes.limits_known(1) and nodes.limits_for(1) is None
    nodes.learn_limits(0, LIMITS)
    assert nodes.limits_known(1) and nodes.limits_for(1) == Limits(2 * MiB, MiB, 3)
    nodes.learn_limits(1, None)                  # a node of before 2026-12-04: no limits
    assert nodes.limits_for(1) is None and nodes.limits_for(0) == Limits(2 * MiB, MiB, 3)
    nodes.learn_limits(0, None)                  # an error answer later keeps what node 0 said
    assert nodes.limits_for(0) == Limits(2 * MiB, MiB, 3)


def test_a_large_submit_waits_for_its_nodes_limits_and_no_later_submit_overtakes_it():
    core, transport = make(1)
    big, big_waiter = large("big", ASK_LIMITS_ABOVE + 1)
    core.submit(big, now=0.0)
    small, _ = pending("small")
    core.submit(small, now=0.0)
    core.on_timer(0.0)
    (node, command, body), = transport.take()           # only the RING, asking what the node takes
    assert (node, command) == (0, c.RING)
    core.on_timer(LIMITS_POLL / 2)
    assert transport.take() == []                       # asked once, nothing overtook the large one
    core.on_frames(0, ring_reply(body["req"]), 0.001)
    core.on_timer(0.001)
    (_, command, sent), = transport.take()
    assert command == c.SUBMIT and [t["id"] for t in sent["tasks"]] == ["big", "small"]
    core.on_frames(0, submitted([["big", "accepted", None], ["small", "accepted", None]]), 0.002)
    assert big_waiter.done and big_waiter.error is None


def test_a_payload_over_the_nodes_max_payload_fails_at_once_and_is_not_sent():
    core, transport = make(1)
    core.nodes.learn_limits(0, LIMITS)
    over, over_waiter = large("over", MiB + 1)
    fits, fits_waiter = large("fits", MiB)
    core.submit(over, now=0.0)
    core.submit(fits, now=0.0)
    core.on_timer(0.0)
    (_, command, sent), = transport.take()
    assert command == c.SUBMIT and [t["id"] for t in sent["tasks"]] == ["fits"]
    assert isinstance(over_waiter.error, miyaq.InvalidField) and over_waiter.error.details["field"] == "body"
    assert "its max_payload is 1048576 bytes" in over_waiter.error.message
    assert not fits_waiter.done


def test_a_payload_whose_submit_would_pass_the_nodes_max_message_fails_naming_it():
    core, transport = make(1)
    core.nodes.learn_limits(0, {**LIMITS, "max_payload": 64 * MiB})
    p, waiter = large("huge", 2 * MiB)
    core.submit(p, now=0.0)
    core.on_timer(0.0)
    assert transport.take() == []
    assert "would pass its max_message of 2097152 bytes" in waiter.error.message


def test_a_small_task_to_a_node_with_a_tiny_max_message_is_measured_not_refused():
    """A node with max_message 4 KiB (as tests of limits run one): a task of a
    few hundred bytes fits, one of 5,000 does not."""
    core, transport = make(1)
    core.nodes.learn_limits(0, {**LIMITS, "max_message": 4096})
    fits, fits_waiter = large("fits", 300)
    over, over_waiter = large("over", 5000)
    core.submit(fits, now=0.0)
    core.submit(over, now=0.0)
    core.on_timer(0.0)
    (_, _, sent), = transport.take()
    assert [t["id"] for t in sent["tasks"]] == ["fits"] and not fits_waiter.done
    assert "would pass its max_message of 4096 bytes" in over_waiter.error.message


def test_batches_keep_to_the_nodes_max_batch_and_half_its_max_message():
    core, transport = make(1)
    core.nodes.learn_limits(0, LIMITS)                  # max_batch 3, max_message 2 MiB
    for i in range(7):
        core.submit(pending(f"t{i}")[0])
    core.on_timer(0.0)
    assert [len(b["tasks"]) for _, _, b in transport.take()] == [3, 3, 1]
    core.nodes.learn_limits(0, {**LIMITS, "max_batch": 100})
    for i in range(5):
        core.submit(large(f"l{i}", 400 * 1024)[0])
    core.on_timer(1.0)
    assert [len(b["tasks"]) for _, _, b in transport.take()] == [2, 2, 1]    # about 1 MiB a SUBMIT


def test_a_node_that_answers_without_limits_gets_the_large_submit_at_once():
    core, transport = make(1)
    core.submit(large("big", ASK_LIMITS_ABOVE + 1)[0], now=0.0)
    core.on_timer(0.0)
    (_, _, body), = transport.take()
    core.on_frames(0, ring_reply(body["req"], limits=None), 0.001)
    core.on_timer(0.001)
    (_, command, _), = transport.take()
    assert command == c.SUBMIT


def test_a_node_that_never_answers_gets_the_large_submit_after_the_limits_wait():
    """Fault: a node that does not answer RING (or whose answers are lost)."""
    core, transport = make(1)
    core.submit(large("big", ASK_LIMITS_ABOVE + 1)[0], now=0.0)
    now = 0.0
    while now < LIMITS_WAIT + LIMITS_POLL:
        core.on_timer(now)
        now += LIMITS_POLL
    commands = [command for _, command, _ in transport.take()]
    assert commands[0] == c.RING and commands[-1] == c.SUBMIT and commands.count(c.SUBMIT) == 1


def test_the_connection_closing_drops_the_limits_question_so_it_is_asked_again():
    """Fault: the connection closes before the node answered the RING."""
    core, transport = make(1)
    core.submit(large("big", ASK_LIMITS_ABOVE + 1)[0], now=0.0)
    core.on_timer(0.0)
    assert [command for _, command, _ in transport.take()] == [c.RING]
    core.on_disconnected(0, 0.01)
    core.on_timer(0.01 + LIMITS_POLL)
    assert [command for _, command, _ in transport.take()] == [c.RING]


# -- against a real node -------------------------------------------------------------------

def test_a_payload_over_a_real_nodes_max_message_fails_at_once_with_invalid_field(make_node):
    """Fault: a task larger than the node's max_message (1.5 MB here), as the
    client's first message and later. Before: libzmq dropped the connection at
    each try and the submit failed after submit_timeout with ``Unavailable``
    ("the connection ... closed before it acknowledged the submit")."""
    n = make_node(max_message=1_500_000, max_payload=1_400_000)
    with miyaq.Client(n.endpoint, submit_timeout=20) as client:
        with pytest.raises(miyaq.InvalidField, match="its max_payload is 1400000 bytes"):
            client.submit("echo", [b"x" * (2 * MiB)], wait=True)
        client.submit("echo", [b"x" * (2 * MiB)])
        with pytest.raises(miyaq.InvalidField, match="its max_payload is 1400000 bytes"):
            client.flush()
        # Several large tasks a SUBMIT of the client's own 4 MiB would hold: split under 1.5 MB.
        handles = [client.submit("echo", [b"y" * 600_000]) for _ in range(6)]
        client.flush()
        assert all(h.accepted for h in handles)
        assert client.status()["totals"]["live"] == 6


def test_a_payload_over_the_default_max_message_of_a_node_with_a_raised_max_payload(make_node):
    n = make_node(max_payload=32 * MiB)
    with miyaq.Client(n.endpoint, submit_timeout=20) as client:
        assert client.submit("echo", [b"x" * (2 * MiB)], wait=True).accepted
        with pytest.raises(miyaq.InvalidField, match="would pass its max_message of 16777216 bytes"):
            client.submit("echo", [b"x" * (17 * MiB)], wait=True)


def test_a_large_lone_submit_held_for_limits_does_not_count_as_sent_now():
    """The short path's answer: a lone submit that waits for its node's limits
    did not leave (the driver must keep a timer for it)."""
    core, transport = make(1)
    assert not core.submit(large("big", ASK_LIMITS_ABOVE + 1)[0], now=0.0)
    assert [command for _, command, _ in transport.take()] == [c.RING]
    assert core.submit(pending("small")[0], now=10.0) is False        # queued behind it


def test_a_failure_a_caller_already_got_is_not_raised_again_by_flush(make_node):
    """A submit's failure raised to a caller (``wait_accepted()``, ``result()``)
    is the caller's, handled or not: the next ``flush()`` raises only the
    failures nobody was told of (before: it raised the same error again,
    so a program that handled each failure still failed at its flush)."""
    n = make_node(max_payload=100_000)
    with miyaq.Client(n.endpoint, submit_timeout=20) as client:
        told = client.submit("echo", [b"x" * 200_000])
        with pytest.raises(miyaq.InvalidField):
            told.wait_accepted()
        with pytest.raises(miyaq.InvalidField):
            told.result()               # asked again: the same error, as often as asked
        fine = client.submit("echo", [b"y"])
        client.flush()                  # nothing untold failed
        assert fine.accepted
        client.submit("echo", [b"z" * 200_000])
        with pytest.raises(miyaq.InvalidField):
            client.flush()              # this one nobody was told of

    async def main() -> None:
        async with miyaq.aio.Client(n.endpoint, submit_timeout=20) as aio_client:
            told = await aio_client.submit("echo", [b"x" * 200_000])
            with pytest.raises(miyaq.InvalidField):
                await told.wait_accepted()
            await aio_client.submit("echo", [b"y"])
            await aio_client.flush()
            await aio_client.submit("echo", [b"z" * 200_000])
            with pytest.raises(miyaq.InvalidField):
                await aio_client.flush()
    asyncio.run(asyncio.wait_for(main(), 60))
