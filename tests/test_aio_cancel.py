"""miyaq.aio: a cancel that lands in the pass of the loop in which its reply
is read.

The cancels are deterministic: the client core's ``on_frames`` is wrapped
to cancel the waiting task just before, or just after, it handles the
reply the task waits for -- the same pass of the loop either way."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

import miyaq
import miyaq.aio
from miyaq.aio.futures import AioFuture
from miyaq.protocol import codec
from miyaq.protocol import commands as c


def run(main: Callable[[], Awaitable[Any]], limit: float = 60.0) -> Any:
    """Run a coroutine in a fresh event loop, bounded so a hang fails the test."""
    return asyncio.run(asyncio.wait_for(main(), limit))


async def status_once_known(client: miyaq.aio.Client, task_id: str, state: str) -> dict[str, Any]:
    """The task's status once it is known in ``state`` (asked again, bounded)."""
    seen: dict[str, Any] = {}
    for _ in range(300):
        try:
            seen = await client.status(task_id)
        except miyaq.NotFound:
            seen = {}
        if seen.get("state") == state:
            break
        await asyncio.sleep(0.05)
    return seen


def cancel_at_receive_reply(client: miyaq.aio.Client, task: asyncio.Task[Any], *, before: bool) -> list[int]:
    """Cancel ``task`` in the pass in which the answer to the client's open
    RECEIVE is read: just ``before`` the core handles it, or just after.
    The list returned gets the RECEIVE's ``req`` once that happened."""
    core = client._io.core
    handle = core.on_frames
    cancelled: list[int] = []

    def on_frames(node: int, frames: list[bytes], now: float) -> None:
        receiving = {req for req, entry in core.requests.open.items() if entry[3] == c.RECEIVE}
        _, body = codec.decode(frames, c.NODE_REPLIES, core.max_message)
        answers = not cancelled and body.get("req") in receiving
        if answers and before:
            task.cancel()
        handle(node, frames, now)
        if answers:
            if not before:
                task.cancel()
            cancelled.append(body["req"])
            core.on_frames = handle

    core.on_frames = on_frames
    return cancelled


@pytest.mark.parametrize("before", [True, False], ids=["cancel-then-reply", "reply-then-cancel"])
def test_a_receive_cancelled_in_the_pass_its_task_came_in_gives_the_task_back(node, before):
    """Fault: the task awaiting ``receive()`` is cancelled in the very pass of
    the loop in which the node's answer, bringing a leased task, is read.
    Cancel first: before, the wait raised CancelledError with the answer
    already in, so nothing was withdrawn and nothing given back: the task
    stayed ``running`` with nobody holding it until its lease ran out.
    Answer first: before, Python 3.11's ``asyncio.wait_for`` returned the
    answer and swallowed the cancel. Now the cancel is raised either way and
    the task goes back unstarted: ready, attempt 1 for the next consumer."""
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint) as client:
            handle = await client.submit("job", [1], queue="jobs", timeout=3600, wait=True)
            receiving = asyncio.ensure_future(client.receive("jobs", timeout=30))
            cancelled = cancel_at_receive_reply(client, receiving, before=before)
            with pytest.raises(asyncio.CancelledError):
                await receiving
            assert cancelled, "the cancel came in the pass of the RECEIVE's answer"
            status = await status_once_known(client, handle.id, "ready")
            assert status.get("state") == "ready", status
            job = await client.receive("jobs", timeout=10)
            assert job is not None and job.id == handle.id and job.attempt == 1
            assert await job.ack("done") is True

    run(main)


def test_a_consumer_loop_cancelled_as_its_reply_came_stops(node):
    """Fault: a ``while True: await client.receive(...)`` consumer whose
    ``task.cancel()`` comes in the pass its RECEIVE answer is read (after the
    answer). Before, on Python 3.11, the cancel was swallowed and the loop
    went on consuming every task; now it stops there, and the task that
    answer brought is given back for the next consumer."""
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint) as client:
            ids = [(await client.submit("job", [i], queue="loop", wait=True)).id for i in range(3)]
            handled: list[str] = []

            async def consumer() -> None:
                while True:
                    job = await client.receive("loop", timeout=30)
                    if job is not None:
                        handled.append(job.id)
                        await job.ack(None)

            consuming = asyncio.ensure_future(consumer())
            cancelled = cancel_at_receive_reply(client, consuming, before=False)
            stopped, _ = await asyncio.wait([consuming], timeout=15)     # bounded: before, it went on for good
            assert stopped, f"the consumer went on after its cancel, handling {handled}"
            with pytest.raises(asyncio.CancelledError):
                consuming.result()
            assert cancelled and handled == []
            taken = []
            for _ in ids:
                job = await client.receive("loop", timeout=10)
                assert job is not None and job.attempt == 1
                taken.append(job.id)
                await job.ack(None)
            assert sorted(taken) == sorted(ids)

    run(main)


def test_a_wait_cancelled_as_its_future_resolves_raises_the_cancel():
    """Fault: an AioFuture resolved, and its waiting coroutine cancelled, in
    the same pass of the loop (resolved first). Before, on Python 3.11, the
    wait returned the value: the cancel was lost. The value stays the
    future's (another waiter, or the caller's ``done()``, sees it). A
    wait without a timeout raised the cancel before as now; with one, as
    every request's has, it did not."""
    async def main() -> None:
        future = AioFuture()
        waiting = asyncio.ensure_future(future.wait(30))
        await asyncio.sleep(0)                 # waiting now

        def resolve_then_cancel() -> None:
            future.set({"x": 1})
            waiting.cancel()

        asyncio.get_running_loop().call_soon(resolve_then_cancel)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert future.done() and await future.wait(0) == {"x": 1}
        with pytest.raises(miyaq.Timeout, match="request did not complete within 0.01s"):
            await AioFuture().wait(0.01)

    run(main)


def test_a_cancelled_submit_wait_is_still_sent_and_stored(node):
    """A ``submit(wait=True)`` cancelled while it waits for the node's
    acknowledgement: the cancel is raised, and the submit goes on (as
    documented: cancelling the wait does not cancel the call)."""
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint) as client:
            submitting = asyncio.ensure_future(client.submit("job", [1], queue="kept", id="k" * 32, wait=True))
            await asyncio.sleep(0)
            submitting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await submitting
            status = await status_once_known(client, "k" * 32, "ready")
            assert status.get("state") == "ready", status

    run(main)


def test_flush_waits_for_a_submit_whose_wait_was_cancelled_and_raises_its_failure(make_node, client_for):
    """Fault: a ``submit(wait=True)`` is cancelled while the node is full,
    and the submit then fails at its deadline (busy). flush() waits for it
    like any other submit and raises the failure. Before, flush() did not
    know the submit: it returned at once and the task was lost unsaid.
    The node is filled through a patient client: a stall of the loaded
    machine past 0.5 s failed that setup submit (before 2026-12-08)."""
    n = make_node(max_tasks=1)
    client_for(n.endpoint).submit("job", [0], wait=True)

    async def main() -> None:
        async with miyaq.aio.Client(n.endpoint, submit_timeout=0.5) as client:
            submitting = asyncio.ensure_future(client.submit("job", [1], id="c" * 32, wait=True))
            await asyncio.sleep(0)
            submitting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await submitting
            with pytest.raises(miyaq.Busy, match="full"):
                await client.flush()
            await client.flush()      # told once: the next flush has nothing left to raise

    run(main)
