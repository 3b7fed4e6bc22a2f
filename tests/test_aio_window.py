"""The asyncio client's submit window: who is woken when a slot frees
(miyaq.aio.window). An event that woke every waiting submit on each
acknowledgement made N waiting submits cost N² wake-ups (window 50: 4,000
concurrent submits took 4.5 s; 0.23 s with one wake-up per slot)."""
from __future__ import annotations

import asyncio

import pytest

import miyaq.aio
from miyaq.aio import window
from miyaq.aio.window import WindowRoom

pytestmark = pytest.mark.timeout(60)


def test_a_freed_slot_wakes_one_waiter_the_longest_waiting() -> None:
    async def main() -> list[str]:
        room = WindowRoom()
        woken: list[str] = []

        async def waiter(name: str) -> None:
            assert await room.wait(30)
            woken.append(name)

        tasks = [asyncio.create_task(waiter(n)) for n in ("a", "b", "c")]
        await asyncio.sleep(0)
        room.freed()
        for _ in range(5):
            await asyncio.sleep(0)
        assert woken == ["a"]                  # one slot, one waiter: the first to wait
        room.freed()
        room.freed()
        await asyncio.gather(*tasks)
        return woken

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_a_waiter_woken_again_goes_first_and_one_that_gave_up_is_skipped() -> None:
    async def main() -> list[str]:
        room = WindowRoom()
        woken: list[str] = []
        assert not await room.wait(0.01)       # gave up: its place is skipped, not woken

        async def waiter(name: str, first: bool) -> None:
            assert await room.wait(30, first=first)
            woken.append(name)

        late = asyncio.create_task(waiter("late", False))
        await asyncio.sleep(0)
        again = asyncio.create_task(waiter("again", True))
        await asyncio.sleep(0)
        room.freed()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        room.freed()
        await asyncio.gather(late, again)
        return woken

    assert asyncio.run(main()) == ["again", "late"]


def test_waiters_that_gave_up_do_not_pile_up() -> None:
    """Fault: the node is gone; waiting submits give up again and again
    (each second, until their deadline) and no slot is ever freed. Their
    places are dropped once they are most of the queue."""
    async def main() -> int:
        room = WindowRoom()
        for _ in range(10 * window.PRUNE_AT):
            assert not await room.wait(0)
        return len(room._waiting)

    assert asyncio.run(main()) <= window.PRUNE_AT + 1


def test_closing_wakes_every_waiter_and_each_finds_the_client_closed() -> None:
    """Fault: a client with a full window is closed while submits wait for
    room. Each fails at once with the client's "closed" error."""
    async def main() -> list[str]:
        client = miyaq.aio.Client("tcp://127.0.0.1:1", window=1, submit_timeout=30)
        first = await client.submit("x")          # takes the only slot: no node answers it
        assert not first.accepted
        waiting = [asyncio.create_task(client.submit("x")) for _ in range(5)]
        await asyncio.sleep(0.05)
        await client.close(flush=False)
        results = await asyncio.gather(*waiting, return_exceptions=True)
        return [str(r) for r in results]

    errors = asyncio.run(main())
    assert len(errors) == 5 and all("closed" in e for e in errors), errors


def test_many_concurrent_submits_through_a_small_window_are_all_accepted(node) -> None:
    async def main() -> int:
        async with miyaq.aio.Client(node.endpoint, window=8) as client:
            handles = await asyncio.gather(*[client.submit("echo", [i]) for i in range(400)])
            await client.flush(30)
            return sum(h.accepted for h in handles)

    assert asyncio.run(main()) == 400
