"""Long-polls cost the node per long-poll touched, never per long-poll
parked (miyaq/core/waiters.py). Before 2026-12-05 one WITHDRAW of 1,000
reqs scanned, per req, the waits of the task (ten connections parking 1,000
RESULT waits each on one task: 605 ms, a STATUS held 559 ms) or every
parked RECEIVE (77 ms); a connection that went away, and an HTTP client that
hung up, were looked for among every wait; and the housekeeping tick (every
0.1 s) walked every RESULT wait and every RECEIVE.

Unit tests on a real :class:`~miyaq.core.engine.Engine` and
:class:`~miyaq.core.dispatcher.Dispatcher`, no sockets, explicit clocks.
The work is counted, never timed: connections, RECEIVEs and deadlines are
objects that count how often they are compared, and each test checks that
the count does not grow with how many long-polls are parked."""
from __future__ import annotations

import math
import sys
from typing import Any

from miyaq.config import NodeConfig
from miyaq.core.consumers import Origin, PullConsumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import QueueLimits
from miyaq.core.waiters import Waiters
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import Supervisor

T0 = 1_700_000_000.0        # wall clock of the engine
LATER = 5_000.0             # a monotonic deadline no test reaches by accident
FEW, MANY = 100, 10_000     # long-polls parked: the work must be the same for both


class Tally:
    compared = 0


class Connection(bytes):
    """A routing id that counts the equality tests made on it. A node gets
    each message's routing id as a new object: equal, not identical."""

    def __eq__(self, other: object) -> bool:
        Tally.compared += 1
        return bytes.__eq__(self, other)  # type: ignore[arg-type]

    __hash__ = bytes.__hash__


class CountedPull(PullConsumer):
    """A RECEIVE that counts the equality tests made on it."""

    def __eq__(self, other: object) -> bool:
        Tally.compared += 1
        return self is other

    __hash__ = PullConsumer.__hash__


class Deadline(float):
    """A deadline that counts the comparisons made on it."""

    def _counted(name: str) -> Any:    # type: ignore[misc]
        compare = getattr(float, name)

        def counted(self: float, other: Any) -> Any:
            Tally.compared += 1
            return compare(self, other)
        return counted

    __lt__ = _counted("__lt__")
    __le__ = _counted("__le__")
    __gt__ = _counted("__gt__")
    __ge__ = _counted("__ge__")
    __eq__ = _counted("__eq__")
    __hash__ = float.__hash__


def counting(action: Any) -> int:
    """How many counted comparisons ``action()`` made."""
    Tally.compared = 0
    action()
    return Tally.compared


def setup() -> tuple[Engine, Dispatcher, Waiters]:
    engine = Engine(NodeConfig(port=7450, http_port=0))
    dispatcher = Dispatcher(engine, 1024, Gate(), QueueLimits(engine, Supervisor("waiters-scale")))
    waiters = Waiters(dispatcher, 100_000, 100_000, None, None, engine.live_state)
    engine.listeners += [dispatcher, waiters]
    return engine, dispatcher, waiters


def submit(engine: Engine, task_id: str, **fields: Any) -> None:
    engine.submit(task_from_wire({"id": task_id, "name": "x", **fields}, T0, engine.config), T0)


def test_a_withdraw_of_result_waits_does_not_look_through_the_tasks_other_waits():
    """Fault: ten connections wait on one task's result; one withdraws ten
    of its waits. Before: each withdrawn req was looked for from the front
    of the task's wait list (a comparison of connections per wait passed).
    The waits left are still answered oldest first."""
    def withdraw_ten(parked: int) -> int:
        engine, _, waiters = setup()
        submit(engine, "held", countdown=3600)
        answered: list[int] = []
        for i in range(parked):
            waiters.wait_result("held", LATER, lambda body, i=i: answered.append(i),
                                Origin(Connection(b"c%d" % (i % 10)), None, i))
        newest = [i for i in range(parked) if i % 10 == 9][-10:]
        work = counting(lambda: waiters.withdraw(Connection(b"c9"), newest))
        assert waiters.withdrawn == 10 and waiters.count == parked - 10
        engine.cancel("held", T0)
        assert answered == [i for i in range(parked) if i not in newest]
        assert waiters.count == 0
        return work

    assert withdraw_ten(MANY) == withdraw_ten(FEW)


def test_a_withdraw_of_receives_does_not_look_through_the_other_receives():
    """Fault: ten connections park RECEIVEs; one withdraws ten. Before:
    each was found by ``list.remove`` over every parked RECEIVE (an equality
    test per RECEIVE parked before it). The RECEIVEs left are still answered
    at their deadline, oldest first, and the withdrawn ones take no task."""
    def withdraw_ten(parked: int) -> int:
        engine, dispatcher, waiters = setup()
        answered: list[int] = []
        for i in range(parked):
            origin = Origin(Connection(b"c%d" % (i % 10)), None, i)
            waiters.wait_pull(CountedPull(["jobs"], LATER, lambda task, i=i: answered.append(i) or True,
                                          origin=origin))
        newest = [i for i in range(parked) if i % 10 == 9][-10:]
        work = counting(lambda: waiters.withdraw(Connection(b"c9"), newest))
        assert waiters.withdrawn == 10 and waiters.count == parked - 10
        waiters.sweep(LATER)
        assert answered == [i for i in range(parked) if i not in newest]
        assert waiters.count == 0 and not dispatcher.hungry
        return work

    assert withdraw_ten(MANY) == withdraw_ten(FEW)


def test_a_tick_looks_only_at_the_long_polls_that_are_due():
    """Fault: the housekeeping tick, every 0.1 s, with long-polls parked
    for an hour. Before: each tick compared the deadline of every RESULT
    wait and every RECEIVE (2 ms a tick at 10,000: 2% of a core, idle). Now
    a tick with nothing due compares one deadline, and one with three due
    about three heap pops' worth."""
    def park(parked: int) -> tuple[Engine, Waiters, list[Any]]:
        engine, _, waiters = setup()
        answered: list[Any] = []
        for i in range(parked // 2):
            submit(engine, f"t{i}", countdown=3600)
            waiters.wait_result(f"t{i}", Deadline(LATER), answered.append)
            waiters.wait_pull(PullConsumer(["jobs"], Deadline(LATER), answered.append))
        return engine, waiters, answered

    def idle_tick(parked: int) -> int:
        _, waiters, answered = park(parked)
        work = counting(lambda: waiters.sweep(LATER - 1))
        assert answered == [] and waiters.count == parked
        return work

    assert idle_tick(MANY) == idle_tick(FEW) == 1

    engine, waiters, answered = park(MANY)
    submit(engine, "soon", countdown=3600)
    for _ in range(2):
        waiters.wait_result("soon", Deadline(10.0), answered.append)
    waiters.wait_pull(PullConsumer(["jobs"], Deadline(10.0), answered.append))
    work = counting(lambda: waiters.sweep(10.0))
    assert answered == [{"state": "scheduled", "timeout": True}] * 2 + [None]
    assert waiters.count == MANY
    assert work <= 3 * 4 * (math.log2(MANY) + 4)      # three pops of a heap of MANY, not MANY


def test_the_deadline_heap_stays_bounded_when_long_polls_end_before_their_deadline():
    """Fault: a client that parks hour-long RESULT waits and RECEIVEs and
    withdraws them at once, over and over (a program cancelling its calls in
    a loop). Each leaves its deadline entry behind until the hour is up;
    without a bound the node's memory grows with every round. Entries of
    ended long-polls never outnumber the parked by more than a margin, and
    the parked are still answered at their deadline."""
    from miyaq.core.parked_polls import COMPACT_SLACK

    engine, _, waiters = setup()
    submit(engine, "held", countdown=3600)
    answered: list[Any] = []
    conn = b"churner"
    for i in range(5):           # parked throughout
        waiters.wait_result("held", LATER, answered.append, Origin(conn, None, i))
    most = 0
    for round_ in range(2_000):
        base = 100 + 2 * round_
        waiters.wait_result("held", LATER, answered.append, Origin(conn, None, base))
        waiters.wait_pull(PullConsumer(["jobs"], LATER, answered.append, origin=Origin(conn, None, base + 1)))
        assert waiters.withdraw(conn, [base, base + 1]) == 2
        most = max(most, len(waiters.deadlines))
    assert waiters.count == 5
    assert most <= 2 * (waiters.count + 2) + COMPACT_SLACK + 1
    waiters.sweep(LATER)
    assert answered == [{"state": "scheduled", "timeout": True}] * 5
    assert waiters.count == 0


def test_a_receive_that_got_its_task_frees_its_place_at_once():
    """Fault: a parked RECEIVE is leased a task. Before: it kept its place
    (``max_waiters``, its connection's, its key's) until the next tick
    walked every RECEIVE; the tick now looks only at deadlines that passed,
    so the lease itself must free the place, or it stays taken to the
    deadline (up to an hour)."""
    engine, dispatcher, waiters = setup()
    answered: list[Any] = []
    consumer = PullConsumer(["jobs"], LATER, lambda info: answered.append(info) or True,
                            origin=Origin(b"puller", "key", 1))
    waiters.wait_pull(consumer)
    submit(engine, "job", queue="jobs")
    assert dispatcher.pump(T0) == 1
    assert [info["id"] for info in answered] == ["job"]
    assert waiters.count == 0 and not waiters.by_connection and not waiters.by_key
    assert waiters.withdraw(b"puller", [1]) == 0        # not a wait any more
    waiters.sweep(LATER)
    assert len(answered) == 1                             # not answered "none" at its deadline


def test_releasing_a_connection_that_went_away_looks_at_its_own_waits_only():
    """Fault: the probe finds a connection gone while many others wait.
    Before: its waits were looked for among every RESULT wait and every
    RECEIVE (a comparison of connections per wait), for each connection
    gone."""
    def release_one(parked: int) -> int:
        engine, _, waiters = setup()
        submit(engine, "held", countdown=3600)
        for i in range(parked):
            origin = Origin(Connection(b"c%d" % (i // 10)), None, i)
            if i % 2:
                waiters.wait_result("held", LATER, lambda body: None, origin)
            else:
                waiters.wait_pull(PullConsumer(["jobs"], LATER, lambda info: True, origin=origin))
        work = counting(lambda: waiters.release(Connection(b"c3")))
        assert waiters.released == 10 and waiters.count == parked - 10
        return work

    assert release_one(MANY) == release_one(FEW)


def test_an_http_caller_that_hangs_up_drops_its_wait_without_looking_through_the_others():
    """Fault: many HTTP callers wait on one task's result; the newest hangs
    up (the gateway's ``drop_result``). Before: its wait was looked for from
    the front of the task's waits (a Python call per wait passed). An
    answer given to several waits is still dropped one wait at a time."""
    def hang_up_newest(parked: int) -> int:
        engine, _, waiters = setup()
        submit(engine, "held", countdown=3600)
        answers = [lambda body: None for _ in range(parked)]
        for answer in answers:
            waiters.wait_result("held", LATER, answer)
        calls = 0

        def profile(frame: Any, event: str, arg: Any) -> None:
            nonlocal calls
            calls += event == "call"

        previous = sys.getprofile()
        sys.setprofile(profile)
        try:
            assert waiters.drop_result("held", answers[-1]) is True
        finally:
            sys.setprofile(previous)
        assert waiters.drop_result("held", answers[-1]) is False
        assert waiters.count == parked - 1
        return calls

    assert hang_up_newest(MANY) == hang_up_newest(FEW)

    engine, _, waiters = setup()
    submit(engine, "held", countdown=3600)
    shared: list[Any] = []
    answer = shared.append
    for _ in range(2):
        waiters.wait_result("held", LATER, answer)
    assert waiters.drop_result("held", answer) is True
    assert waiters.drop_result("held", answer) is True
    assert waiters.drop_result("held", answer) is False
    assert waiters.count == 0
