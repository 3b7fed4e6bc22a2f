"""The submit window lets submits in first come, first served
(miyaq.client.window.WindowQueue, miyaq.aio.window.WindowRoom).

Fault (an audit): a submit that found the window full waited, and a later,
smaller one from another thread, greenlet or task that fitted went in ahead
of it. Under a steady stream of small tasks a large one never found room:
the small ones kept the window filled, and it failed with Timeout at its
``submit_timeout``. Now, once a submit waits, every later one queues behind
it, and a waiter whose wait ends otherwise (its Timeout, a killed greenlet,
a cancelled task, KeyboardInterrupt) leaves the queue and wakes the next.

The node is a raw stand-in (:class:`Node`) that reads every SUBMIT and
acknowledges what it read only when the test says so. The window holds
``9 * S`` bytes (``S``: a small task's size); eight small tasks are held,
so a large task (``4 * S``) must wait and one more small task would fit.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import pytest

import miyaq
import miyaq.aio
import miyaq.aio.client
import miyaq.client.client
from miyaq.client.sizes import ENVELOPE
from miyaq.client.wire import pack_args
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from raw_nodes import CountingNode

pytestmark = pytest.mark.timeout(90)

WAIT = 30.0          # the longest any condition is waited for
LONG = 60.0          # submit_timeout of the submits that are to wait as long as the test needs
GIVE_UP = 0.3        # of one that is to give up while the window stays full

SMALL = bytes(1000)
LARGE = bytes(4000)


def task_size(arg: bytes) -> int:
    return len(pack_args([arg])) + ENVELOPE


S = task_size(SMALL)
WINDOW_BYTES = 9 * S
HELD = 8
assert HELD * S + task_size(LARGE) > WINDOW_BYTES >= (HELD + 1) * S     # the large waits; a small would fit
assert task_size(LARGE) + S <= WINDOW_BYTES                            # once those are acknowledged, both fit


class Node(threading.Thread):
    """A node that reads every SUBMIT (ids in :attr:`read`, in the order
    read) and acknowledges what it read when :meth:`ack` is called."""

    def __init__(self) -> None:
        super().__init__(name="fair-window-node", daemon=True)
        self.raw = CountingNode()
        self.endpoint = self.raw.endpoint
        self.read: list[str] = []
        self.problems: list[BaseException] = []
        self._acks = 0               # acknowledgement rounds asked for
        self._done = 0               # and sent
        self._acked = 0              # batches acknowledged
        # Else: acknowledge the oldest tasks read while more are unacknowledged,
        # and all of them once a pump reads nothing new (the client stopped sending).
        self.keep: int | None = None
        self._halt = threading.Event()
        self._ids_acked = 0          # tasks acknowledged one by one (keep)

    def ack(self) -> None:
        """Acknowledge every task read so far (from the node's thread)."""
        self._acks += 1

    def run(self) -> None:
        raw = self.raw
        try:
            while not self._halt.is_set():
                before = len(self.read)
                raw.pump(10)
                self.read = [i for _, ids in raw.batches for i in ids]
                if self.keep is not None:
                    self._keep_unacknowledged(self.keep if len(self.read) > before else 0)
                if self._done < self._acks:
                    self._done = self._acks
                    for peer, ids in raw.batches[self._acked:]:
                        raw.sock.send_multipart([peer, *codec.encode(
                            c.SUBMITTED, {"results": [[i, "accepted", None] for i in ids]})])
                    self._acked = len(raw.batches)
        except BaseException as exc:       # reported by the test
            self.problems.append(exc)

    def _keep_unacknowledged(self, keep: int) -> None:
        """Acknowledge the oldest tasks read, one message each, until ``keep`` are not."""
        raw = self.raw
        while len(self.read) - self._ids_acked > keep:
            peer = next(peer for peer, ids in raw.batches if ids)
            task_id = self.read[self._ids_acked]
            raw.sock.send_multipart([peer, *codec.encode(c.SUBMITTED, {"results": [[task_id, "accepted", None]]})])
            self._ids_acked += 1

    def __enter__(self) -> "Node":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._halt.set()
        self.join(10)
        self.raw.close()


def wait_until(condition: Callable[[], Any], what: str, pause: Callable[[float], Any]) -> None:
    """Look until ``condition()`` holds (each ``pause`` lets the others run);
    fail naming ``what`` after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        pause(0.01)


def spy_window(monkeypatch: Any, module: Any) -> list[tuple[int, str | None]]:
    """Record each look at the window (``blocked_by``) of ``module``'s client: (size, bound)."""
    looks: list[tuple[int, str | None]] = []
    real = module.blocked_by

    def blocked_by(core: Any, window: int, window_bytes: int, size: int) -> str | None:
        bound = real(core, window, window_bytes, size)
        looks.append((size, bound))
        return bound

    monkeypatch.setattr(module, "blocked_by", blocked_by)
    return looks


def spy_admissions(monkeypatch: Any) -> list[str]:
    """Record the ids of the submits counted in the window, in order (the
    order they were let in; two let in at once may then leave in either
    order, each from its own thread)."""
    from miyaq.client.core import ClientCore

    counted: list[str] = []
    real = ClientCore.admitted

    def admitted(self: ClientCore, p: Any) -> None:
        counted.append(p.wire["id"])
        real(self, p)

    monkeypatch.setattr(ClientCore, "admitted", admitted)
    return counted


def large_kept_out(looks: list[tuple[int, str | None]]) -> bool:
    """The large submit looked at the window twice and found it full: it
    waits (the first look is before it queues, the second after)."""
    return sum(1 for size, bound in looks if size == task_size(LARGE) and bound is not None) >= 2


def queued(client: Any) -> int:
    """Submits waiting for room in ``client``'s window."""
    return len(getattr(client._io.room, "waiting", ()))


class Runner:
    """Runs a call beside the test: a thread, or a greenlet for a gevent client."""

    def __init__(self, green: bool) -> None:
        self.green = green
        if green:
            import gevent
            self.pause: Callable[[float], Any] = gevent.sleep
        else:
            self.pause = time.sleep

    def run(self, fn: Callable[[], Any]) -> Any:
        if self.green:
            import gevent
            return gevent.spawn(fn)
        return Call(fn)


class Call(threading.Thread):
    """A call in a thread, its outcome kept (``ready()``, ``value``, ``exception``)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.value: Any = None
        self.exception: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:
            self.exception = exc

    def ready(self) -> bool:
        return not self.is_alive()


def fill(client: Any, node: Node, pause: Callable[[float], Any]) -> list[str]:
    """Hold HELD small tasks in ``client``'s window (read by the node, unacknowledged)."""
    ids = [client.submit("echo", [SMALL]).id for _ in range(HELD)]
    wait_until(lambda: len(node.read) >= HELD, "the node to read the small tasks", pause)
    return ids


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_a_small_submit_made_while_a_large_one_waits_goes_in_after_it(client_for, monkeypatch, green):
    """Fault: a large submit waits for room; another thread (greenlet)
    submits a small task that would fit. Before, the small one went in at
    once, ahead of the large one -- the step that, repeated by a stream of
    small tasks, starved the large one until its Timeout. Now it queues
    behind the large one: once the window frees, the large one is let in
    first, then the small one, and the node reads both."""
    looks = spy_window(monkeypatch, miyaq.client.client)
    counted = spy_admissions(monkeypatch)
    runner = Runner(green)
    with Node() as node:
        client = client_for(node.endpoint, window_bytes=WINDOW_BYTES, submit_timeout=LONG, green=green)
        fill(client, node, runner.pause)
        large = runner.run(lambda: client.submit("echo", [LARGE], id="large"))
        wait_until(lambda: large_kept_out(looks), "the large submit to wait", runner.pause)
        small = runner.run(lambda: client.submit("echo", [SMALL], id="small"))
        wait_until(lambda: small.ready() or queued(client) == 2, "the small submit to go in or queue",
                   runner.pause)
        assert not small.ready(), "the small submit went in ahead of the large one waiting"
        node.ack()
        wait_until(lambda: {"large", "small"} <= set(node.read), "the node to read both", runner.pause)
        assert counted.index("large") < counted.index("small"), counted
        wait_until(lambda: large.ready() and small.ready(), "both submits to return", runner.pause)
        assert queued(client) == 0
        assert not node.problems, node.problems


def test_a_small_submit_made_while_a_large_one_waits_goes_in_after_it_asyncio(monkeypatch):
    """The same fault for ``miyaq.aio.Client``: a task submitting a small
    task while another task's large submit waits went in ahead of it."""
    looks = spy_window(monkeypatch, miyaq.aio.client)
    counted = spy_admissions(monkeypatch)

    async def main(node: Node) -> tuple[bool, list[str], int]:
        async with miyaq.aio.Client(node.endpoint, window_bytes=WINDOW_BYTES, submit_timeout=LONG) as client:
            large, small, ahead = await large_then_small(client, node, looks)
            node.ack()
            await until(lambda: {"large", "small"} <= set(node.read), "the node to read both")
            await asyncio.wait_for(asyncio.gather(large, small), WAIT)
            left = queued(client)
            await client.close(flush=False)
        return ahead, node.read, left

    with Node() as node:
        ahead, _, left = asyncio.run(main(node))
        assert not node.problems, node.problems
    assert not ahead, "the small submit went in ahead of the large one waiting"
    assert counted.index("large") < counted.index("small"), counted
    assert left == 0


async def until(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_a_waiter_that_times_out_leaves_the_queue_and_the_next_goes_in(client_for, monkeypatch, green):
    """Fault: the first submit waiting for room gives up (its
    ``submit_timeout``) while the window stays full; a small one queued
    behind it fits. It must not wait behind a waiter that is gone: it goes
    in as soon as the first gives up, no acknowledgement needed."""
    looks = spy_window(monkeypatch, miyaq.client.client)
    runner = Runner(green)
    with Node() as node:
        client = client_for(node.endpoint, window_bytes=WINDOW_BYTES, submit_timeout=LONG, green=green)
        fill(client, node, runner.pause)
        client.submit_timeout = GIVE_UP
        large = runner.run(lambda: client.submit("echo", [LARGE], id="large"))
        wait_until(lambda: large_kept_out(looks), "the large submit to wait", runner.pause)
        client.submit_timeout = LONG
        small = runner.run(lambda: client.submit("echo", [SMALL], id="small"))
        wait_until(lambda: small.ready() or queued(client) == 2, "the small submit to go in or queue",
                   runner.pause)
        assert not small.ready(), "the small submit went in ahead of the large one waiting"
        wait_until(lambda: "small" in node.read, "the node to read the small task", runner.pause)
        wait_until(lambda: large.ready() and small.ready(), "both submits to return", runner.pause)
        error = large.exception
        assert isinstance(error, miyaq.Timeout) and "window_bytes" in str(error), error
        assert "large" not in node.read and queued(client) == 0
        assert not node.problems, node.problems


def test_a_killed_waiting_greenlet_leaves_the_queue_and_the_next_goes_in(client_for, monkeypatch):
    """Fault: the greenlet of the first waiting submit is killed (a
    gevent.Timeout around it, a supervisor stopping it). The small submit
    queued behind it goes in at once; nothing waits on the dead one."""
    import gevent

    looks = spy_window(monkeypatch, miyaq.client.client)
    with Node() as node:
        client = client_for(node.endpoint, window_bytes=WINDOW_BYTES, submit_timeout=LONG, green=True)
        fill(client, node, gevent.sleep)
        large = gevent.spawn(lambda: client.submit("echo", [LARGE], id="large"))
        wait_until(lambda: large_kept_out(looks), "the large submit to wait", gevent.sleep)
        small = gevent.spawn(lambda: client.submit("echo", [SMALL], id="small"))
        wait_until(lambda: small.ready() or queued(client) == 2, "the small submit to go in or queue", gevent.sleep)
        assert not small.ready(), "the small submit went in ahead of the large one waiting"
        large.kill()
        wait_until(lambda: "small" in node.read, "the node to read the small task", gevent.sleep)
        assert small.successful() and queued(client) == 0 and "large" not in node.read
        assert not node.problems, node.problems


def test_a_ctrl_c_in_a_waiting_submit_leaves_the_queue_and_the_next_goes_in(client_for, monkeypatch):
    """Fault: Ctrl-C lands in a thread's submit while it waits for room
    (the KeyboardInterrupt raised by its wait). The interrupted submit
    leaves the queue; the small one behind it goes in at once."""
    looks = spy_window(monkeypatch, miyaq.client.client)
    with Node() as node:
        client = client_for(node.endpoint, window_bytes=WINDOW_BYTES, submit_timeout=LONG)
        fill(client, node, time.sleep)
        interrupt = threading.Event()

        class Interruptible(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                woken = super().wait(timeout)
                if interrupt.is_set() and threading.current_thread() is large:
                    raise KeyboardInterrupt
                return woken

        room = client._io.room            # a WindowQueue: its waiters' events are Interruptible
        monkeypatch.setattr(room, "_event", Interruptible, raising=False)
        large = Call(lambda: client.submit("echo", [LARGE], id="large"))
        wait_until(lambda: large_kept_out(looks), "the large submit to wait", time.sleep)
        small = Call(lambda: client.submit("echo", [SMALL], id="small"))
        wait_until(lambda: small.ready() or queued(client) == 2, "the small submit to go in or queue", time.sleep)
        assert not small.ready(), "the small submit went in ahead of the large one waiting"
        interrupt.set()
        room.waiting[0].wake.set()       # its wait ends now, with the interrupt
        wait_until(lambda: "small" in node.read, "the node to read the small task", time.sleep)
        wait_until(large.ready, "the large submit to end", time.sleep)
        assert isinstance(large.exception, KeyboardInterrupt), large.exception
        assert small.exception is None and queued(client) == 0 and "large" not in node.read
        assert not node.problems, node.problems


def test_a_cancelled_waiting_task_leaves_the_queue_and_the_next_goes_in(monkeypatch):
    """Fault: the asyncio task of the first waiting submit is cancelled
    (an ``asyncio.wait_for`` around it, a server shutting a request down).
    The small submit queued behind it goes in at once."""
    looks = spy_window(monkeypatch, miyaq.aio.client)

    async def main(node: Node) -> tuple[bool, bool, bool, int]:
        async with miyaq.aio.Client(node.endpoint, window_bytes=WINDOW_BYTES, submit_timeout=LONG) as client:
            large, small, ahead = await large_then_small(client, node, looks)
            large.cancel()
            await until(lambda: "small" in node.read, "the node to read the small task")
            await asyncio.wait_for(small, WAIT)
            left = queued(client)
            await client.close(flush=False)
        return ahead, large.cancelled(), "large" in node.read, left

    with Node() as node:
        ahead, cancelled, large_read, left = asyncio.run(main(node))
        assert not node.problems, node.problems
    assert not ahead, "the small submit went in ahead of the large one waiting"
    assert cancelled and not large_read and left == 0


def test_a_waiting_task_cancelled_as_room_is_made_is_cancelled_and_submits_nothing():
    """Fault: a task's submit waits for room; room is made (a slot freed,
    the waiter woken) and the task is cancelled before it runs again.
    ``asyncio.wait_for`` of Python 3.11, which the wait used, then returns
    the woken future's result and swallows the cancellation: the cancelled
    submit went in all the same and returned a handle. Now it is cancelled
    and sends nothing; its place goes to the next."""
    async def main(node: Node) -> tuple[bool, int, int]:
        async with miyaq.aio.Client(node.endpoint, window=1, submit_timeout=LONG) as client:
            await client.submit("echo", [1])
            await until(lambda: len(node.read) == 1, "the node to read the first task")
            waiting = asyncio.create_task(client.submit("echo", [2], id="cancelled"))
            await until(lambda: queued(client) == 1, "the second submit to wait")
            core = client._io.core
            core.submits.resolved += 1          # the first's slot is free (as its acknowledgement does) ...
            client._io.room.freed()             # ... and the waiter woken ...
            waiting.cancel()                    # ... and cancelled before it runs again
            await asyncio.gather(waiting, return_exceptions=True)
            in_flight, left = core.in_flight, queued(client)
            await client.close(flush=False)
        return waiting.cancelled(), in_flight, left

    with Node() as node:
        cancelled, in_flight, left = asyncio.run(main(node))
        assert not node.problems, node.problems
    assert cancelled, "the cancelled submit went in all the same"
    assert (in_flight, left) == (0, 0)


def test_a_large_submit_is_not_starved_by_a_stream_of_small_ones_from_another_thread(client_for, monkeypatch):
    """Fault (the audit's): one thread streams small tasks, as fast as the
    window lets it, to a node that keeps six of them unacknowledged while
    they come (it acknowledges the oldest as it reads new ones, and all
    once none comes); another thread submits a large task, which fits only
    when at most five small ones are held. Before, the small submits kept
    going in ahead of it, each into the room just freed: the large one
    waited until the stream ended (here 2,000 submits; an endless stream:
    its Timeout). Now no small submit begun after the large one queued
    gets in before it: the stream stops behind it, the node acknowledges
    what it holds, and the large one goes in."""
    log: list[tuple[str, int]] = []
    looks = 0
    real = miyaq.client.client.blocked_by

    def blocked_by(core: Any, window: int, window_bytes: int, size: int) -> str | None:
        nonlocal looks
        bound = real(core, window, window_bytes, size)
        if size == task_size(LARGE):
            looks += 1
            if bound is None:
                log.append(("large in", 0))
            elif looks == 2:
                log.append(("large queued", 0))     # the second look is in the queue
        return bound

    monkeypatch.setattr(miyaq.client.client, "blocked_by", blocked_by)
    with Node() as node:
        node.keep = 6
        client = client_for(node.endpoint, window_bytes=WINDOW_BYTES, submit_timeout=LONG)
        large: list[Call] = []

        def stream() -> int:
            for i in range(2000):
                if i == 100:
                    large.append(Call(lambda: client.submit("echo", [LARGE], id="large")))
                if large and large[0].ready():
                    return i
                log.append(("start", i))
                client.submit("echo", [SMALL])
                log.append(("end", i))
            return 2000

        producer = Call(stream)
        wait_until(lambda: producer.ready(), "the stream to end", time.sleep)
        wait_until(lambda: large and large[0].ready(), "the large submit to return", time.sleep)
        assert producer.exception is None and large[0].exception is None, (producer.exception, large[0].exception)
        events = [event for event, _ in log]
        assert "large queued" in events, "the large submit never waited: the test shows nothing"
        queued_at, let_in_at = events.index("large queued"), events.index("large in")
        started_after = {i for event, i in log[queued_at:] if event == "start"}
        ahead = [i for event, i in log[queued_at:let_in_at] if event == "end" and i in started_after]
        assert not ahead, f"{len(ahead)} small submits begun after the large one queued went in before it"
        assert not node.problems, node.problems


def test_a_waiter_let_in_as_ctrl_c_lands_is_counted_out_and_the_next_let_in():
    """Fault: the window's queue lets a waiting submit in -- counted in the
    window for it -- and Ctrl-C lands in that thread before it runs on.
    The submit goes nowhere: it is counted out again (its slot would be
    held for good otherwise), and the slot goes to the next waiter."""
    from miyaq.client.window import WindowQueue

    free = [0]
    counted: list[str] = []

    def count(p: Any) -> None:
        free[0] -= 1
        counted.append(p)

    def uncount(p: Any) -> None:
        free[0] += 1
        counted.remove(p)

    class Interrupted(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            if super().wait(timeout):
                raise KeyboardInterrupt          # lands just after it was let in
            return False

    room = WindowQueue(Interrupted, threading.Lock(), count, uncount)
    fits = lambda: free[0] > 0     # noqa: E731
    first = Call(lambda: room.wait_turn("first", fits, time.monotonic() + LONG))    # type: ignore[arg-type]
    wait_until(lambda: len(room.waiting) == 1, "the first to wait", time.sleep)
    room._event = threading.Event               # the second's wait is not interrupted
    second = Call(lambda: room.wait_turn("second", fits, time.monotonic() + LONG))  # type: ignore[arg-type]
    wait_until(lambda: len(room.waiting) == 2, "the second to wait", time.sleep)
    free[0] = 1
    room.freed()                                # lets the first in; Ctrl-C lands there
    wait_until(lambda: first.ready() and second.ready(), "both waits to end", time.sleep)
    assert isinstance(first.exception, KeyboardInterrupt), first.exception
    assert second.value is True and counted == ["second"] and free[0] == 0 and not room.waiting


async def large_then_small(client: Any, node: Node, looks: Any) -> tuple[Any, Any, bool]:
    """With HELD small tasks read and unacknowledged by ``node``, an
    asyncio task submitting a large one that waits for room, then one
    submitting a small one: the two tasks, and whether the small one went
    in at once (ahead of the large)."""
    for _ in range(HELD):
        await client.submit("echo", [SMALL])
    await until(lambda: len(node.read) >= HELD, "the node to read the small tasks")
    large = asyncio.create_task(client.submit("echo", [LARGE], id="large"))
    await until(lambda: large_kept_out(looks), "the large submit to wait")
    small = asyncio.create_task(client.submit("echo", [SMALL], id="small"))
    await until(lambda: small.done() or queued(client) == 2, "the small submit to go in or queue")
    return large, small, small.done()


def test_ctrl_c_landing_as_a_waiter_is_counted_in_by_another_thread_loses_no_waiter():
    """Fault (review35): the thread that makes room lets the waiters in
    (the short path's caller reading answers, the main thread): it took a
    waiter out of the queue, then counted it in, taking the count's lock --
    where Ctrl-C lands in a thread waiting for that lock. The waiter, out of
    the queue and never let in, was lost: no later room let it in, it waited
    its whole deadline although the window had room, and then raised
    ValueError (``deque.remove``) instead of going in or a Timeout. Now a
    waiter is counted in before it leaves the queue: interrupted there, it
    is still first, and the next room lets it in."""
    from miyaq.client.window import WindowQueue

    free = [0]
    counted: list[str] = []
    interrupt = [True]

    def count(p: Any) -> None:
        if interrupt[0] and threading.current_thread() is threading.main_thread():
            interrupt[0] = False
            raise KeyboardInterrupt        # Ctrl-C as the count's lock is taken
        free[0] -= 1
        counted.append(p)

    room = WindowQueue(threading.Event, threading.Lock(), count, lambda p: None)
    fits = lambda: free[0] > 0     # noqa: E731
    first = Call(lambda: room.wait_turn("first", fits, time.monotonic() + 10.0))    # type: ignore[arg-type]
    wait_until(lambda: len(room.waiting) == 1, "the first to wait", time.sleep)
    free[0] = 1
    with pytest.raises(KeyboardInterrupt):
        room.freed()                    # room made; Ctrl-C lands as the waiter is counted in
    assert counted == []
    room.freed()                        # the next room made (an answer read) lets it in
    wait_until(first.ready, "the first's wait to end", time.sleep)
    assert first.exception is None and first.value is True, first.exception
    assert counted == ["first"] and free[0] == 0 and not room.waiting


def test_a_waiter_interrupted_as_it_first_looks_for_room_leaves_no_turn_behind():
    """Fault (review35): Ctrl-C landing in a submit's own first look for
    room, as it counts itself in (the count's lock): its turn must not stay
    queued (the next room would count in a submit nobody hands over: the
    window shrinks for good), nor anything be counted."""
    from miyaq.client.window import WindowQueue

    free = [1]
    counted: list[str] = []
    interrupt = [True]

    def count(p: Any) -> None:
        if interrupt[0]:
            interrupt[0] = False
            raise KeyboardInterrupt
        free[0] -= 1
        counted.append(p)

    room = WindowQueue(threading.Event, threading.Lock(), count, lambda p: None)
    with pytest.raises(KeyboardInterrupt):
        room.wait_turn("first", lambda: free[0] > 0, time.monotonic() + 10.0)     # type: ignore[arg-type]
    assert not room.waiting and counted == [] and free[0] == 1
    assert room.wait_turn("second", lambda: free[0] > 0, time.monotonic() + 10.0) is True  # type: ignore[arg-type]
    assert counted == ["second"]


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_a_submit_interrupted_after_it_was_let_in_gives_its_room_back(client_for, monkeypatch, green):
    """Fault: Ctrl-C (or a gevent kill) lands in a submit just after the
    window's queue let it in, while it is kept for flush() (the set's lock
    held by another thread). Its room is counted out again: once the node
    acknowledged the rest, nothing is in flight. Before, the room stayed
    taken for the client's life."""
    looks = spy_window(monkeypatch, miyaq.client.client)
    runner = Runner(green)
    with Node() as node:
        client = client_for(node.endpoint, window_bytes=WINDOW_BYTES, submit_timeout=LONG, green=green)
        fill(client, node, runner.pause)
        from miyaq.client.handle import Unflushed
        real_add = Unflushed.add

        def add(self: Unflushed, handle: Any) -> None:
            if handle.id == "large":
                raise KeyboardInterrupt
            real_add(self, handle)

        monkeypatch.setattr(Unflushed, "add", add)
        outcome: list[BaseException] = []

        def submit_large() -> None:
            try:
                client.submit("echo", [LARGE], id="large")
            except BaseException as exc:
                outcome.append(exc)

        large = runner.run(submit_large)
        wait_until(lambda: large_kept_out(looks), "the large submit to wait", runner.pause)
        node.ack()
        wait_until(lambda: outcome, "the large submit to end", runner.pause)
        assert isinstance(outcome[0], KeyboardInterrupt), outcome
        core = client._io.core
        wait_until(lambda: core.submits.resolved == HELD, "the small tasks acknowledged", runner.pause)
        assert (core.submitted - core.submits.resolved, core.submitted_bytes - core.submits.resolved_bytes) == (0, 0)
        assert "large" not in node.read and not node.problems, node.problems
        if not green:
            large.join(WAIT)
