"""Three faults of the client: two submits of one id in flight at once, a
flush that timed out, and a fork while the client resolves a future.

1. Submits are idempotent by id, which invites retrying with the same id (or
   two web requests carrying the same order id): the pipeline kept its
   unacknowledged submits by id, the second replaced the first, whose handle
   never resolved and whose window slot was never given back.
2. A flush() that timed out forgot the submits it had not seen resolved: the
   next flush() (and close(), and the exit-time flush) returned normally
   while those submits later failed.
3. A child forked while another thread of the parent held the futures'
   module-wide guard inherited it locked: its first new client call that
   resolved a future hung for ever.
"""
from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import msgpack
import pytest
from process_tree import forked_exit_code

import miyaq
import miyaq.aio
from miyaq.client import futures
from miyaq.client.core import ClientCore
from miyaq.client.nodes import Nodes
from miyaq.client.pending import Pending
from miyaq.errors import Busy, MiyaqError, Timeout
from miyaq.protocol import codec
from miyaq.protocol import commands as c

pytestmark = pytest.mark.timeout(60)


# -- 1. the same id twice in flight ---------------------------------------------------------------------
class _Transport:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, node: int, frames: list[bytes]) -> bool:
        self.sent.append(msgpack.unpackb(frames[2], raw=False))
        return True

    def connect(self, endpoint: str) -> bool:
        return True

    def reconnect(self, node: int) -> None:
        pass


class _Waiter:
    def __init__(self) -> None:
        self.value: Any = None
        self.error: MiyaqError | None = None
        self.done = False

    def set(self, value: Any) -> None:
        assert not self.done, "resolved twice"
        self.value, self.done = value, True

    def fail(self, error: MiyaqError) -> None:
        assert not self.done, "resolved twice"
        self.error, self.done = error, True


def _core() -> tuple[ClientCore, _Transport]:
    transport = _Transport()
    nodes = Nodes(["tcp://127.0.0.1:7450"], discover=False)
    return ClientCore(transport, nodes, max_batch=512, ack_timeout=5.0, max_message=1 << 24), transport


def _submit(core: ClientCore, task_id: str, now: float = 0.0) -> _Waiter:
    waiter = _Waiter()
    core.submitted += 1            # as the drivers count a submit
    core.submit(Pending({"id": task_id, "name": "echo", "body": b""}, waiter, now, now + 30.0))
    return waiter


def _ack(core: ClientCore, *ids: str, status: str = c.ACCEPTED, detail: Any = None) -> None:
    core.on_frames(0, codec.encode(c.SUBMITTED, {"results": [[i, status, detail] for i in ids]}), 1.0)


def test_same_id_twice_in_one_batch_both_resolved_by_one_ack() -> None:
    """Fault: the same id submitted twice before either left (one batch): one
    acknowledgement resolves both, a second one for the id is ignored, and
    both window slots come back."""
    core, transport = _core()
    first, second = _submit(core, "order-42"), _submit(core, "order-42")
    core.on_timer(0.0)
    assert [t["id"] for t in transport.sent[0]["tasks"]] == ["order-42", "order-42"]
    _ack(core, "order-42")
    assert first.done and second.done and first.value == second.value
    assert core.in_flight == 0 and not core.submits.pending
    _ack(core, "order-42", status=c.DUPLICATE, detail="order-42")     # the node's answer to the second copy
    assert core.in_flight == 0


def test_same_id_sent_while_the_first_is_unacknowledged_and_both_fail_together() -> None:
    """Fault: a retry of an unacknowledged submit, with the same id, sent
    while the first still waits for its acknowledgement; then the client
    stops. Before, the second replaced the first, which fail_all missed."""
    core, _ = _core()
    first = _submit(core, "order-7")
    core.on_timer(0.0)
    second = _submit(core, "order-7", now=0.5)
    core.on_timer(0.5)
    assert core.in_flight == 2 and len(core.submits.pending) == 1
    core.fail_all(MiyaqError("the client was closed"))
    assert first.error is not None and second.error is not None
    assert core.in_flight == 0


def test_same_id_submitted_twice_concurrently_threaded_client(node, client_for) -> None:
    """Fault: 40 ids each submitted twice at once (no wait), a burst in
    which pairs leave in one batch or one after the other: flush() sees
    every handle accepted, each pair under its one id, and the window is
    empty again (before: flush timed out, in_flight stuck at the lost ones)."""
    client = client_for(node.endpoint, submit_timeout=10.0)
    pairs = [(client.submit("x", [k], id=f"order-{k}"), client.submit("x", [k], id=f"order-{k}"))
             for k in range(40)]
    client.flush(timeout=8)
    for a, b in pairs:
        assert a.accepted and b.accepted and a.id == b.id
    assert client._io.in_flight == 0
    again = client.submit("x", [0], id="order-0", wait=True)     # a later retry: accepted (duplicate)
    assert again.accepted and client._io.in_flight == 0


def test_same_id_submitted_twice_concurrently_asyncio_client(node) -> None:
    """Fault: as above, through the asyncio client: 20 ids submitted twice
    in one pass of the loop (each pair in one batch)."""
    async def main() -> None:
        client = miyaq.aio.Client(node.endpoint, submit_timeout=10.0)
        try:
            handles = [await client.submit("x", [k], id=f"dup-{k // 2}") for k in range(40)]
            await client.flush(timeout=8)
            assert all(h.accepted for h in handles)
            assert [h.id for h in handles[::2]] == [h.id for h in handles[1::2]]
            assert client._io.core.in_flight == 0
        finally:
            await client.close(flush=False)

    asyncio.run(asyncio.wait_for(main(), 50))


# -- 2. a flush that timed out ----------------------------------------------------------------------------
def test_flush_after_a_timed_out_flush_raises_until_the_submits_resolve(make_node, client_for) -> None:
    """Fault: a node already full (max_tasks=1) answers every submit busy. A
    flush with a short timeout raises Timeout, counting the submits as not
    finished (none failed yet); the next flush must not return normally
    while they are unresolved: it raises their real outcome (Busy) or
    Timeout. Before, it returned at once, with no error."""
    n = make_node(max_tasks=1)
    client = client_for(n.endpoint, submit_timeout=4.0)
    client.submit("x", [0], wait=True)                  # fills the node
    handles = [client.submit("x", [i]) for i in range(5)]
    with pytest.raises(Timeout) as first:
        client.flush(timeout=0.2)
    with pytest.raises(MiyaqError) as second:
        client.flush()
    assert isinstance(second.value, (Busy, Timeout)), second.value
    assert not any(h.accepted for h in handles)
    message = first.value.message       # counts them as not finished, not as failed
    assert "5 submits not finished" in message and "failed" not in message, message


def test_flush_after_a_timed_out_flush_raises_asyncio_client(make_node) -> None:
    """Fault: as above, through the asyncio client."""
    n = make_node(max_tasks=1)

    async def main() -> None:
        client = miyaq.aio.Client(n.endpoint, submit_timeout=4.0)
        try:
            await client.submit("x", [0], wait=True)
            handles = [await client.submit("x", [i]) for i in range(5)]
            with pytest.raises(Timeout):
                await client.flush(timeout=0.2)
            with pytest.raises(MiyaqError) as second:
                await client.flush()
            assert isinstance(second.value, (Busy, Timeout)), second.value
            assert not any(h.accepted for h in handles)
        finally:
            await client.close(flush=False)

    asyncio.run(asyncio.wait_for(main(), 50))


# -- 3. fork while the futures' guard is held ----------------------------------------------------------------
def test_child_forked_while_the_futures_guard_is_held_can_resolve_futures() -> None:
    """Fault: another thread of the parent holds miyaq.client.futures' guard
    (its I/O thread resolving a submit) at the moment of fork() -- here the
    test holds it itself, deterministically. The child resolves and waits on
    a new Future (what its first new client does): it must not hang on the
    inherited locked guard, and exits 0."""
    guard = futures._guard
    guard.acquire()
    try:
        pid = os.fork()
        if pid == 0:                                 # the child: never returns into pytest
            code = 2
            try:
                future = futures.Future(threading.Event)
                done = threading.Event()

                def resolve() -> None:
                    future.set("ok")
                    if future.wait(5.0) == "ok":
                        done.set()

                threading.Thread(target=resolve, daemon=True).start()
                code = 0 if done.wait(10.0) else 1
            finally:
                os._exit(code)
    finally:
        guard.release()
    assert forked_exit_code(pid, 30.0, "the forked child hung") == 0
