"""The dispatcher announces a pump's leases before it sends them
(``Dispatcher.announce``: in a cluster the STARTED events leave first), and
a failure to announce does not keep tasks from their consumer."""
from __future__ import annotations

import logging

from miyaq.config import NodeConfig
from miyaq.core.consumers import Consumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import QueueLimits
from miyaq.runtime import Supervisor
from miyaq.store.task import RUNNING, Task


class Recorder(Consumer):
    """Keeps what it is given, and the order of events in a shared list."""

    def __init__(self, order: list[str]) -> None:
        super().__init__(["q"])
        self.order = order
        self.got: list[Task] = []

    def deliver(self, tasks: list[Task]) -> bool:
        self.order.append(f"deliver {len(tasks)}")
        self.got.extend(tasks)
        return True


def _dispatcher(order: list[str]) -> tuple[Engine, Dispatcher, Recorder]:
    engine = Engine(NodeConfig())
    dispatcher = Dispatcher(engine, 1024, Gate(), QueueLimits(engine, Supervisor("test"), {}))
    engine.listeners.append(dispatcher)
    consumer = Recorder(order)
    dispatcher.grant(consumer, 10)
    return engine, dispatcher, consumer


def _submit(engine: Engine, n: int) -> list[str]:
    ids = [f"t{i}" for i in range(n)]
    for tid in ids:
        engine.submit(Task(tid, "q", "job", b"", created=1.0, eta=1.0), 1.0)
    return ids


def test_leases_are_announced_after_they_are_made_and_before_any_task_is_sent():
    order: list[str] = []
    engine, dispatcher, consumer = _dispatcher(order)
    ids = _submit(engine, 3)

    def announce() -> None:
        states = {engine.table.get(tid).state for tid in ids}
        order.append(f"announce {sorted(states)}")
    dispatcher.announce = announce

    assert dispatcher.pump(2.0) == 3
    assert order == [f"announce {[RUNNING]}", "deliver 3"]
    assert dispatcher.pump(2.0) == 0 and len(order) == 2     # nothing leased: nothing announced


def test_a_failed_announcement_is_logged_and_the_tasks_still_go_to_their_consumer(caplog):
    """Fault: the role's flush raises (a socket error while publishing the
    events). The leased tasks are delivered all the same -- they are not
    left leased to a consumer that never got them -- and the error is logged."""
    order: list[str] = []
    engine, dispatcher, consumer = _dispatcher(order)
    ids = _submit(engine, 2)

    def announce() -> None:
        raise OSError("injected: publishing failed")
    dispatcher.announce = announce

    with caplog.at_level(logging.ERROR, logger="miyaq.core.dispatcher"):
        assert dispatcher.pump(2.0) == 2
    assert [t.id for t in consumer.got] == ids and order == ["deliver 2"]
    assert "could not announce leases" in caplog.text and "injected" in caplog.text
