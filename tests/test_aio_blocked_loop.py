"""miyaq.aio when the event loop was held past a call's deadline (a request
handler that blocked: a sync database call, ``time.sleep``, CPU work): an
answer that came meanwhile, waiting in the socket, is the call's outcome --
not a ``Timeout`` that says the node did not answer."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import pytest

import miyaq.aio

DEADLINE = 0.5
HELD = DEADLINE + 1.0       # the node (a thread of this process) answers in far less
ROUNDS = 3                  # before the fix, a round or more of three failed in every run seen


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """asyncio's own loop, or uvloop where it is installed (its timers and
    I/O run in another order in a pass)."""
    if name == "uvloop":
        return pytest.importorskip("uvloop").new_event_loop
    return asyncio.new_event_loop


async def held_past_the_deadline(call: Awaitable[Any]) -> Any:
    """Start ``call``, let it leave, hold the loop for longer than its
    deadline (the node answers meanwhile), then await it."""
    task = asyncio.ensure_future(call)
    for _ in range(3):
        await asyncio.sleep(0)      # sent
    time.sleep(HELD)                # noqa: ASYNC251 -- the fault: a handler that blocks the loop
    return await task


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_answers_that_came_while_the_loop_was_held_are_not_timeouts(node, loop):
    """Fault: the event loop held by a blocking handler for longer than a
    request's ``request_timeout`` and a submit's ``submit_timeout``, the
    node's answers waiting in the socket. Before, the client's timer ran
    before its readers when the loop came back: ``status()`` raised
    ``Timeout: the node did not answer in time``, ``submit(wait=True)``
    ``Timeout: task ... not acknowledged before its
    deadline`` -- for a task the node had stored (and ran). Now the
    answers are read first. (``call()`` got its result all the same: its
    wait asks the node again.)"""
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint, request_timeout=DEADLINE,
                                    submit_timeout=DEADLINE) as client:
            await client.status()                                     # connected
            ids = []
            for i in range(ROUNDS):
                status = await held_past_the_deadline(client.status())
                assert status["node"]
                handle = await held_past_the_deadline(client.submit("job", [i], queue="held", wait=True))
                assert handle.accepted
                ids.append(handle.id)
            tasks = await client.tasks(queue="held")
            assert sorted(t["id"] for t in tasks) == sorted(ids)

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(asyncio.wait_for(main(), 30))

