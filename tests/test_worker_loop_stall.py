"""The heartbeat thread says when an ``async def`` handler blocks the
worker's asyncio loop (miyaq/worker/loop_watch.py), as it does for the
gevent hub: the test's handler blocks the loop with ``time.sleep`` until
the warning is seen, with the thresholds made short. No timing is
asserted: the loops and waits are bounded guards."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from fuzz_inputs import pack

from miyaq.runtime import green
from miyaq.testing.harness import in_own_hub, wait_for
from miyaq.worker import aio as aio_module
from miyaq.worker import loop_watch
from miyaq.worker.aio import AsyncLoop
from miyaq.worker.jobs import Job
from miyaq.worker.loop_watch import LoopWatch
from miyaq.worker.pulse import Pulse

pytestmark = pytest.mark.timeout(60)


def test_an_async_handler_blocking_the_loop_is_said_once_naming_it(monkeypatch, caplog) -> None:
    """Fault: an ``async def`` handler calls ``time.sleep`` (a blocking call
    not awaited) and holds the loop: every other async task waits for it.
    Before 2026-12-06 nothing was said (a 0.1 s async task beside a
    ``time.sleep(7)`` one took 7.1 s, silently). Now the heartbeat thread
    warns once for the stall, naming the task whose handler holds the loop
    (not the other async task waiting on it), and says at INFO when the
    loop runs again."""
    monkeypatch.setattr(loop_watch, "HUB_STALL_WARN", 0.3)
    monkeypatch.setattr(loop_watch, "HUB_TICK", 0.05)
    monkeypatch.setattr(aio_module, "HUB_TICK", 0.05)
    records = caplog.records

    def warnings() -> list[str]:
        return [r.getMessage() for r in list(records) if r.levelno == logging.WARNING and "loop" in r.getMessage()]

    async def blocks() -> str:
        end = time.monotonic() + 20.0
        while not warnings() and time.monotonic() < end:
            time.sleep(0.01)        # blocks the loop: no await
        return "done"

    async def waits() -> str:
        await asyncio.sleep(0.01)
        return "waited"

    outcomes: dict[str, Any] = {}

    def run() -> None:
        loop = AsyncLoop(green.HubInbox("test"), lambda task_id: None, lambda: None)
        body = pack([[], {}])
        blocker = Job(["t-block", "default", "blocks", body, 1, 30.0], blocks, True)
        waiter = Job(["t-wait", "default", "waits", body, 1, 30.0], waits, True)
        pulse = Pulse("w-loop", [], 0.02)
        pulse.loop_watch = LoopWatch("w-loop", loop, lambda: [waiter, blocker])
        loop.start()
        pulse.start()
        try:
            wait_for(lambda: green.sleep(0.02) or loop.seen is not None, what="the loop's first tick")
            first = green.Greenlet.spawn(lambda: outcomes.setdefault("blocker", loop.run(blocker)))
            wait_for(lambda: green.sleep(0.01) or blocker.handle is not None, what="the handler's start")
            second = green.Greenlet.spawn(lambda: outcomes.setdefault("waiter", loop.run(waiter)))
            first.join(30)
            second.join(30)
            wait_for(lambda: green.sleep(0.02) or any("runs again" in r.getMessage() for r in list(records)),
                     what="the loop said to run again")
        finally:
            pulse.stop()
            loop.stop()
        assert loop.seen is None       # stopped: not watched

    with caplog.at_level(logging.INFO, logger="miyaq.worker.aio"):
        in_own_hub(run)
    said = warnings()
    assert len(said) == 1, said
    assert "running: t-block (blocks)" in said[0] and "t-wait" not in said[0], said[0]
    assert "has not run for" in said[0] and "asyncio.to_thread" in said[0]
    assert outcomes["blocker"][0] == "done" and outcomes["waiter"][0] == "done"
