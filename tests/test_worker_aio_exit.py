"""The worker's asyncio side at its edges: a ``CancelledError`` the worker did
not cause, and what async handlers submitted when the worker stops."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from miyaq.runtime import green
from miyaq.testing.harness import in_own_hub
from miyaq.worker.aio import AsyncLoop
from miyaq.worker.execute import TaskTimeout, run_async

pytestmark = pytest.mark.timeout(60)


async def awaits_a_cancelled_future() -> None:
    fut = asyncio.get_running_loop().create_future()
    fut.cancel()                # another party (a torn-down connection, a cancelled gather) cancelled it
    await fut


def test_a_cancelled_error_the_worker_did_not_cause_fails_the_attempt_retryably() -> None:
    """Fault: an async handler awaits something another party cancelled. Before
    2026-12-05 any CancelledError was taken for the worker's cancel: the task
    was dead-lettered "Aborted", its retries and traceback lost. Only the
    worker's own cancel (its stop reason set) is an interruption now."""
    kind, error = asyncio.run(run_async(awaits_a_cancelled_future, None, lambda: None))
    assert kind == "failed" and error["type"] == "CancelledError" and error.get("retry", True) is not False
    assert "Traceback" in error["traceback"]
    kind, error = asyncio.run(run_async(awaits_a_cancelled_future, None, lambda: TaskTimeout))
    assert kind == "failed" and error["type"] == TaskTimeout.error_type


def test_the_loop_flushes_before_it_cancels_what_still_runs() -> None:
    """Fault: the worker stops while submits an async handler made through
    ``app.aio`` wait for their acknowledgement. Before 2026-12-05 the loop
    cancelled every task at once -- the client's reader too -- and those
    submits were dropped without a word. ``before_exit`` (the app's
    ``aclose``) now runs first, while the loop's other tasks still run."""
    seen: dict[str, Any] = {}

    def run() -> None:
        loop = AsyncLoop(green.HubInbox("test"), lambda task_id: None, lambda: None)

        async def background() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen["cancelled_after_flush"] = "flushed" in seen
                raise

        async def flush() -> None:
            await asyncio.sleep(0)
            seen["flushed"] = not seen["task"].cancelled()

        loop.before_exit = flush
        loop.start()
        assert loop.loop is not None
        seen["task"] = asyncio.run_coroutine_threadsafe(background(), loop.loop)
        green.sleep(0.05)
        loop.stop()

    in_own_hub(run)
    assert seen["flushed"] is True and seen["cancelled_after_flush"] is True
