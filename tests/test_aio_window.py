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
    """A window of ``free`` slots, as the client counts it: a waiter let in
    is counted in (takes a slot); one resolved gives its slot back."""

    def __init__(self) -> None:
        self.free, self.looks, self.counted = 0, 0, []
        self.room = WindowRoom(self.count, self.uncount)

    def fits(self) -> bool:
        self.looks += 1
        return self.free > 0

    def count(self, p: object) -> None:
        self.free -= 1
        self.counted.append(p)

    def uncount(self, p: object) -> None:
        self.free += 1
        self.counted.remove(p)

    def give(self) -> None:
        """A submit resolved: its slot is free."""
        self.free += 1
        self.room.freed()


def never_closed() -> None:
    pass


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_a_freed_slot_lets_in_one_waiter_the_longest_waiting() -> None:
    async def main() -> list[str]:
        slots = Slots()
        woken: list[str] = []

        async def waiter(name: str) -> None:
            assert await slots.room.wait_turn(name, slots.fits, monotonic() + 30, never_closed)  # type: ignore[arg-type]
            woken.append(name)

        tasks = []
        for name in ("a", "b", "c"):
            tasks.append(asyncio.create_task(waiter(name)))
            await settle()
        slots.give()
        await settle()
        assert woken == ["a"] and slots.counted == ["a"]      # one slot, one waiter: the first to wait
        slots.give()
        slots.give()
        await asyncio.gather(*tasks)
        return woken

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_room_for_several_lets_them_all_in_at_once_without_a_look_each() -> None:
    """One acknowledgement that frees room for three waiters lets the three
    in, each counted before the next is looked at, and only the fourth,
    which no longer fits, looks in vain: a look per waiter let in, not one
    per waiter per slot (an event waking them all made a burst of N waiting
    submits cost N² wake-ups)."""
    async def main() -> tuple[list[str], int, int]:
        slots = Slots()
        names = ["a", "b", "c", "d"]
        tasks = [asyncio.create_task(slots.room.wait_turn(n, slots.fits, monotonic() + 30, never_closed))  # type: ignore[arg-type]
                 for n in names]
        await settle()
        looks = slots.looks
        slots.free = 3
        slots.room.freed()
        counted = list(slots.counted)
        more = slots.looks - looks
        await settle()
        done = sum(t.done() for t in tasks)
        slots.give()
        await asyncio.gather(*tasks)
        return counted, more, done

    assert asyncio.run(main()) == (["a", "b", "c"], 4, 3)


def test_a_waiter_that_gives_up_or_is_cancelled_leaves_the_queue_and_the_next_is_let_in() -> None:
    """Fault: the first waiter gives up (its deadline), the next is
    cancelled; the third, which fits, is let in without any slot freed:
    nothing waits behind a waiter that is gone."""
    async def main() -> tuple[list[str], int, list[object]]:
        slots = Slots()
        woken: list[str] = []

        async def waiter(name: str, deadline: float) -> None:
            if await slots.room.wait_turn(name, slots.fits, deadline, never_closed):  # type: ignore[arg-type]
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
        slots.free = 1                         # room, seen only by a look
        cancelled.cancel()
        await asyncio.wait_for(last, 30)
        return woken, len(slots.room.waiting), slots.counted

    assert asyncio.run(main()) == (["soon gave up", "last"], 0, ["last"])


def test_a_waiter_let_in_as_it_is_cancelled_is_counted_out_and_the_next_let_in() -> None:
    """Fault: room is made for the first waiter (let in and counted) and its
    task is cancelled before it runs again. It is cancelled, its count
    taken back, and the slot goes to the next waiter."""
    async def main() -> tuple[bool, list[object], bool]:
        slots = Slots()
        first = asyncio.create_task(slots.room.wait_turn("first", slots.fits, monotonic() + 30, never_closed))  # type: ignore[arg-type]
        second = asyncio.create_task(slots.room.wait_turn("second", slots.fits, monotonic() + 30, never_closed))  # type: ignore[arg-type]
        await settle()
        slots.give()                           # the first is let in ...
        first.cancel()                         # ... and cancelled before it runs
        await asyncio.gather(first, return_exceptions=True)
        admitted = await asyncio.wait_for(second, 30)
        return first.cancelled(), slots.counted, admitted

    assert asyncio.run(main()) == (True, ["second"], True)


def test_waiters_that_gave_up_leave_nothing_behind() -> None:
    """Fault: the node is gone; waiting submits give up again and again
    and no slot is ever freed. Each takes its place out of the queue."""
    async def main() -> int:
        slots = Slots()
        for _ in range(640):
            assert not await slots.room.wait_turn("x", slots.fits, monotonic(), never_closed)  # type: ignore[arg-type]
        return len(slots.room.waiting)

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
