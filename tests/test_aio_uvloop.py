"""miyaq.aio on uvloop (what ``uvicorn[standard]`` runs an application on):
uvloop's ``call_at`` for a time less than a millisecond ahead is a
``call_soon``, whose handle has no ``when()``. The client's timer must not
ask for it. Tested on a stand-in loop that does what uvloop does there (the
test environment need not have uvloop), and on uvloop itself where it is
installed."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

import miyaq.aio


class SoonLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with uvloop's ``call_at``: a time that rounds to no
    millisecond ahead runs as ``call_soon`` (a ``Handle``, no ``when()``)."""

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,
                context: Any = None) -> Any:
        if round((when - self.time()) * 1000) <= 0:
            return self.call_soon(callback, *args, context=context)
        return super().call_at(when, callback, *args, context=context)


async def burst(endpoint: str) -> None:
    """Submits that fill a small window, calls and a cancelled wait: the
    client's timer is armed for "now" many times over."""
    async with miyaq.aio.Client(endpoint, window=50) as client:
        handles = await asyncio.gather(*(client.submit("job", [i], queue="uvloop") for i in range(2000)))
        await client.flush(timeout=30)
        assert all(h.accepted for h in handles)
        waits = [asyncio.create_task(client.result(h.id, timeout=30)) for h in handles[:50]]
        await asyncio.sleep(0.05)
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        assert (await client.status())["totals"]["live"] >= 2000


def test_a_loop_whose_call_at_may_give_a_handle_without_when(node):
    """Fault: the loop hands back a plain ``Handle`` for a timer due now, as
    uvloop does. Before, the client's next ``_arm`` asked it for
    ``when()``: AttributeError, "miyaq asyncio client failed (a bug: please
    report this traceback)", and every call of the client failed from then
    on ("client I/O failed; see the log")."""
    with asyncio.Runner(loop_factory=SoonLoop) as runner:
        runner.run(asyncio.wait_for(burst(node.endpoint), 60))


def test_on_uvloop(node):
    """The same burst on uvloop itself, where it is installed."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(burst(node.endpoint), 60))
