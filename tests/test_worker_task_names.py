"""A task goes to a worker that has its handler while a worker of its queue
has it (miyaq.core.task_names). Before 2026-12-06 (this change) the node routed by queue
alone: two workers of different apps on ``default`` (a rolling deploy: the
old version and the new side by side), a task only the second registered
has, and each attempt went to the first (the most free slots, the first
registered between equals): ``UnknownTask``, retried, dead-lettered
although the other worker had the handler and idled (5 of 5 tries)."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zmq

import miyaq
from miyaq.core import task_names
from miyaq.protocol import commands as c
from miyaq.store.ready import ReadyQueues
from miyaq.store.task import READY, Task
from miyaq.config import NodeConfig
from miyaq.core.consumers import Consumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.invariants import problems
from miyaq.core.limits import QueueLimits, parse_limits
from miyaq.runtime import Supervisor
from miyaq.testing.harness import wait_for

REPLY_WAIT = 10_000    # ms; a guard against a hang, not a timing assertion


@pytest.fixture
def dealer(sockets):
    """Factory: a raw worker's DEALER connected to an endpoint (closed at the end)."""
    ctx = zmq.Context.instance()

    def make(endpoint: str) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    return make


def send_ready(sock: zmq.Socket, wid: str, names: list[Any], names_only: Any = None, **extra: Any) -> None:
    body: dict[str, Any] = {"worker": wid, "queues": ["default"], "names": names, "capacity": 4, **extra}
    if names_only is not None:
        body["names_only"] = names_only
    sock.send_multipart([c.TAG, c.READY, msgpack.packb(body)])


def answer(sock: zmq.Socket, *wanted: bytes) -> tuple[bytes, dict[str, Any]]:
    """The next message of a kind in ``wanted`` (heartbeats and the rest skipped)."""
    while True:
        assert sock.poll(REPLY_WAIT), f"no {wanted} came"
        frames = sock.recv_multipart()
        if frames[1] in wanted:
            return frames[1], msgpack.unpackb(frames[2])


def registered(sock: zmq.Socket, wid: str, names: list[Any], names_only: Any = None) -> zmq.Socket:
    send_ready(sock, wid, names, names_only)
    command, body = answer(sock, c.WELCOME, c.ERROR)
    assert command == c.WELCOME, body
    return sock


def dispatched(sock: zmq.Socket, timeout_ms: int = REPLY_WAIT) -> list[str]:
    """The task names of the next DISPATCH to ``sock`` ([] if none within the time)."""
    while sock.poll(timeout_ms):
        frames = sock.recv_multipart()
        if frames[1] == c.DISPATCH:
            return [item[2] for item in msgpack.unpackb(frames[2])["tasks"]]
    return []


# -- the two apps, real workers ------------------------------------------------------------

def test_a_task_only_the_second_app_has_runs_on_its_worker(node, client, thread_worker):
    """Fault: the rolling deploy. Worker A (the old app: ``old.add``) registers
    first and would win every tie; worker B (the new app: ``old.add`` and
    ``new.mul``). Five calls of ``new.mul`` with no retries each run on B.
    Before: each went to A and failed ``UnknownTask``."""
    old, new = miyaq.App(node.endpoint), miyaq.App(node.endpoint)
    old.task(lambda a, b: a + b, name="old.add")
    new.task(lambda a, b: a + b, name="old.add")
    new.task(lambda a, b: a * b, name="new.mul")
    thread_worker(old, node.endpoint, concurrency=2)
    wait_for(lambda: client.status()["totals"]["workers"] == 1, what="the old app's worker")
    thread_worker(new, node.endpoint, concurrency=2)
    wait_for(lambda: client.status()["totals"]["workers"] == 2, what="the new app's worker")
    for i in range(5):
        assert client.call("new.mul", [i, 3], max_retries=0, timeout=20) == 3 * i
    assert client.call("old.add", [1, 2], max_retries=0, timeout=20) == 3


def test_a_name_no_worker_has_still_ends_dead_with_the_message(node, client, thread_worker):
    """Fault the routing must not cause: a typo waits for a worker that will
    never come. Both workers declared their names, neither has ``old.ad``:
    a worker takes it as before, it fails ``UnknownTask`` with the worker's
    explanation, is retried, and is dead-lettered."""
    old, new = miyaq.App(node.endpoint), miyaq.App(node.endpoint)
    old.task(lambda a, b: a + b, name="old.add")
    new.task(lambda a, b: a * b, name="new.mul")
    thread_worker(old, node.endpoint)
    thread_worker(new, node.endpoint)
    wait_for(lambda: client.status()["totals"]["workers"] == 2, what="both workers")
    with pytest.raises(miyaq.TaskFailed) as err:
        client.call("old.ad", [1, 2], max_retries=1, backoff=0.01, timeout=20)
    assert err.value.remote_type == "UnknownTask"
    assert "no handler named 'old.ad'" in err.value.remote_message


# -- the protocol, raw workers -------------------------------------------------------------

def test_a_declaring_worker_is_passed_by_for_the_worker_that_declared_the_name(node, client, dealer):
    """Fault: raw workers ``a`` (declares ``x``, registered first: it wins
    ties) and ``b`` (declares ``y``). A task ``y`` goes to ``b``; a task
    ``x`` to ``a``. Before: ``y`` went to ``a``."""
    a = registered(dealer(node.endpoint), "a", ["x"], names_only=True)
    b = registered(dealer(node.endpoint), "b", ["y"], names_only=True)
    client.submit("y", [], wait=True)
    assert dispatched(b) == ["y"]
    client.submit("x", [], wait=True)
    assert dispatched(a) == ["x"]
    assert dispatched(a, 200) == [] and dispatched(b, 200) == []


def test_an_old_style_ready_still_gets_every_name(node, client, dealer):
    """Fault the routing must not cause: a worker whose READY has no
    ``names_only`` (an older worker, one written without miyaq) gets any
    name, its ``names`` informational as before -- and so a worker that
    declared names passes a task of another name to it. ``a`` declares
    ``x`` and registers first; ``old`` lists ``x`` informationally. A task
    ``zzz`` goes to ``old``. Before: to ``a``."""
    a = registered(dealer(node.endpoint), "a", ["x"], names_only=True)
    old = registered(dealer(node.endpoint), "old", ["x"])
    client.submit("zzz", [], wait=True)
    assert dispatched(old) == ["zzz"]
    assert dispatched(a, 200) == []


def test_a_name_nobody_declared_goes_to_a_declaring_worker_as_before(node, client, dealer):
    """Fault the routing must not cause: with every worker declaring and
    none declaring ``zzz``, the task is not held back: it goes out (to the
    worker that wins the tie, as before) to fail ``UnknownTask`` there."""
    a = registered(dealer(node.endpoint), "a", ["x"], names_only=True)
    registered(dealer(node.endpoint), "b", ["y"], names_only=True)
    client.submit("zzz", [], wait=True)
    assert dispatched(a) == ["zzz"]


def test_passed_over_tasks_keep_their_order(node, client, dealer):
    """A declaring worker that passes over tasks leaves them in their places:
    ``b`` (declares ``y``, no room until it asks) gets the ``y`` tasks in
    the order they were submitted, while ``a`` takes the ``x`` tasks between them."""
    a = registered(dealer(node.endpoint), "a", ["x"], names_only=True)
    b = dealer(node.endpoint)
    send_ready(b, "b", ["y"], names_only=True, credit=0)
    answer(b, c.WELCOME)
    for i in range(6):
        client.submit("y" if i % 2 else "x", [i], wait=True)
    got_a: list[str] = []
    while len(got_a) < 3:
        names = dispatched(a)
        assert names, "a got fewer than its 3 tasks"
        got_a += names
    assert got_a == ["x"] * 3
    b.send_multipart([c.TAG, c.CREDIT, msgpack.packb({"n": 3})])
    bodies: list[Any] = []
    while len(bodies) < 3:
        assert b.poll(REPLY_WAIT), "b got fewer than its 3 tasks"
        frames = b.recv_multipart()
        if frames[1] == c.DISPATCH:
            bodies += [msgpack.unpackb(item[3]) for item in msgpack.unpackb(frames[2])["tasks"]]
    assert [args for args, _kwargs in bodies] == [[1], [3], [5]]


# -- a stopping worker runs nothing more --------------------------------------------------

#: Heartbeat of the node in the stopping tests: its raw workers send none,
#: and must stay registered (lost after about three of these) while a test
#: waits for a DISPATCH that must or must not come.
SLOW_BEAT = 5.0
#: How long a test waits for a DISPATCH that should come at once (a guard).
GUARD_MS = 3_000


def stop_saying(sock: zmq.Socket, node: Any, wid: str) -> None:
    """Say RETURN ``stopping`` (docs/protocol.md 7.9) on ``sock`` and wait until the node shows it."""
    sock.send_multipart([c.TAG, c.RETURN, msgpack.packb({"ids": [], "credit": False, "stopping": True})])
    workers = node.node.core.workers     # type: ignore[union-attr]
    wait_for(lambda: workers.by_wid[wid].stopping, what=f"{wid} stopping")


def declaring_a_and_busy_b(make_node: Any, client_for: Any, dealer: Any) -> tuple[Any, Any, zmq.Socket, zmq.Socket]:
    """A node (heartbeat :data:`SLOW_BEAT`), its client, and raw workers
    ``a`` (declares ``x``) and ``b`` (declares ``y``, no credit: busy)."""
    node = make_node(heartbeat=SLOW_BEAT)
    client = client_for(node.endpoint)
    a = registered(dealer(node.endpoint), "a", ["x"], names_only=True)
    b = dealer(node.endpoint)
    send_ready(b, "b", ["y"], names_only=True, credit=0)
    answer(b, c.WELCOME)
    return node, client, a, b


@pytest.mark.parametrize("stopping_names", [["y"], None], ids=["declared-y", "any-name"])
def test_a_stopping_worker_holds_no_task_back(make_node, client_for, dealer, stopping_names):
    """Fault: ``b`` (declares ``y``; or, an older worker, no names) says it
    is stopping -- it is leased nothing more -- and a task ``y`` comes.
    ``a`` (declares ``x``) is the only live worker: the task goes to it at
    once (to fail ``UnknownTask`` there, as a name no live worker has), and
    none to ``b``. Before: ``b`` still counted as running ``y`` until its
    BYE, so ``a`` passed the task over, and it waited the stopping
    worker's whole grace (or its loss) for nothing."""
    node = make_node(heartbeat=SLOW_BEAT)
    client = client_for(node.endpoint)
    a = registered(dealer(node.endpoint), "a", ["x"], names_only=True)
    b = dealer(node.endpoint)
    if stopping_names is None:
        registered(b, "b", ["y"])
    else:
        registered(b, "b", stopping_names, names_only=True)
    stop_saying(b, node, "b")
    client.submit("y", [], wait=True)
    assert dispatched(a, GUARD_MS) == ["y"]
    assert dispatched(b, 200) == []
    index = node.node.core.dispatcher.task_names     # type: ignore[union-attr]
    assert dict(index.by_queue["default"]) == {frozenset({"x"}): 1}
    b.send_multipart([c.TAG, c.BYE, msgpack.packb({"worker": "b"})])     # gone: counted once, not twice
    wait_for(lambda: client.status()["totals"]["workers"] == 1, what="b's BYE handled")
    assert dict(index.by_queue["default"]) == {frozenset({"x"}): 1}
    assert len(index.sets) == 1


def test_a_stopping_worker_leaves_the_task_to_a_live_worker_that_runs_it(make_node, client_for, dealer):
    """``a`` (declares ``x``, registered first: it wins ties), ``b`` and
    ``c`` (both declare ``y``); ``b`` stops. A task ``y`` goes to ``c``,
    the live worker that runs it, not to ``a``."""
    node = make_node(heartbeat=SLOW_BEAT)
    client = client_for(node.endpoint)
    a = registered(dealer(node.endpoint), "a", ["x"], names_only=True)
    b = registered(dealer(node.endpoint), "b", ["y"], names_only=True)
    c_ = registered(dealer(node.endpoint), "c", ["y"], names_only=True)
    stop_saying(b, node, "b")
    client.submit("y", [], wait=True)
    assert dispatched(c_, GUARD_MS) == ["y"]
    assert dispatched(a, 200) == [] and dispatched(b, 200) == []


def test_a_worker_blocked_behind_a_stopping_workers_tasks_takes_them(make_node, client_for, dealer):
    """Fault: ``a`` (declares ``x``) is blocked behind more than
    ``PASS_OVER`` tasks ``y`` that ``b`` (declares ``y``, busy: no credit)
    runs. ``b`` says it is stopping: ``a`` is woken and takes them at once
    (to fail ``UnknownTask``: no live worker runs ``y``). Before: it stayed
    blocked until ``b``'s BYE."""
    node, client, a, b = declaring_a_and_busy_b(make_node, client_for, dealer)
    for i in range(task_names.PASS_OVER + 1):
        client.submit("y", [i], wait=True)
    dispatcher = node.node.core.dispatcher     # type: ignore[union-attr]
    wait_for(lambda: any(w.wid == "a" for w in list(dispatcher.blocked_by_lane.get("default", ()))),
             what="a blocked behind the y tasks")
    assert dispatched(a, 200) == []
    stop_saying(b, node, "b")
    assert dispatched(a, GUARD_MS) == ["y"] * 4      # its capacity
    assert dispatched(b, 200) == []


@pytest.mark.parametrize("names,names_only", [
    ([f"t{i}" for i in range(100_000)], True),       # past MAX_NAMES_PER_WORKER
    (["x" * 300], True),                             # past a task name's 256 characters
    ([7, "x"], True),                                # not strings
    ([""], True),                                    # empty
    (["x"], "yes"),                                  # names_only not a boolean
])
def test_a_hostile_ready_is_refused_and_changes_nothing(node, client, dealer, names, names_only):
    """Fault: a READY declaring 100,000 names, a name too long, names that
    are not strings, ``names_only`` not true or false: refused
    ``invalid_field`` naming the field, nothing registered or declared."""
    sock = dealer(node.endpoint)
    send_ready(sock, "hostile", names, names_only)
    command, body = answer(sock, c.WELCOME, c.ERROR)
    assert command == c.ERROR and body["code"] == "invalid_field", body
    assert body["field"] in ("names", "names_only")
    assert client.status()["totals"]["workers"] == 0
    index = node.node.core.dispatcher.task_names     # type: ignore[union-attr]
    assert index.sets == {} and index.by_queue == {}


def test_declarations_past_the_bound_register_as_any_name(node, client, dealer, monkeypatch):
    """Bounded together: past ``MAX_NAME_SETS`` distinct lists (patched to
    2) a worker is still registered, as taking any name, and the index
    holds no more; lists equal to one kept share it; a worker gone gives
    its list back."""
    monkeypatch.setattr(task_names, "MAX_NAME_SETS", 2)
    first = registered(dealer(node.endpoint), "a", ["x"], names_only=True)
    registered(dealer(node.endpoint), "b", ["y"], names_only=True)
    registered(dealer(node.endpoint), "c", ["z"], names_only=True)
    registered(dealer(node.endpoint), "d", ["x"], names_only=True)
    workers = node.node.core.workers     # type: ignore[union-attr]
    assert workers.by_wid["c"].names is None
    assert workers.by_wid["d"].names is workers.by_wid["a"].names
    index = node.node.core.dispatcher.task_names     # type: ignore[union-attr]
    assert len(index.sets) == 2 and index.total == 2 and index.not_kept == 1
    first.send_multipart([c.TAG, c.BYE, msgpack.packb({"worker": "a"})])
    wait_for(lambda: client.status()["totals"]["workers"] == 3, what="the BYE to be handled")
    assert index.sets[frozenset({"x"})][1] == 1
    assert index.by_queue["default"] == {frozenset({"x"}): 1, frozenset({"y"}): 1, None: 1}


@pytest.mark.parametrize("goes", ["stopping", "bye"])
def test_a_worker_that_passed_a_task_over_takes_it_when_its_worker_goes(make_node, client_for, dealer, goes):
    """Fault: ``b`` (declares ``y``) is busy -- no credit -- so ``a``
    (declares ``x``) passes a task ``y`` over, fewer than ``PASS_OVER``, and
    is parked. Then ``b`` says it is stopping, or says BYE: ``a`` is woken
    and takes the task (to fail ``UnknownTask``: no live worker runs ``y``).
    Before: ``a`` was parked as a worker with nothing to take, which only
    a new task in its queue wakes: the task waited for ever, on BYE too."""
    node, client, a, b = declaring_a_and_busy_b(make_node, client_for, dealer)
    client.submit("y", [], wait=True)
    dispatcher = node.node.core.dispatcher     # type: ignore[union-attr]
    wait_for(lambda: any(w.wid == "a" for w in list(dispatcher.parked)), what="a parked")
    assert dispatched(a, 200) == []
    if goes == "stopping":
        stop_saying(b, node, "b")
    else:
        b.send_multipart([c.TAG, c.BYE, msgpack.packb({"worker": "b"})])
    assert dispatched(a, GUARD_MS) == ["y"]


# -- the rows that show them ----------------------------------------------------------------

def test_each_workers_row_says_the_names_the_node_routes_by(node, client, dealer, monkeypatch):
    """STATUS ``workers`` rows: a worker that declared a short list shows it
    (sorted); one of 25 names the first ``NAMES_SHOWN`` (20) and
    ``names_more`` 5; one that declared nothing (no ``names_only``: an
    older worker), and one whose list was not kept (past ``MAX_NAME_SETS``,
    patched to 2), show ``"any"`` -- the node sends them any name. Before:
    the rows did not say, and a worker registered as "any" past the bound
    looked like the others."""
    monkeypatch.setattr(task_names, "MAX_NAME_SETS", 2)
    many = [f"app.t{i:02d}" for i in range(24, -1, -1)]
    registered(dealer(node.endpoint), "short", ["y", "x"], names_only=True)
    registered(dealer(node.endpoint), "long", many, names_only=True)
    registered(dealer(node.endpoint), "past-bound", ["z"], names_only=True)
    registered(dealer(node.endpoint), "older", ["x"])
    rows = {w["worker"]: w for w in client.status()["workers"]}
    assert rows["short"]["names"] == ["x", "y"] and rows["short"]["names_more"] == 0
    assert rows["long"]["names"] == sorted(many)[:task_names.NAMES_SHOWN] == [f"app.t{i:02d}" for i in range(20)]
    assert rows["long"]["names_more"] == 5
    for wid in ("past-bound", "older"):
        assert rows[wid]["names"] == "any" and "names_more" not in rows[wid], rows[wid]


# -- the lane put back ---------------------------------------------------------------------

def test_unpop_puts_tasks_back_in_their_places():
    """Tasks popped across lanes and levels, put back in reverse, pop again
    in the same order."""
    ready = ReadyQueues()
    tasks = []
    for i, (queue, priority) in enumerate([("q", 5), ("q", 0), ("r", 0), ("q", 0), ("q", 9), ("r", 5)]):
        task = Task(f"t{i}", queue, "n", b"", priority=priority)
        task.state = READY
        ready.push(task)
        ready.lane(queue).count += 1
        tasks.append(task)
    order = sorted(tasks, key=lambda t: (t.priority, t.seq))
    first = [ready.pop(["q", "r"]) for _ in range(4)]
    assert first == order[:4]
    ready.unpop(order[:4])
    assert [ready.pop(["q", "r"]) for _ in range(7)] == order + [None]


# -- the pump, in process ------------------------------------------------------------------

class Kept(Consumer):
    """A worker-like consumer that declared ``names`` and runs ``slots`` at once."""

    def __init__(self, names: frozenset[str], slots: int) -> None:
        super().__init__(["default"])
        self.names, self.credit, self.got = names, slots, []
        self.principal = f"test:{id(self)}"

    def deliver(self, tasks: list[Task]) -> bool:
        self.got += [t.name for t in tasks]
        return True


NOW = 1000.0


def dispatching(monkeypatch, *consumers: Kept, tasks: list[str], limits: str = "") -> tuple[Engine, Dispatcher]:
    """An engine and its dispatcher (PASS_OVER patched to 4; ``limits``: the
    node's ``queue_limits``), ``consumers`` registered in this order, then
    ``tasks`` (their names) submitted ready."""
    monkeypatch.setattr("miyaq.core.dispatcher.PASS_OVER", 4)
    engine = Engine(NodeConfig())
    dispatcher = Dispatcher(engine, 1024, Gate(), QueueLimits(engine, Supervisor("test"), parse_limits(limits)))
    engine.listeners.append(dispatcher)
    for consumer in consumers:
        dispatcher.task_names.serve(consumer.queues, consumer.names)
        dispatcher.grant(consumer, 0)
    for i, name in enumerate(tasks):
        engine.submit(Task(f"t{i:02d}", "default", name, b"", created=NOW, eta=NOW), NOW)
    return engine, dispatcher


def test_a_worker_behind_more_than_pass_over_tasks_waits_and_never_takes_them(monkeypatch):
    """In process: ``old`` (declares ``old``, 8 slots) and ``new`` (declares
    both, 1 slot, made later). 10 ``new`` tasks then 3 ``old`` ones, with
    PASS_OVER patched to 4: ``old`` passes over 4 and is parked, blocked
    (what it may take lies behind), and not looked at while nothing moves;
    each time ``new`` takes one, the next pump looks again; once fewer
    than 4 lie ahead it takes its 3. It never takes a ``new`` task, and
    every task stays where the node can find it (invariants.problems)."""
    old, new = Kept(frozenset({"old"}), 8), Kept(frozenset({"old", "new"}), 1)
    engine, dispatcher = dispatching(monkeypatch, old, new, tasks=["new"] * 10 + ["old"] * 3)
    dispatcher.pump(NOW)
    assert old.got == [] and new.got == ["new"]
    dispatcher.pump(NOW)      # new's take woke it: it looks again, and is blocked
    assert old.got == [] and old in dispatcher.parked and old in dispatcher.blocked_by_lane["default"]
    assert dispatcher.pump(NOW) == 0 and old in dispatcher.parked      # nothing moved: not looked at
    for _ in range(20):
        if len(new.got) == 10:
            break
        task = next(iter(new.running.values()))
        engine.complete(task.id, task.attempt, None, NOW)
        dispatcher.grant(new, 1)
        dispatcher.pump(NOW)
        assert problems(engine) == []
    assert new.got == ["new"] * 10
    assert old.got == ["old"] * 3
    assert problems(engine) == []


def test_a_blocked_fleet_looks_once_and_takes_the_tasks_when_their_worker_goes(monkeypatch):
    """Three ``old`` workers (one list) blocked behind ``new`` tasks: the
    first looks, the others of its kind are blocked without a look (one
    pass over the lane a pump, not one a worker). Fault: the only worker
    with the handler goes (``forget``, as the registry does when it drops
    a worker, after taking its list out): the blocked workers are woken
    and take the tasks no worker has now -- to fail ``UnknownTask`` and
    end dead as before -- instead of waiting for ever."""
    names = frozenset({"old"})
    olds = [Kept(names, 8) for _ in range(3)]
    new = Kept(frozenset({"new"}), 1)
    engine, dispatcher = dispatching(monkeypatch, *olds, new, tasks=["new"] * 10)
    new.credit = 0          # busy: takes nothing
    dispatcher.hungry.pop(new, None)
    popped = []
    pop = engine.ready.pop
    monkeypatch.setattr(engine.ready, "pop", lambda queues: popped.append(1) or pop(queues))
    dispatcher.pump(NOW)
    assert all(o in dispatcher.parked for o in olds) and len(popped) == 4     # one look of PASS_OVER
    dispatcher.task_names.unserve(new.queues, new.names)
    dispatcher.forget(new)
    dispatcher.pump(NOW)
    assert sum(len(o.got) for o in olds) == 10
    assert problems(engine) == []


@pytest.mark.parametrize("limits", ["", "other:rate=5", "default:rate=1000"],
                         ids=["no-limits", "another-queue-limited", "its-queue-limited"])
@pytest.mark.parametrize("tasks,took", [(["new"], []), (["old", "new"], ["old"])], ids=["took-none", "took-one"])
def test_a_worker_that_passed_over_fewer_than_pass_over_is_woken_when_their_worker_goes(monkeypatch, tasks, took,
                                                                                        limits):
    """In process: ``old`` (declares ``old``) passes over fewer than
    ``PASS_OVER`` ``new`` tasks (having taken what it has, or nothing) and
    its queue holds nothing else: it is parked blocked, so that the only
    worker with the handler going (``new``, busy: no credit) wakes it, and
    it takes the task -- to fail ``UnknownTask`` and end dead as before.
    Before: it was parked as one with nothing to take, woken only by a new
    task in its lanes; the ``new`` task waited for ever. With a queue limit
    on the node (any queue's: the dispatcher then checks limits) it stayed
    hungry as if its queue's limit held it back, and nothing pumped again."""
    old, new = Kept(frozenset({"old"}), 8), Kept(frozenset({"new"}), 1)
    engine, dispatcher = dispatching(monkeypatch, old, new, tasks=tasks, limits=limits)
    new.credit = 0
    dispatcher.hungry.pop(new, None)
    dispatcher.pump(NOW)
    assert old.got == took and old in dispatcher.parked
    dispatcher.task_names.unserve(new.queues, new.names)
    dispatcher.forget(new)
    dispatcher.pump(NOW)
    assert old.got == took + ["new"]
    assert problems(engine) == []
