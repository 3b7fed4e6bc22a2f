"""Who the dispatcher hands a ready task to, and whom a pump visits.

A task goes first to a consumer with a free execution slot (the one with
the most free slots first, then the one made first); a worker's backlog (its prefetch) is filled
only when no consumer has a free slot. A consumer whose queues hold nothing
ready is parked under its queues, out of the pumps, until a task enters one
of them. (miyaq/core/dispatcher.py, the module's docstring.)
"""
from __future__ import annotations

import itertools
from typing import Any

from miyaq.config import NodeConfig
from miyaq.core.consumers import Consumer, WorkerConsumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import QueueLimits, parse_limits
from miyaq.runtime import Supervisor
from miyaq.store.task import Task

NOW = 1000.0
_ids = itertools.count(1)


class Backlogged(Consumer):
    """A worker-like consumer: runs ``slots`` tasks at once and holds up to
    ``credit`` (the rest is its backlog). Keeps what it is given."""

    def __init__(self, name: str, queues: list[str], slots: int, credit: int) -> None:
        super().__init__(queues)
        self.name = name
        self.principal = f"test:{name}"
        self.slots = slots
        self.credit = credit
        self.got: list[str] = []

    def free_slots(self, room: int) -> int:
        return min(room, self.slots - len(self.running))

    def deliver(self, tasks: list[Task]) -> bool:
        self.got.extend(t.id for t in tasks)
        return True

    def __repr__(self) -> str:
        return self.name


class Sends:
    """A service endpoint that keeps what it is asked to send."""

    max_message = 1 << 20

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str, dict[str, Any]]] = []

    def send(self, identity: bytes, command: str, body: dict[str, Any]) -> bool:
        self.sent.append((identity, command, body))
        return True

    def dispatched_to(self, identity: bytes) -> list[str]:
        return [item[0] for who, _, body in self.sent if who == identity for item in body.get("tasks", ())]


def build(max_batch: int = 1024, limits: str = "") -> tuple[Engine, Dispatcher, Gate]:
    engine = Engine(NodeConfig(queue_limits=limits))
    gate = Gate()
    dispatcher = Dispatcher(engine, max_batch, gate, QueueLimits(engine, Supervisor("test"), parse_limits(limits)))
    engine.listeners.append(dispatcher)
    return engine, dispatcher, gate


def submit(engine: Engine, queue: str = "q", eta: float = NOW) -> str:
    task_id = f"t{next(_ids)}"
    engine.submit(Task(task_id, queue, "job", b"", created=NOW, eta=eta), NOW)
    return task_id


def count_takes(engine: Engine) -> list[int]:
    """Count ``engine.take`` calls (one per consumer visit that looks for work, and one per task taken)."""
    calls = [0]
    take = engine.take

    def counted(queues: Any, now: float) -> Task | None:
        calls[0] += 1
        return take(queues, now)
    engine.take = counted  # type: ignore[method-assign]
    return calls


# -- 1. a lone task goes to a free slot, not to the first worker's backlog ----------------------

def test_lone_tasks_on_idle_workers_keep_going_to_the_same_one_and_overlapping_ones_spread():
    """Fault: a build that rotated the workers (the one served last went to
    the back) sent a stream of lone tasks to the two idle workers in turn:
    each worker's caches were colder for each task, a fifth more worker CPU
    a task at 500 lone tasks a second (``miyaq bench --rate 500``). Between
    workers with as many free slots, the one made first takes the task;
    one running more has fewer free slots, so overlapping tasks spread."""
    engine, dispatcher, _ = build()
    a = Backlogged("a", ["q"], slots=4, credit=8)
    b = Backlogged("b", ["q"], slots=4, credit=8)
    dispatcher.grant(b, 0)           # granted first, made second: the order of making decides
    dispatcher.grant(a, 0)
    a.order, b.order = 1, 2
    for _ in range(5):
        task_id = submit(engine)
        dispatcher.pump(NOW)
        done_by = a if task_id in a.got else b
        assert engine.complete(task_id, 1, b"", NOW, by=done_by.principal)      # done before the next
        dispatcher.grant(done_by, 1)
    assert (len(a.got), len(b.got)) == (5, 0)
    overlapping = []
    for _ in range(3):               # each still running when the next comes
        overlapping.append(submit(engine))
        dispatcher.pump(NOW)
    first, second, third = overlapping
    assert first in a.got and second in b.got and third in a.got, (a.got, b.got)


def test_a_lone_task_goes_to_an_idle_worker_not_into_the_busy_one_s_backlog():
    """Fault: the pump offered tasks to consumers in the order they were granted
    credit, so the first worker (concurrency 1, credit 2) took the second task
    into its backlog, to wait behind a long one, while the other worker idled."""
    engine, dispatcher, _ = build()
    a = Backlogged("a", ["q"], slots=1, credit=2)
    b = Backlogged("b", ["q"], slots=1, credit=2)
    dispatcher.grant(a, 0)
    dispatcher.grant(b, 0)
    long_one = submit(engine)
    dispatcher.pump(NOW)
    assert a.got == [long_one]
    short_one = submit(engine)
    dispatcher.pump(NOW)
    assert (a.got, b.got) == ([long_one], [short_one])


def test_a_trickle_spreads_over_the_free_slots_of_every_worker():
    """Fault: eight tasks arriving one by one all went to the first of two
    workers (concurrency 4, credit 8): four waited in its backlog while the
    other ran nothing. Now each worker gets four, all of which start at once."""
    engine, dispatcher, _ = build()
    a = Backlogged("a", ["q"], slots=4, credit=8)
    b = Backlogged("b", ["q"], slots=4, credit=8)
    dispatcher.grant(a, 0)
    dispatcher.grant(b, 0)
    for _ in range(8):
        submit(engine)
        dispatcher.pump(NOW)
    assert (len(a.got), len(b.got)) == (4, 4)
    ninth = submit(engine)            # no free slot anywhere now: a backlog takes it
    dispatcher.pump(NOW)
    assert ninth in a.got + b.got


def test_a_burst_fills_every_free_slot_before_any_backlog():
    """Fault: a burst of seven tasks went in chunks of 64 to the first
    consumers in line: the first worker took four (two running, two in its
    backlog), the second three, the third none. Now every free slot is filled
    first (two each) and only the seventh task waits in a backlog."""
    engine, dispatcher, _ = build()
    workers = [Backlogged(name, ["q"], slots=2, credit=4) for name in "abc"]
    for worker in workers:
        dispatcher.grant(worker, 0)
    for _ in range(7):
        submit(engine)
    assert dispatcher.pump(NOW) == 7
    assert sorted(len(w.got) for w in workers) == [2, 2, 3]


def test_a_registered_worker_s_free_slots_are_its_concurrency_less_what_it_runs():
    """Fault: the node knew no worker's concurrency (its READY sends it), so it
    could not tell a free slot from room in a backlog. Two real worker
    registrations, concurrency 1 and capacity 2: a short task goes to the
    worker that runs nothing, not behind the long task of the other."""
    engine, dispatcher, _ = build()
    endpoint = Sends()
    a = WorkerConsumer(endpoint, b"A", "a", ["q"], 2, 0.0, {"concurrency": 1})  # type: ignore[arg-type]
    b = WorkerConsumer(endpoint, b"B", "b", ["q"], 2, 0.0, {"concurrency": 1})  # type: ignore[arg-type]
    dispatcher.grant(a, 0)
    dispatcher.grant(b, 0)
    long_one = submit(engine)
    dispatcher.pump(NOW)
    short_one = submit(engine)
    dispatcher.pump(NOW)
    assert endpoint.dispatched_to(b"A") == [long_one]
    assert endpoint.dispatched_to(b"B") == [short_one]
    assert (a.free_slots(2), b.free_slots(2)) == (0, 0)
    old = WorkerConsumer(endpoint, b"C", "c", ["q"], 3, 0.0, {})  # type: ignore[arg-type]
    assert old.free_slots(3) == 3     # a READY without concurrency: its whole capacity runs at once


# -- 2. a pump visits only consumers whose queues hold ready tasks -------------------------------

def test_a_pump_visits_no_consumer_whose_queues_hold_nothing_ready():
    """Fault: a consumer with credit stayed in the hungry ones while its
    queues held nothing, so every pump looked for work for each: with
    10,000 idle workers (or parked RECEIVEs) one submit to another queue
    cost 7 ms. Now the idle ones are parked after one look, and a submit
    to another queue visits only that queue's consumer."""
    engine, dispatcher, _ = build()
    idle = [Backlogged(f"idle{i}", [f"idle{i}"], slots=4, credit=4) for i in range(200)]
    for consumer in idle:
        dispatcher.grant(consumer, 0)
    dispatcher.pump(NOW)                  # each looks once, finds nothing: parked
    sink = Backlogged("sink", ["hot"], slots=1 << 20, credit=1 << 20)
    dispatcher.grant(sink, 0)
    takes = count_takes(engine)
    for _ in range(5):
        takes[0] = 0
        task_id = submit(engine, "hot")
        dispatcher.pump(NOW)
        assert sink.got[-1] == task_id
        assert takes[0] <= 2              # the sink's task, and its look for another
    assert not any(c.got for c in idle)


def test_a_lone_task_among_idle_workers_of_its_queue_is_looked_for_once_not_once_a_worker():
    """Fault: a lone task wakes every idle worker of its queue, and after
    the first took it the pump made each of the others look in the
    queue's lanes again, where nothing was left: 16 idle workers cost a
    lone task 28 us of the pump's CPU against 9 with one
    (/tmp/nodecost/micro_pumpN.py). A queue a look found empty is not
    looked in again by the same pump; the others are parked as before,
    and the next task still reaches the worker with the most free slots."""
    engine, dispatcher, _ = build()
    workers = [Backlogged(f"w{i}", ["q"], slots=4, credit=8) for i in range(8)]
    for i, worker in enumerate(workers):
        worker.order = i
        dispatcher.grant(worker, 0)
    dispatcher.pump(NOW)
    takes = count_takes(engine)
    first = submit(engine)
    assert dispatcher.pump(NOW) == 1
    assert workers[0].got == [first]
    assert takes[0] == 2                  # the task, and one look finding the queue empty (9 before)
    assert set(dispatcher.parked) == set(workers) and not dispatcher.hungry
    takes[0] = 0
    second = submit(engine)               # w0 runs one: another has more free slots
    assert dispatcher.pump(NOW) == 1
    assert workers[1].got == [second] and takes[0] == 2
    mixed = Backlogged("mixed", ["q", "r"], slots=4, credit=8)   # a queue not looked in yet: it looks
    mixed.order = 99
    dispatcher.grant(mixed, 0)
    dispatcher.pump(NOW)
    late = submit(engine, "r")
    dispatcher.pump(NOW)
    assert mixed.got == [late]


def test_a_parked_consumer_is_woken_by_a_ready_task_of_any_of_its_queues_and_only_it():
    """Fault: (as above) a task for one idle consumer made the pump visit
    all 100 idle ones. Now it wakes those parked on the task's queue, which
    leave their other queues' index too."""
    engine, dispatcher, _ = build()
    others = [Backlogged(f"o{i}", [f"o{i}"], slots=1, credit=1) for i in range(100)]
    mine = Backlogged("mine", ["x", "y"], slots=1, credit=2)
    for consumer in [*others, mine]:
        dispatcher.grant(consumer, 0)
    dispatcher.pump(NOW)
    takes = count_takes(engine)
    first = submit(engine, "y")
    dispatcher.pump(NOW)
    assert mine.got == [first] and takes[0] <= 2
    later = submit(engine, "x", eta=NOW + 5)        # delayed: ready when its timer fires
    dispatcher.pump(NOW)
    assert mine.got == [first]
    engine.fire_due(NOW + 6)
    takes[0] = 0
    dispatcher.pump(NOW + 6)
    assert mine.got == [first, later] and takes[0] <= 2
    assert not any(c.got for c in others)
    # no consumer is left in the index of a queue it no longer waits on
    for lane, consumers in dispatcher.parked_by_lane.items():
        assert all(lane in c.queues and c in dispatcher.parked for c in consumers)
    assert all(c not in dispatcher.hungry for c in dispatcher.parked)


def test_a_forgotten_parked_consumer_leaves_the_index():
    """Fault: a parked consumer that is forgotten (a RECEIVE past its
    deadline, a worker dropped) must not be woken, nor kept, by its queue's
    next task."""
    engine, dispatcher, _ = build()
    gone = Backlogged("gone", ["q", "r"], slots=1, credit=1)
    dispatcher.grant(gone, 0)
    dispatcher.pump(NOW)
    assert gone in dispatcher.parked and set(dispatcher.parked_by_lane) == {"q", "r"}
    dispatcher.forget(gone)
    assert not dispatcher.parked and not dispatcher.parked_by_lane
    submit(engine, "q")
    dispatcher.pump(NOW)
    assert gone.got == [] and gone not in dispatcher.hungry


def test_credit_granted_to_a_parked_consumer_keeps_it_parked_until_work_comes():
    """Fault: a DONE's credit for a worker with nothing to do put it back in
    the pumps (one look per grant); it stays parked, and its queue's next
    task still reaches it."""
    engine, dispatcher, _ = build()
    worker = Backlogged("w", ["q"], slots=2, credit=1)
    dispatcher.grant(worker, 0)
    dispatcher.pump(NOW)
    dispatcher.grant(worker, 1)
    assert worker in dispatcher.parked and worker not in dispatcher.hungry
    ids = [submit(engine), submit(engine)]
    dispatcher.pump(NOW)
    assert worker.got == ids


def test_a_consumer_held_back_by_a_rate_limit_stays_in_the_pumps_and_gets_the_task_when_a_token_comes():
    """Fault: parking a consumer whose queue holds ready tasks that only its
    rate limit holds back would leave it asleep: no task enters the queue
    when the next token comes."""
    engine, dispatcher, _ = build(limits="q:rate=1,burst=1")
    worker = Backlogged("w", ["q"], slots=4, credit=4)
    dispatcher.grant(worker, 0)
    ids = [submit(engine), submit(engine)]
    dispatcher.pump(NOW)
    assert worker.got == ids[:1]
    assert worker in dispatcher.hungry and worker not in dispatcher.parked
    dispatcher.pending = True              # as the limits' refill timer does
    dispatcher.pump(NOW + 1.5)
    assert worker.got == ids


def test_a_parked_consumer_gets_the_tasks_that_came_while_the_gate_was_closed():
    """Fault: tasks that became ready while the gate held every lease must
    reach a consumer parked before it closed, once it opens."""
    engine, dispatcher, gate = build()
    worker = Backlogged("w", ["q"], slots=1, credit=1)
    dispatcher.grant(worker, 0)
    dispatcher.pump(NOW)
    gate.close("draining")
    task_id = submit(engine)
    assert dispatcher.pump(NOW) == 0
    gate.open("draining")
    assert dispatcher.pump(NOW) == 1 and worker.got == [task_id]


def test_a_consumer_whose_batch_is_full_with_room_left_gets_the_rest_at_the_next_pump():
    """Fault: a consumer whose pump batch reached max_batch with credit left
    was dropped from the hungry ones: the rest of the ready tasks waited for
    its next credit grant (a DONE) although it had room for them."""
    engine, dispatcher, _ = build(max_batch=2)
    worker = Backlogged("w", ["q"], slots=10, credit=10)
    dispatcher.grant(worker, 0)
    ids = [submit(engine) for _ in range(5)]
    assert dispatcher.pump(NOW) == 2
    assert dispatcher.pump(NOW) == 2
    assert dispatcher.pump(NOW) == 1
    assert worker.got == ids


def test_a_consumer_is_named_in_a_log_line_by_what_it_is_not_its_address():
    """Fault: the dispatcher's "could not deliver N tasks to %r" named a
    worker ``<miyaq.core.consumers.WorkerConsumer object at 0x7f...>`` (a
    soak audit's log): nothing an operator could find the worker by."""
    worker = WorkerConsumer(None, b"A", "w1", ["emails", "q"], 8, 0.0, {})  # type: ignore[arg-type]
    assert repr(worker) == "worker w1 (queues emails, q)"
    assert repr(Consumer(["q"])) == "consumer (queues q)"
