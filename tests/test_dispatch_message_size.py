"""A worker on a slow link (a remote site, a VPN: 1-10 Mbit/s) with large
payloads: what a node leases it goes out as DISPATCH messages of at most
``DISPATCH_MESSAGE_BYTES`` of payloads (a larger task alone), so that each
arrives within the worker's ZMTP heartbeat timeout -- libzmq hears a
heartbeat's answer only behind the message in front of it
(docs/protocol.md 7.3, miyaq/constants.py)."""
from __future__ import annotations

import msgpack
import zmq

from miyaq.config import NodeConfig
from miyaq.constants import DISPATCH_MESSAGE_BYTES
from miyaq.core.consumers import Consumer
from miyaq.core.delivery import message_parts
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import QueueLimits, parse_limits
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import Supervisor
from miyaq.store.task import Task
from miyaq.testing.harness import wait_for

NOW = 1000.0
LARGE = 100_000       # bytes of one task's payload: a report, an image


class RawWorker:
    """A worker speaking the protocol by hand: READY with room for
    ``capacity`` tasks, all of them running at once; keeps each DISPATCH
    message's tasks as a message of their own."""

    def __init__(self, endpoint: str, capacity: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.send_multipart(codec.encode(c.READY, {"worker": "raw-slow", "queues": ["default"],
                                                        "capacity": capacity, "concurrency": capacity}))
        self.messages: list[list[list]] = []

    def pump(self, timeout_ms: int = 200) -> None:
        while self.sock.poll(timeout_ms):
            _, command, body = self.sock.recv_multipart()
            if command == c.DISPATCH:
                self.messages.append(msgpack.unpackb(body, raw=False)["tasks"])
            timeout_ms = 50

    def tasks(self) -> int:
        return sum(len(tasks) for tasks in self.messages)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def payload_bytes(tasks: list[list]) -> int:
    return sum(len(task[3]) for task in tasks)


def test_a_worker_with_room_for_many_large_tasks_gets_them_in_messages_of_at_most_the_cap(node, client):
    """Fault: a node put everything it leased a worker in one pump into one
    DISPATCH, up to 8 MiB of payloads. A worker's connection to a node is
    dropped when no whole message arrives within its ZMTP heartbeat
    timeout (5 s): on a 1 Mbit/s link 8 tasks of 100 KB from each of three
    nodes took 19 s to arrive, so the worker dropped its connections, the
    tasks went back, and it never ran one. Twenty tasks of 100 KB leased at
    once now come as messages of at most DISPATCH_MESSAGE_BYTES of payloads
    (a task larger than that alone), all twenty of them, in order."""
    ids = [client.submit("echo", ["x" * LARGE, i]) for i in range(20)]
    client.flush()
    raw = RawWorker(node.endpoint, capacity=20)
    try:
        wait_for(lambda: raw.pump() or raw.tasks() >= 20, what="twenty deliveries")
        raw.pump(300)
        assert raw.tasks() == 20
        assert len(raw.messages) > 1, "all twenty large tasks came in one DISPATCH"
        for tasks in raw.messages:
            assert len(tasks) == 1 or payload_bytes(tasks) <= DISPATCH_MESSAGE_BYTES, \
                [payload_bytes(m) for m in raw.messages]
        assert sorted(task[0] for tasks in raw.messages for task in tasks) == sorted(t.id for t in ids)
    finally:
        raw.close()


def test_a_batch_of_small_tasks_is_still_one_dispatch(node, client):
    """What the cap must not change: 300 small tasks leased at once go out
    in one DISPATCH (``miyaq bench``'s bulk path, the messages per task)."""
    for i in range(300):
        client.submit("echo", [i])
    client.flush()
    raw = RawWorker(node.endpoint, capacity=300)
    try:
        wait_for(lambda: raw.pump() or raw.tasks() >= 300, what="300 deliveries")
        raw.pump(300)
        assert [len(tasks) for tasks in raw.messages] == [300]
    finally:
        raw.close()


# -- the dispatcher's side, without sockets ---------------------------------------------------

class SendsUntil(Consumer):
    """A consumer whose ``deliver`` succeeds ``sends`` times, then fails (the
    connection went away, or its queue is full); keeps what it was sent."""

    def __init__(self, sends: int, credit: int) -> None:
        super().__init__(["q"])
        self.principal = "test:sends-until"
        self.sends = sends
        self.credit = credit
        self.messages: list[list[str]] = []

    def deliver(self, tasks: list[Task]) -> bool:
        if len(self.messages) >= self.sends:
            return False
        self.messages.append([t.id for t in tasks])
        return True


def build() -> tuple[Engine, Dispatcher]:
    engine = Engine(NodeConfig())
    dispatcher = Dispatcher(engine, 1024, Gate(), QueueLimits(engine, Supervisor("test"), parse_limits("")))
    engine.listeners.append(dispatcher)
    return engine, dispatcher


def submit(engine: Engine, task_id: str, size: int) -> None:
    engine.submit(Task(task_id, "q", "job", b"x" * size, created=NOW, eta=NOW), NOW)


def test_message_parts_keep_the_order_and_send_a_task_larger_than_the_cap_alone():
    """Consecutive tasks up to the cap together, a task over it alone, none left out."""
    sizes = [10, DISPATCH_MESSAGE_BYTES - 20, 20, 2 * DISPATCH_MESSAGE_BYTES, 5, 5]
    batch = [Task(f"t{i}", "q", "job", b"x" * n, created=NOW, eta=NOW) for i, n in enumerate(sizes)]
    parts = [[t.id for t in part] for part in message_parts(batch)]
    assert parts == [["t0", "t1"], ["t2"], ["t3"], ["t4", "t5"]]


def test_a_dispatch_that_cannot_be_sent_puts_back_its_tasks_and_the_later_ones_only():
    """Fault simulated: the second of a batch's DISPATCH messages cannot be
    sent (the worker's connection went away meanwhile). The first one's
    tasks are on their way: they stay leased to the worker; the tasks of
    the second and later messages go back to ready, their attempt not
    spent, and the consumer is forgotten (credit 0), as for a whole batch
    that could not be sent."""
    engine, dispatcher = build()
    ids = [f"t{i}" for i in range(6)]
    for task_id in ids:
        submit(engine, task_id, DISPATCH_MESSAGE_BYTES // 2)     # two a message
    consumer = SendsUntil(sends=1, credit=6)
    dispatcher.grant(consumer, 0)
    assert dispatcher.pump(NOW) == 6
    assert consumer.messages == [ids[:2]]
    assert sorted(consumer.running) == ids[:2]
    for task_id in ids[2:]:
        task = engine.table.live[task_id]
        assert (task.state, task.attempt) == ("ready", 0), task_id
    assert consumer.credit == 0 and consumer not in dispatcher.hungry
