"""A ``close()`` while submits wait for room in the window: each waiting
``submit()`` raises MiyaqError ("client is closed") at once, as the
close's docstring promises of calls waiting in other threads -- it is
neither let in nor handed a handle that fails later. A node that reads
every SUBMIT and acknowledges none keeps the window full. No timing is
asserted: the waits are bounded guards."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import miyaq
from raw_nodes import CountingNode, NodesPlayer

pytestmark = pytest.mark.timeout(60)

NEVER = 10 ** 9         # tasks the played node reads before it acknowledges: never
LONG = 30.0             # submit_timeout: the waiting submits outlive the test unless the close ends them


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
@pytest.mark.parametrize("flush", [False, True], ids=["close-at-once", "close-flushing"])
def test_submits_waiting_for_room_when_the_client_closes_raise_client_is_closed(client_for, flush, green) -> None:
    """Fault: a producer closes its client while two other threads' (or
    greenlets') submits wait for room (window=1, its one submit never
    acknowledged). Before 2026-12-07 the close's failing of the
    unacknowledged submit made room, the waiters were let in, and each
    ``submit()`` returned a handle whose submit had failed ("client is
    closed" only at ``result()`` or ``flush()``): a producer that does not
    look at its handles took the tasks for sent. Now each raises
    MiyaqError at once."""
    if green:
        import gevent
        spawn: Callable[[Callable[[], None]], Any] = gevent.spawn
        pause: Callable[[float], Any] = gevent.sleep
    else:
        spawn = _thread
        pause = time.sleep
    silent = CountingNode()
    with NodesPlayer([silent], tasks=NEVER):
        client = client_for(silent.endpoint, window=1, submit_timeout=LONG, green=green)
        client.submit("echo", [1])
        outcomes: list[Any] = []

        def submit() -> None:
            try:
                outcomes.append(client.submit("echo", [2]))
            except miyaq.MiyaqError as exc:
                outcomes.append(exc)

        callers = [spawn(submit) for _ in range(2)]
        for _ in range(400):                                   # both queued for room (a bounded guard)
            if len(client._io.room.waiting) == 2:
                break
            pause(0.025)
        assert len(client._io.room.waiting) == 2
        if flush:
            with pytest.raises(miyaq.Timeout):
                client.close(timeout=0.5)        # the silent node's submit is never acknowledged
        else:
            client.close(flush=False)
        for caller in callers:
            caller.join(10)
        for _ in range(400):
            if len(outcomes) == 2:
                break
            pause(0.025)
    assert len(outcomes) == 2
    assert all(isinstance(o, miyaq.MiyaqError) and "client is closed" in str(o) for o in outcomes), outcomes
    assert not client._io.room.waiting


def _thread(fn: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread
