"""The descriptor waiter's timer and wake-ups (:class:`miyaq.runtime.green.FdWait`):
a reader whose waits all end at its next heartbeat arms one timer for them,
not one a wait; no wait ends later than its timeout; a wake meant for one
wait never ends the next one."""
from __future__ import annotations

import os
import time
from typing import Any

import gevent
import gevent.event
import pytest

from miyaq.runtime import Supervisor, green


class CountingLoop:
    """The hub's loop, counting the timers made through it."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self.timers = 0

    def timer(self, *args: Any, **kwargs: Any) -> Any:
        self.timers += 1
        return self._loop.timer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_waits_toward_one_end_arm_one_timer_not_one_each(pipe):
    """Fault simulated: a worker link's reader, woken by one message after
    another, each wait bounded by the same next heartbeat. Before, every
    wait made, started and closed a timer of its own (about 3,000
    instructions of a lone message's wake-up); the waits toward one end keep
    the first wait's timer."""
    r, w = pipe
    waiter = green.FdWait(r)
    loop = waiter._loop = CountingLoop(waiter._loop)
    end = time.monotonic() + 5.0
    try:
        for _ in range(50):
            os.write(w, b"x")
            assert waiter.wait(end - time.monotonic()) is True
            os.read(r, 1)
        assert loop.timers == 1
    finally:
        waiter.close()


def test_a_kept_timer_never_makes_a_wait_late(pipe):
    """Fault simulated: a timer kept from a wait with a later end. A wait
    with an earlier end arms its own, and every timed wait returns False by
    its end (a guard of seconds, not a timing assertion: the kept timer
    would end it 5 s late)."""
    r, _w = pipe
    waiter = green.FdWait(r)
    try:
        sup = Supervisor("test")
        sup.spawn("waker", waiter.wake)
        assert waiter.wait(5.0) is True           # armed for 5 s, woken at once
        start = time.monotonic()
        assert waiter.wait(0.05) is False
        assert time.monotonic() - start < 2.5
        assert waiter.wait(0.0) is False
    finally:
        waiter.close()


def test_an_early_timer_is_followed_by_a_wait_to_the_end(pipe):
    """The kept timer fires a little before the end of the waits that kept
    it (never after); a caller that waits again for what is left still
    waits to its end."""
    r, _w = pipe
    waiter = green.FdWait(r)
    try:
        end = time.monotonic() + 0.05
        wakes = 0
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            assert waiter.wait(left) is False
            wakes += 1
            assert wakes < 100
        assert time.monotonic() >= end
    finally:
        waiter.close()


def test_a_wake_meant_for_a_wait_that_ended_does_not_end_the_next(pipe):
    """Fault simulated: wake() is called while the reader waits (a send on
    its socket found a message), and in the same loop iteration its
    descriptor's watcher fires, so the reader resumes for its data before
    the wake's callback runs. That callback must not end the reader's next
    wait (a spurious wake-up, its timeout not held): the next wait times
    out. The wake comes from a second descriptor's watcher that fires in
    the same iteration, just before the reader's."""
    r, w = pipe
    r2, w2 = os.pipe()
    waiter = green.FdWait(r)
    resumed = []
    other = gevent.get_hub().loop.io(r2, 1)

    def wake_unless_resumed() -> None:
        other.stop()
        if not resumed:
            waiter.wake()

    try:
        other.start(wake_unless_resumed)
        sup = Supervisor("test")
        sup.spawn("writer", lambda: (os.write(w2, b"x"), os.write(w, b"x")))
        assert waiter.wait(5.0) is True
        resumed.append(True)
        os.read(r, 1)
        assert waiter.wait(0.05) is False
    finally:
        other.close()
        waiter.close()
        os.close(r2)
        os.close(w2)


def test_the_timer_of_a_wait_does_not_end_an_untimed_one(pipe):
    """A timer kept from a timed wait fires during an untimed one: that
    wait goes on until its descriptor is readable."""
    r, w = pipe
    waiter = green.FdWait(r)
    try:
        sup = Supervisor("test")
        sup.spawn("waker", waiter.wake)
        assert waiter.wait(0.02) is True         # its timer (armed) outlives it
        sup.spawn("late writer", lambda: (green.sleep(0.1), os.write(w, b"x")))
        assert waiter.wait() is True
        assert os.read(r, 1) == b"x"
    finally:
        waiter.close()


def test_a_second_greenlet_cannot_wait_on_the_same_descriptor(pipe):
    r, _w = pipe
    waiter = green.FdWait(r)
    try:
        sup = Supervisor("test")
        errors: list[BaseException] = []

        def second() -> None:
            try:
                waiter.wait(0.01)
            except RuntimeError as exc:
                errors.append(exc)
            waiter.wake()

        sup.spawn("second", second)
        assert waiter.wait(5.0) is True
        assert len(errors) == 1
    finally:
        waiter.close()



def _make_the_loop_clock_stale() -> None:
    """The process runs a second without yielding to the hub: the loop's
    clock (read at its last iteration) is at least that stale. Resumed
    first by a timer, not a hub callback (gevent updates the clock itself
    for a timer started while its callbacks run: gevent.sleep(0) resumes
    from one)."""
    gevent.sleep(0.01)
    time.sleep(1.0)
    assert time.time() - gevent.get_hub().loop.now() >= 0.9


def test_a_stale_loop_clock_does_not_end_a_wait_at_once(pipe):
    """Fault simulated: the process ran longer than a wait's timeout without
    yielding to the hub (a test before, a long computation), so the loop's
    clock was stale and the wait's timer, counted from it, was already due:
    the wait ended at once, and, beside a descriptor just made readable, it
    could end with False, the timer's callback run first (the flaky failure
    of the test above in CI). A bound, not a timing assertion: the timer
    may fire up to a millisecond early, never 0.1 s."""
    r, _w = pipe
    waiter = green.FdWait(r)
    try:
        _make_the_loop_clock_stale()
        start = time.monotonic()
        assert waiter.wait(0.8) is False
        assert time.monotonic() - start >= 0.7
    finally:
        waiter.close()


def test_a_stale_loop_clock_does_not_end_a_descriptor_set_wait_at_once(pipe):
    """Fault simulated: as above, for a set of descriptors (a node's poller)."""
    r, _w = pipe
    waiters = green.FdSet()
    waiters.add("pipe", r)
    try:
        _make_the_loop_clock_stale()
        start = time.monotonic()
        assert waiters.wait(0.8) is False
        assert time.monotonic() - start >= 0.7
    finally:
        waiters.discard("pipe")


def test_a_stale_loop_clock_does_not_make_call_later_call_at_once():
    """Fault simulated: a stale loop clock made ``call_later`` count from
    the past, so a call meant for 0.8 s later ran at the loop's next
    iteration."""
    called = gevent.event.Event()
    _make_the_loop_clock_stale()
    start = time.monotonic()
    timer = green.call_later(0.8, called.set)
    try:
        assert called.wait(10.0) is True
        assert time.monotonic() - start >= 0.7
    finally:
        timer.close()
