"""The asyncio client's submit window: who is woken when a slot frees
(miyaq.aio.window). An event that woke every waiting submit on each
acknowledgement made N waiting submits cost N² wake-ups (window 50: 4,000
concurrent submits took 4.5 s; 0.23 s with one wake-up per slot)."""
from __future__ import annotations

import asyncio

import pytest

import miyaq.aio
from miyaq.runtime.clock import monotonic
from miyaq.aio.window import WindowRoom

pytestmark = pytest.mark.timeout(60)


class Slots:
    """A window of ``n`` free slots, as the client counts it: a waiter let in
    takes one and, counted in, wakes the next (the driver's ``submit``)."""

    def __init__(self, room: WindowRoom, n: int = 0) -> None:
        self.room, self.free, self.looks = room, n, 0

    def fits(self) -> bool:
        self.looks += 1
        return self.free > 0

    def take(self) -> None:
        self.free -= 1
        self.room.freed()

    def give(self) -> None:
        self.free += 1
        self.room.freed()


def never_closed() -> None:
    pass


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_a_freed_slot_lets_in_one_waiter_the_longest_waiting() -> None:
    async def main() -> list[str]:
        room = WindowRoom()
        slots = Slots(room)
        woken: list[str] = []

        async def waiter(name: str) -> None:
            assert await room.wait_turn(slots.fits, monotonic() + 30, never_closed)
            slots.take()
            woken.append(name)

        tasks = []
        for name in ("a", "b", "c"):
            tasks.append(asyncio.create_task(waiter(name)))
            await settle()
        slots.give()
        await settle()
        assert woken == ["a"]                  # one slot, one waiter: the first to wait
        slots.give()
        slots.give()
        await asyncio.gather(*tasks)
        return woken

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_only_the_first_waiter_looks_at_the_window() -> None:
    """A freed slot wakes one waiter, not every one: a full window with N
    waiting submits costs a look per slot, not N (an event waking them all
    made a burst of N waiting submits cost N² wake-ups)."""
    async def main() -> int:
        room = WindowRoom()
        slots = Slots(room)
        tasks = []
        for _ in range(50):
            tasks.append(asyncio.create_task(room.wait_turn(slots.fits, monotonic() + 30, never_closed)))
        await settle()
        looks = slots.looks
        for _ in range(5):
            room.freed()                       # room made, and not enough: only the first looks again
            await settle()
        more = slots.looks - looks
        room.wake_all()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return more

    assert asyncio.run(main()) == 5


def test_a_waiter_that_gives_up_or_is_cancelled_leaves_the_queue_and_the_next_looks() -> None:
    """Fault: the first waiter gives up (its deadline), the next is
    cancelled; the third, which fits, is let in without any slot freed:
    nothing waits behind a waiter that is gone."""
    async def main() -> tuple[list[str], int]:
        room = WindowRoom()
        slots = Slots(room)
        woken: list[str] = []

        async def waiter(name: str, deadline: float) -> None:
            if await room.wait_turn(slots.fits, deadline, never_closed):
                slots.take()
                woken.append(name)
            else:
                woken.append(f"{name} gave up")

        soon = asyncio.create_task(waiter("soon", monotonic() + 0.05))
        await settle()
        cancelled = asyncio.create_task(waiter("cancelled", monotonic() + 30))
        await settle()
        last = asyncio.create_task(waiter("last", monotonic() + 30))
        await settle()
        await soon                             # gave up: the window stayed full
        slots.free = 1                         # room, seen only by a look: the first waiter's
        cancelled.cancel()
        await asyncio.wait_for(last, 30)
        return woken, len(room.waiting)

    assert asyncio.run(main()) == (["soon gave up", "last"], 0)


def test_waiters_that_gave_up_leave_nothing_behind() -> None:
    """Fault: the node is gone; waiting submits give up again and again
    and no slot is ever freed. Each takes its place out of the queue."""
    async def main() -> int:
        room = WindowRoom()
        for _ in range(640):
            assert not await room.wait_turn(lambda: False, monotonic(), never_closed)
        return len(room.waiting)

    assert asyncio.run(main()) == 0


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
