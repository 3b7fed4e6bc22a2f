"""A single waiter's event (:class:`miyaq.runtime.green.Wakeup`): what a
worker's idle runner waits on. A set while its greenlet waits runs it when
the setter parks in a descriptor's wait (a socket's reader), with no hub
callback run; else from one hub callback, in the order of the sets."""
from __future__ import annotations

import os
from typing import Any

import pytest

from miyaq.runtime import Supervisor, green


class CountingLoop:
    """The hub's loop, counting the callbacks asked of it that ran."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self.ran = 0

    def run_callback(self, fn: Any, *args: Any) -> Any:
        def counted() -> None:
            self.ran += 1
            fn(*args)
        return self._loop.run_callback(counted)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


@pytest.fixture
def counted():
    ready = green.Wakeup()._ready       # this hub's: every wakeup of the hub shares it
    loop = ready._loop
    ready._loop = counting = CountingLoop(loop)
    yield counting
    ready._loop = loop


def test_a_set_wakeup_is_not_waited_for_until_cleared():
    wakeup = green.Wakeup()
    wakeup.set()
    wakeup.wait()
    assert wakeup.is_set()
    wakeup.clear()
    assert not wakeup.is_set()
    sup = Supervisor("test")
    sup.spawn("setter", wakeup.set)
    wakeup.wait()
    assert wakeup.is_set()


def test_a_reader_that_parks_runs_the_greenlet_it_woke_without_a_hub_callback(counted):
    """Fault simulated: a worker link's reader reads a message, wakes an
    idle runner and parks on its socket's descriptor. With gevent's Event
    the runner ran from a hub callback once the reader parked (about 7,000
    instructions a task); the reader switches to it as it parks, and no
    callback of the wakeup's runs."""
    r, w = os.pipe()
    fd = green.FdWait(r)
    runs: list[int] = []
    wakeup = green.Wakeup()

    def runner() -> None:
        for i in range(20):
            wakeup.wait()
            wakeup.clear()
            runs.append(i)
            os.write(w, b"x")          # the next message for the reader

    sup = Supervisor("test")
    try:
        sup.spawn("runner", runner)
        green.sleep(0)                  # the runner waits
        os.write(w, b"x")
        for _ in range(20):
            assert fd.wait(5.0) is True
            os.read(r, 1)
            wakeup.set()
        assert fd.wait(5.0) is True     # the runner's last write
        assert runs == list(range(20))
        assert counted.ran == 0
    finally:
        fd.close()
        os.close(r)
        os.close(w)


def test_wakeups_set_by_a_greenlet_that_sleeps_run_from_the_hub_in_order(counted):
    order: list[str] = []
    sup = Supervisor("test")
    first, second = green.Wakeup(), green.Wakeup()

    def waiter(name: str, wakeup: Any) -> None:
        wakeup.wait()
        order.append(name)

    sup.spawn("first", waiter, "first", first)
    sup.spawn("second", waiter, "second", second)
    green.sleep(0)
    second.set()
    first.set()
    green.sleep(0.01)
    assert order == ["second", "first"]
    assert counted.ran == 1


def test_a_killed_waiter_is_not_switched_into_by_the_set_before_its_death():
    """Fault simulated: a runner waits, is set, and is killed before the hub
    runs it (a worker stopping). The pending hand-off must not switch into
    the dead greenlet, nor into a greenlet now waiting on something else."""
    sup = Supervisor("test")
    wakeup = green.Wakeup()
    gone = sup.spawn("doomed", wakeup.wait)
    green.sleep(0)
    wakeup.set()
    gone.kill(block=True)
    green.sleep(0.01)
    assert gone.dead


def test_a_hand_off_that_finds_the_flag_cleared_waits_again():
    """A set, a clear and a set again while the greenlet waits leave two
    hand-offs: the second finds it waiting anew and must not end that wait."""
    sup = Supervisor("test")
    wakeup = green.Wakeup()
    woken: list[int] = []

    def waiter() -> None:
        for i in range(2):
            wakeup.wait()
            wakeup.clear()
            woken.append(i)

    sup.spawn("waiter", waiter)
    green.sleep(0)
    wakeup.set()
    wakeup.clear()
    wakeup.set()
    green.sleep(0.01)
    assert woken == [0]
    wakeup.set()
    green.sleep(0.01)
    assert woken == [0, 1]


def test_a_second_greenlet_cannot_wait_for_the_same_wakeup():
    sup = Supervisor("test")
    wakeup = green.Wakeup()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            wakeup.wait()
        except RuntimeError as exc:
            errors.append(exc)
        wakeup.set()

    sup.spawn("second", second)
    wakeup.wait()
    assert len(errors) == 1
