"""A quiet connection's lone task is leased to its idle worker before the
rest of a neighbour's burst is read, not at the burst's end (the noisy
neighbours audit, 2026-12-06: a ``call()`` beside a flood waited for the
burst it was read in, 13 of its 17 ms at the median).

The node's hub is held while the messages arrive, so that one burst reads
them all; the burst is bounded by its work only (its time slice is turned
off: on a loaded machine it would end the burst at a moment no test can
choose). What is counted is the tasks the node handled in that burst
before the quiet task's DISPATCH was sent. The dispatcher's side (which
consumer, what order) is checked without sockets below."""
from __future__ import annotations

import threading
import time
import uuid

import msgpack
import pytest
import zmq
from gateway_harness import NodeThread

from miyaq.config import NodeConfig
from miyaq.constants import LONE_TASKS_PER_BURST, SERVICE_BURST_WORK
from miyaq.core.consumers import Consumer, PullConsumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import QueueLimits, parse_limits
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import Supervisor
from miyaq.store.task import Task
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(60)

BATCH = 256
BATCHES = SERVICE_BURST_WORK // BATCH     # the neighbour's messages: one burst's work, whole
NOW = 1000.0


def submit_frames(queue: str, count: int) -> list[bytes]:
    tasks = [{"id": uuid.uuid4().hex, "name": "job", "queue": queue, "body": b"\x92\x90\x80"} for _ in range(count)]
    return [c.TAG, c.SUBMIT, codec.pack({"tasks": tasks})]


def dealer(ctx: zmq.Context, node: NodeThread, name: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, name)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(f"tcp://127.0.0.1:{node.config.port}")
    return sock


def known(sock: zmq.Socket) -> None:
    """Connected and known to the node: a STATUS answered."""
    sock.send_multipart([c.TAG, c.STATUS, codec.pack({"req": 1})])
    assert sock.recv_multipart()[1] == c.REPLY


def dispatched(worker: zmq.Socket) -> int:
    """The count of tasks in the worker's first DISPATCH (its WELCOME skipped)."""
    for _ in range(10):
        frames = worker.recv_multipart()
        if frames[1] == c.DISPATCH:
            return len(msgpack.unpackb(frames[2])["tasks"])
    raise AssertionError("no DISPATCH among the worker's first ten messages")


@pytest.fixture()
def node():
    node = NodeThread(heartbeat=60.0)
    try:
        yield node
    finally:
        node.stop()


def test_a_quiet_task_is_dispatched_before_the_rest_of_a_neighbours_burst(node):
    """Fault: a neighbour's connection has a whole burst of batches waiting
    (8 SUBMITs of 256 tasks of queue ``bulk``) when a quiet producer's
    one-task SUBMIT of queue ``quiet`` comes, whose worker is idle. The
    reader takes them in turns, so the quiet one is read first or second --
    and before, its task was leased with all the others by the pump at the
    burst's end, after all 2,049 tasks were handled. Now it is leased and
    sent once the burst has done EARLY_ACK_WORK tasks: after at most the
    one batch read before or after it. The neighbour's tasks are
    still dispatched at the burst's end, in one DISPATCH."""
    endpoint = node.node.core.endpoint      # type: ignore[union-attr]
    seen: dict[bytes, int] = {}

    def install() -> None:
        endpoint.sock.turn_over = lambda: False      # the burst ends on its work alone
        send = endpoint._send

        def probe(identity: bytes, command: bytes, packed: bytes) -> bool:
            if command == c.DISPATCH:
                seen.setdefault(identity, endpoint.work)
            return send(identity, command, packed)

        endpoint._send = probe

    node.call(install)
    ctx = zmq.Context()
    try:
        workers = {}
        for queue in ("quiet", "bulk"):
            worker = workers[queue] = dealer(ctx, node, f"{queue}-worker".encode())
            worker.send_multipart([c.TAG, c.READY, codec.pack({"worker": f"w-{queue}", "queues": [queue],
                                                                "capacity": 8, "concurrency": 8})])
        wait_for(lambda: node.call(lambda: len(node.node.core.workers.by_wid)) == 2,  # type: ignore[union-attr]
                 what="both workers registered")
        neighbour = dealer(ctx, node, b"neighbour")
        quiet = dealer(ctx, node, b"quiet")
        known(neighbour)
        known(quiet)
        holding = threading.Thread(target=node.call, args=(lambda: time.sleep(0.5),))
        holding.start()
        time.sleep(0.1)                  # the node's hub is held: what comes waits to be read in one burst
        for _ in range(BATCHES):
            neighbour.send_multipart(submit_frames("bulk", BATCH))
        quiet.send_multipart(submit_frames("quiet", 1))
        holding.join()
        assert dispatched(workers["quiet"]) == 1
        assert dispatched(workers["bulk"]) == 8        # its slots: the rest wait for them
    finally:
        ctx.destroy(linger=0)
    assert seen[b"quiet-worker"] <= BATCH + 1, \
        f"the quiet task's DISPATCH waited for {seen[b'quiet-worker']} tasks of the burst"
    assert seen[b"bulk-worker"] == BATCHES * BATCH + 1, "the neighbour's tasks left before the burst's end"


# -- the dispatcher's side, without sockets ---------------------------------------------------

class Kept(Consumer):
    """A worker-like consumer: ``slots`` run at once, ``credit`` room in all;
    keeps what it was sent, a message each."""

    def __init__(self, queues: list[str], slots: int, credit: int) -> None:
        super().__init__(queues)
        self.principal = "test:kept"
        self.slots = slots
        self.credit = credit
        self.messages: list[list[str]] = []

    def free_slots(self, room: int) -> int:
        return min(room, self.slots - len(self.running))

    def deliver(self, tasks: list[Task]) -> bool:
        self.messages.append([t.id for t in tasks])
        return True


def build() -> tuple[Engine, Dispatcher]:
    engine = Engine(NodeConfig())
    dispatcher = Dispatcher(engine, 1024, Gate(), QueueLimits(engine, Supervisor("test"), parse_limits("")))
    engine.listeners.append(dispatcher)
    return engine, dispatcher


def submit(engine: Engine, dispatcher: Dispatcher, task_id: str, queue: str, lone: bool = True,
           priority: int = 0) -> None:
    task = Task(task_id, queue, "job", b"x", created=NOW, eta=NOW, priority=priority)
    engine.submit(task, NOW)
    if lone:
        dispatcher.note_lone(task)


def parked(dispatcher: Dispatcher, *consumers: Consumer) -> None:
    """Granted and visited by a pump that found nothing: parked on their lanes."""
    for consumer in consumers:
        dispatcher.grant(consumer, 0)
    assert dispatcher.pump(NOW) == 0
    assert all(consumer in dispatcher.parked for consumer in consumers)


def test_a_lone_task_goes_alone_to_the_idle_worker_the_pump_would_pick():
    """Two idle workers of the queue: the lone task goes, in a message of
    its own, to the one with the most free slots (the pump's rule), and
    nothing else is leased; the queue's next tasks wait for the pump."""
    engine, dispatcher = build()
    small, large = Kept(["quiet"], slots=2, credit=4), Kept(["quiet"], slots=8, credit=8)
    parked(dispatcher, small, large)
    submit(engine, dispatcher, "lone", "quiet")
    submit(engine, dispatcher, "next", "quiet")       # woke no one (already woken): the pump's
    assert dispatcher.dispatch_lone(NOW) == 1
    assert large.messages == [["lone"]] and small.messages == []
    assert engine.table.live["lone"].state == "running" and engine.table.live["next"].state == "ready"
    assert dispatcher.pump(NOW) == 1
    assert dispatcher.dispatch_lone(NOW) == 0          # the pump forgot what was noted


def test_a_lone_task_does_not_pass_a_task_ready_before_it_for_the_same_worker():
    """A worker of two queues with a task of ``bulk`` ready (it is not
    parked): a lone task of ``quiet`` goes after it (docs/semantics.md,
    "Ordering"), so it is left to the pump, which takes ``bulk``'s first."""
    engine, dispatcher = build()
    worker = Kept(["bulk", "quiet"], slots=1, credit=1)
    parked(dispatcher, worker)
    submit(engine, dispatcher, "bulk-1", "bulk", lone=False)
    submit(engine, dispatcher, "quiet-1", "quiet")
    assert dispatcher.dispatch_lone(NOW) == 0 and worker.messages == []
    assert dispatcher.pump(NOW) == 1
    assert worker.messages == [["bulk-1"]]


def test_a_lone_task_waits_for_a_free_slot_not_a_backlog():
    """An idle-looking worker parked with room but every slot running (its
    prefetch free): the lone task is not put in its backlog early."""
    engine, dispatcher = build()
    worker = Kept(["quiet"], slots=1, credit=4)
    submit(engine, dispatcher, "running", "quiet", lone=False)
    dispatcher.grant(worker, 0)
    assert dispatcher.pump(NOW) == 1 and dispatcher.pump(NOW) == 0      # one runs; then parked
    assert worker in dispatcher.parked
    submit(engine, dispatcher, "lone", "quiet")
    assert dispatcher.dispatch_lone(NOW) == 0
    assert engine.table.live["lone"].state == "ready"


def test_nothing_is_leased_early_while_the_gate_is_closed():
    engine, dispatcher = build()
    worker = Kept(["quiet"], slots=8, credit=8)
    parked(dispatcher, worker)
    dispatcher.gate.close("drain")
    submit(engine, dispatcher, "lone", "quiet")
    assert dispatcher.dispatch_lone(NOW) == 0 and worker.messages == []


def test_lone_tasks_noted_in_a_burst_are_bounded():
    """Many quiet connections in one burst: at most LONE_TASKS_PER_BURST
    tasks are leased one by one; the others go with the pump's batch."""
    engine, dispatcher = build()
    workers = [Kept([f"q{i}"], slots=1, credit=1) for i in range(LONE_TASKS_PER_BURST + 4)]
    parked(dispatcher, *workers)
    for i in range(len(workers)):
        submit(engine, dispatcher, f"t{i}", f"q{i}")
    assert dispatcher.dispatch_lone(NOW) == LONE_TASKS_PER_BURST
    assert dispatcher.pump(NOW) == 4


def test_a_lone_task_of_a_paused_queue_stays_ready():
    """Limits hold for the early path as for the pump: a paused queue's
    lone task wakes its idle worker but is not leased until resumed."""
    engine, dispatcher = build()
    worker = Kept(["quiet"], slots=8, credit=8)
    parked(dispatcher, worker)
    dispatcher.limits.pause("quiet", NOW)
    submit(engine, dispatcher, "lone", "quiet")
    assert dispatcher.dispatch_lone(NOW) == 0 and worker.messages == []
    dispatcher.limits.resume("quiet")
    assert dispatcher.pump(NOW) == 1 and worker.messages == [["lone"]]


def test_a_lone_task_answers_a_waiting_receive_early():
    """A blocking RECEIVE parked on the queue is woken, and answered, the same way."""
    engine, dispatcher = build()
    answers: list[dict] = []
    receive = PullConsumer(["quiet"], NOW + 30, lambda info: answers.append(info) is None)
    parked(dispatcher, receive)
    submit(engine, dispatcher, "lone", "quiet")
    assert dispatcher.dispatch_lone(NOW) == 1
    assert [a["id"] for a in answers] == ["lone"]
