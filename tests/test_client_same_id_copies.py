"""Two submits of one id in flight at once, each its own outcome
(miyaq.client.id_copies).

Submits are idempotent by id, which invites a second submit of an id while
the first is unacknowledged (a retry with the same id, two web requests
carrying one order id). The second is a copy in flight beside the first;
it may go to another node, and its content may differ. Since 2026-12-07 an
answer that the id is stored resolves every copy (a submit of a stored id
is a duplicate, which counts as accepted: docs/semantics.md); any other
answer is the answer of the copy sent to the node that gave it, and only
that copy's. Before, the first answer for the id resolved both: a refusal
of one copy for its own content, or the first copy's deadline, failed the
other, whose copy was stored; and the other's acceptance, coming while the
first waited for a retry, was dropped.

The client's core is driven directly (``tests/test_client_core.py``'s fake
transport): two nodes, each copy sent to the node its test names.
"""
from __future__ import annotations

import pytest
from test_client_core import Waiter, make, submitted

from miyaq.client.core import ClientCore
from miyaq.client.pending import Pending

pytestmark = pytest.mark.timeout(30)

NODE0, NODE1 = "tcp://127.0.0.1:7450", "tcp://127.0.0.1:7451"
INVALID = {"code": "invalid_field", "message": "field 'priority' is out of range", "field": "priority"}
BUSY = {"code": "busy", "message": "queue full"}


def copy(core: ClientCore, node: int, body: bytes, now: float = 0.0, timeout: float = 30.0) -> Pending:
    """A submit of id "order-7" sent to ``node`` at ``now``."""
    p = Pending({"id": "order-7", "name": "charge", "body": body}, Waiter(), now, now + timeout)
    p.node = node
    core.admitted(p)
    core.submit(p)
    core.on_timer(now)
    return p


def test_a_copy_refused_for_its_content_fails_alone_and_the_other_copy_stored_is_accepted() -> None:
    """Fault: two submits of one id with different content on two nodes;
    node 0 refuses the first for its own content (``invalid_field``), node 1
    stores the second. Before, the refusal failed both: the second's caller
    was told its task failed although node 1 holds it, and node 1's answer
    was dropped. Now the first fails, the second is accepted by node 1."""
    core, _ = make(2)
    first = copy(core, 0, b"\x91\xcd\xff\xff")
    second = copy(core, 1, b"\x91\x01")
    core.on_frames(0, submitted([["order-7", "rejected", INVALID]]), 0.1)
    assert first.waiter.error is not None and first.waiter.error.code == "invalid_field"
    assert not second.waiter.done, "the second copy failed with the first one's refusal"
    core.on_frames(1, submitted([["order-7", "accepted", None]]), 0.2)
    assert second.waiter.value == (NODE1, "accepted", None)
    assert (core.in_flight, core.bytes_in_flight) == (0, 0)


def test_a_copy_stored_while_the_first_waits_for_a_retry_is_accepted_at_once() -> None:
    """Fault: node 0 is full (BUSY: the first copy is to be retried later);
    node 1 stores the second copy meanwhile. Before, node 1's answer came
    while the first copy was out of the unacknowledged submits and was
    dropped: the second waited for the first's retry, and failed with it if
    the retries failed until the first's deadline. Now it is accepted at
    once; the first, resent, meets the stored id (``duplicate``)."""
    core, transport = make(2)
    first = copy(core, 0, b"\x91\x01")
    second = copy(core, 1, b"\x91\x01")
    core.on_frames(0, submitted([["order-7", "rejected", BUSY]]), 0.1)
    assert not first.waiter.done and core.submits.waiting == [first]
    core.on_frames(1, submitted([["order-7", "accepted", None]]), 0.2)
    assert second.waiter.value == (NODE1, "accepted", None), "node 1's answer was dropped"
    assert not first.waiter.done
    transport.take()
    core.on_timer(5.0)                                  # the first's retry leaves
    [(node, _, body)] = transport.take()
    assert [t["id"] for t in body["tasks"]] == ["order-7"]
    core.on_frames(node, submitted([["order-7", "duplicate", "order-7"]]), 5.1)
    assert first.waiter.value == (core.nodes.endpoints[node], "duplicate", "order-7")
    assert (core.in_flight, core.bytes_in_flight) == (0, 0)


def test_the_first_copys_deadline_fails_it_alone_and_the_later_copy_is_still_answered() -> None:
    """Fault: the first copy's deadline (its caller's ``submit_timeout``:
    1 s) passes unacknowledged; the second, submitted with 30 s, is
    acknowledged after it. Before, the first's deadline failed both. Now
    the first fails with Timeout, the second is accepted."""
    core, _ = make(2)
    first = copy(core, 0, b"\x91\x01", timeout=1.0)
    second = copy(core, 0, b"\x91\x01", now=0.5)
    core.on_timer(1.0)
    assert first.waiter.error is not None and first.waiter.error.code == "timeout"
    assert not second.waiter.done, "the second copy failed at the first one's deadline"
    core.on_frames(0, submitted([["order-7", "accepted", None]]), 1.2)
    assert second.waiter.value == (NODE0, "accepted", None)
    assert (core.in_flight, core.bytes_in_flight) == (0, 0)


def test_an_answer_that_the_id_is_stored_resolves_every_copy() -> None:
    """An ``accepted`` from either node resolves both copies, wherever they
    went: a submit of a stored id is a duplicate, accepted. The other
    node's answer, later, finds nothing left to resolve."""
    core, _ = make(2)
    first = copy(core, 0, b"\x91\x01")
    second = copy(core, 1, b"\x91\x02")
    core.on_frames(1, submitted([["order-7", "accepted", None]]), 0.1)
    assert first.waiter.value == second.waiter.value == (NODE1, "accepted", None)
    core.on_frames(0, submitted([["order-7", "duplicate", "order-7"]]), 0.2)
    assert (core.in_flight, core.bytes_in_flight) == (0, 0)


def test_a_lost_connection_resends_the_copies_that_went_there_and_keeps_the_others() -> None:
    """Fault: the connection to node 1, where the second copy went, closes.
    The second copy is sent again after its first retry's backoff (not
    ``ack_timeout`` later), to node 0; the first, on node 0, waits for its
    answer as before."""
    core, transport = make(2)
    first = copy(core, 0, b"\x91\x01")
    second = copy(core, 1, b"\x91\x01")
    transport.take()
    core.on_disconnected(1, 0.1)
    assert core.submits.pending == {"order-7": first} and core.submits.waiting == [second]
    core.on_timer(0.2)                                  # its first retry's backoff (at most 20 ms) is over
    sent = transport.take()
    assert [(node, [t["id"] for t in body["tasks"]]) for node, _, body in sent] == [(0, ["order-7"])]
    assert second.wire.get("resent") and first.joined == [second]       # resent to node 0: it joins the first
    core.on_frames(0, submitted([["order-7", "accepted", None]]), 0.3)
    assert first.waiter.done and second.waiter.done and (core.in_flight, core.bytes_in_flight) == (0, 0)


def test_a_copy_deduplicated_by_its_key_is_answered_alone() -> None:
    """Fault: the first copy carries a ``key`` another task holds (node 0
    answers ``duplicate`` naming that task: the id itself is not stored);
    the second copy, without the key, goes to node 1. Before, the first
    answer resolved both: the second was told it was a duplicate of the
    other task although node 1 stores it as its own. Now each copy has
    its own answer."""
    core, _ = make(2)
    first = copy(core, 0, b"\x91\x01")
    second = copy(core, 1, b"\x91\x01")
    core.on_frames(0, submitted([["order-7", "duplicate", "order-1"]]), 0.1)
    assert first.waiter.value == (NODE0, "duplicate", "order-1")
    assert not second.waiter.done, "the second copy took the first one's key duplicate"
    core.on_frames(1, submitted([["order-7", "accepted", None]]), 0.2)
    assert second.waiter.value == (NODE1, "accepted", None)
    assert (core.in_flight, core.bytes_in_flight) == (0, 0)
