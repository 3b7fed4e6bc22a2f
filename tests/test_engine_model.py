"""A model-based (stateful) test of the node's task engine, in process.

Hypothesis's :class:`~hypothesis.stateful.RuleBasedStateMachine` drives an
:class:`~miyaq.core.engine.Engine` (with the :class:`~miyaq.core.limits.QueueLimits`
that pause queues, as the dispatcher consults them) through submits (a few
queues, priorities, countdowns near and far, ttl, dedup keys, max_retries,
at_most_once, ids already known), the clock (small and large steps; a clock
that runs late, timers fired only afterwards), consumers taking tasks,
finishing them (done, retryable and final failures with or without a
delay), reports on stale attempts and from the wrong consumer, touches,
releases, lost consumers, leases running out, cancels in every state and of
unknown ids, pauses and resumes, dead-letter retry and purge, tombstone
sweeps and the forgetting of empty queues -- and checks it after every step
against a reference model written here from docs/semantics.md:

* every accepted task is in exactly one place (live, dead, tombstone, or
  gone) and in the model's state, with the model's attempt count;
* a dispatched task is the first ready one of the queues asked for, by
  priority then by the order it became ready ("Ordering"), never before its
  eta, never after its ttl, never once cancelled, never of a paused queue;
* attempts never pass ``max_retries + 1``: the task is dead-lettered then;
* the engine's counts (per queue and state, outcome totals) are the model's,
  and :func:`miyaq.core.invariants.problems` finds nothing wrong;
* every bounded structure (max_tasks, max_dead, max_tombstones, the lease
  history, the paused queues, max_bytes -- which the errors of failed tasks
  may pass by ``ERROR_BYTES_MIN`` a task) stays within its bound;
* once everything is finished and swept, the held bytes (payloads, results)
  and the armed timers are zero.

No sockets, no clock: every call gets the model's ``now``.

CI runs ``MIYAQ_MODEL_EXAMPLES`` examples (default 100) of up to
``MIYAQ_MODEL_STEPS`` steps (default 50), from a fixed seed (45: the same
examples every run, as tests/test_fuzz.py's seed, so a red run is a
change's and not a new draw; ``MIYAQ_MODEL_SEED=random`` draws). A long run:
``MIYAQ_MODEL_EXAMPLES=100000 MIYAQ_MODEL_STEPS=100 MIYAQ_MODEL_SECONDS=900
pytest -s tests/test_engine_model.py`` prints the examples, steps and seconds run
(``MIYAQ_MODEL_SEED`` fixes hypothesis's seed, one a batch of 500 examples;
a failure prints the steps that reproduce it, shrunk).
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from engine_doubles import LeasingConsumer
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from miyaq.config import NodeConfig
from miyaq.constants import ERROR_BYTES_MIN, LEASE_HISTORY, MAX_PAUSED, MAX_QUEUES
from miyaq.core import invariants
from miyaq.core.engine import Engine
from miyaq.core.limits import QueueLimits
from miyaq.errors import Busy, NotFound
from miyaq.protocol.commands import ACCEPTED, DUPLICATE
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import Supervisor
from miyaq.store.task import CANCELLED, DEAD, DONE, EXPIRED, READY, RETRYING, RUNNING, SCHEDULED
from miyaq.store.task_bytes import held_bytes

EXAMPLES = int(os.environ.get("MIYAQ_MODEL_EXAMPLES", "100"))
STEPS = int(os.environ.get("MIYAQ_MODEL_STEPS", "50"))
SECONDS = float(os.environ.get("MIYAQ_MODEL_SECONDS", "0"))     # 0: bounded by the count only
SEED = os.environ.get("MIYAQ_MODEL_SEED", "45")     # "random": hypothesis draws its own

# A failure is shrunk to its shortest steps: a minute or two, within the guard.
pytestmark = pytest.mark.timeout(max(300, SECONDS + 600) if SECONDS else max(300, EXAMPLES // 5))

T0 = 1_700_000_000.0
QUEUES = ("a", "b", "c")
CONSUMERS = ("w0", "w1", "w2")
KEYS = ("k0", "k1", "k2")
BODY = b"\x92\x91\xad" + b"x" * 13 + b"\x80"      # msgpack [["x" * 13], {}]: 17 bytes
CONFIG = dict(max_tasks=12, max_dead=3, max_tombstones=8, result_ttl=20.0, dedup_window=10.0,
              max_bytes=11 * len(BODY), max_payload=64)
KEEP = max(CONFIG["result_ttl"], CONFIG["dedup_window"])     # how long a tombstone is kept
FAR_QUEUES = 101      # the engine forgets empty queues once it holds more than 100


TASK_OPTIONS = st.fixed_dictionaries({
    "queue": st.sampled_from(QUEUES), "priority": st.integers(-1, 2),
    "countdown": st.sampled_from([None, None, 0.0, 0.5, 1.0, 3.0, 40.0, 300.0]),
    "ttl": st.sampled_from([None, None, 0.5, 2.0, 5.0, 60.0]), "key": st.sampled_from([None, None, *KEYS]),
    "max_retries": st.integers(0, 2), "timeout": st.sampled_from([1.0, 4.0, 30.0]),
    "backoff": st.sampled_from([0.0, 0.5, 2.0]), "at_most_once": st.sampled_from([False, False, False, True])})


PICK = st.integers(0, 255)       # which of the tasks a rule acts on (pick): shrinks to the latest


def pick(items: list[Any], which: int) -> Any:
    """The ``which``-th of ``items`` from the end (wrapping around)."""
    return items[-1 - which % len(items)]


@dataclass
class Model:
    """The reference of one task: what the docs say the engine holds."""
    id: str
    queue: str
    priority: int
    eta: float
    expires: float
    key: str | None
    max_retries: int
    timeout: float
    backoff: float
    at_most_once: bool
    bytes: int
    state: str = SCHEDULED
    seq: int = 0                      # when it last became ready (or was accepted): the ready order
    attempt: int = 0
    retry_at: float = 0.0
    lease_end: float = 0.0
    consumer: str | None = None
    lessees: list[tuple[int, str]] = field(default_factory=list)

    def timer(self) -> float | None:
        """When the engine acts on the task by itself (its one timer), or None."""
        if self.state == SCHEDULED:
            return min(self.eta, self.expires) if self.expires else self.eta
        if self.state == RETRYING:
            return min(self.retry_at, self.expires) if self.expires else self.retry_at
        if self.state == READY:
            return self.expires or None
        if self.state == RUNNING:
            return self.lease_end
        return None


@dataclass
class Stone:
    state: str
    finished: float
    key: str | None


class Consumer(LeasingConsumer):
    """A consumer that records the aborts it is sent."""

    def __init__(self, principal: str) -> None:
        super().__init__(principal)
        self.aborted: list[str] = []

    def abort(self, ids: list[str]) -> None:
        self.aborted.extend(ids)


class EngineMachine(RuleBasedStateMachine):
    """The engine against the model (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(NodeConfig(**CONFIG))
        self.limits = QueueLimits(self.engine, Supervisor("engine-model"))
        self.engine.listeners.append(self.limits)
        self.consumers = {name: Consumer(name) for name in CONSUMERS}
        self.now = T0
        self.seq = 0
        self.live: dict[str, Model] = {}
        self.dead: dict[str, Model] = {}            # in the order they died: the oldest is evicted first
        self.stones: dict[str, Stone] = {}          # in the order they were made: the oldest dropped first
        self.keys: dict[str, str] = {}              # key -> id holding it (live, dead or tombstone)
        self.paused: set[str] = set()
        self.totals: dict[str, int] = {}
        self.known: list[str] = []                  # every id submitted, for rules that pick one
        self.cancelled: set[str] = set()            # ids cancelled while live, not submitted again since
        self.far_done = False
        self.far = 0        # tasks of made-up queues (many_queues)
        self.counter = 0

    # -- the model's moves ---------------------------------------------------------------
    def count(self, outcome: str) -> None:
        self.totals[outcome] = self.totals.get(outcome, 0) + 1

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def m_ready(self, m: Model) -> None:
        m.state = READY
        m.seq = self.next_seq()
        m.consumer = None

    def m_finish(self, m: Model, state: str, trim: bool = True) -> None:
        """``trim``: drop the oldest tombstones past the bound now (m_fire does it once it is done)."""
        self.live.pop(m.id, None)
        self.dead.pop(m.id, None)
        m.state = state
        m.consumer = None
        self.count(state)
        self.stones[m.id] = Stone(state, self.now, m.key)
        if state == CANCELLED:
            self.cancelled.add(m.id)
        if trim:
            self.m_trim()

    def m_trim(self) -> None:
        while len(self.stones) > CONFIG["max_tombstones"]:
            self.m_forget(next(iter(self.stones)))

    def m_forget(self, task_id: str) -> None:
        stone = self.stones.pop(task_id)
        if stone.key is not None and self.keys.get(stone.key) == task_id:
            del self.keys[stone.key]

    def m_gone(self, m: Model) -> None:
        """A dead task dropped for good (evicted or purged): no tombstone, id and key free."""
        del self.dead[m.id]
        if m.key is not None and self.keys.get(m.key) == m.id:
            del self.keys[m.key]

    def m_kill(self, m: Model) -> None:
        del self.live[m.id]
        m.state = DEAD
        m.consumer = None
        self.count(DEAD)
        self.dead[m.id] = m
        if len(self.dead) > CONFIG["max_dead"]:
            self.m_gone(next(iter(self.dead.values())))

    def m_retry_or_kill(self, m: Model, retryable: bool, wait: float | None) -> None:
        """``wait``: the delay before the retry (None: read the engine's backoff, checked against its bounds)."""
        if retryable and not m.at_most_once and m.attempt <= m.max_retries:
            self.count("retried")
            if wait is None:
                base = min(300.0, m.backoff * 2 ** max(0, m.attempt - 1))   # backoff_max: the default, 300 s
                if base > 0:
                    eta = self.engine.table.live[m.id].eta
                    assert self.now + base / 2 <= eta <= self.now + base, (m.id, eta - self.now, base)
                    m.state, m.retry_at = RETRYING, eta
                    return
                wait = 0.0
            if wait <= 0:
                self.m_ready(m)
            else:
                m.state, m.retry_at = RETRYING, self.now + wait
        else:
            self.m_kill(m)

    def m_fire(self) -> None:
        """What the engine's timers do at ``now``: in time order, ties in the
        order the tasks last became ready (or were accepted) -- which decides
        the order in which those made ready now are dispatched ("Ordering").

        The order of the tasks that *end* in one firing (their expiry) is
        not one the docs give: the engine may fire the expiry of a task made
        ready again by a lost lease in its earlier turn (a stale timer entry
        for the same time, live again), and it only decides which of the
        tombstones made at the same instant is the older. The model takes
        the engine's order for those."""
        ended: list[str] = []
        while True:
            due = [(m.timer(), m.seq, m) for m in self.live.values()
                   if m.timer() is not None and m.timer() <= self.now]    # type: ignore[operator]
            if not due:
                break
            m = min(due, key=lambda d: (d[0], d[1]))[2]
            if m.state in (SCHEDULED, RETRYING, READY):
                if m.expires and m.expires <= self.now:
                    self.m_finish(m, EXPIRED, trim=False)
                    ended.append(m.id)
                else:
                    assert m.state != READY
                    self.m_ready(m)
            else:      # RUNNING: the lease ran out
                self.count("lost")
                m.consumer = None
                self.m_retry_or_kill(m, True, 0.0)
        if len(ended) > 1:
            # The engine's order among them (one it dropped for the bound meanwhile was its oldest).
            kept = [i for i in self.engine.table.tombstones if i in set(ended)]
            for task_id in [i for i in ended if i not in kept] + kept:
                self.stones[task_id] = self.stones.pop(task_id)
        self.m_trim()

    def some_ids(self, which: list[int]) -> list[str]:
        """Ids for the dead-letter operations: dead ones mostly, others, an unknown one."""
        return list(dict.fromkeys(pick(["nobody", *self.known, *self.dead], i) for i in which))

    def held(self) -> int:
        """The bytes the tasks held count against ``max_bytes``: each as
        :func:`~miyaq.store.task_bytes.held_bytes` counts it (its payload,
        key, error: docs/semantics.md, "Capacity and memory") -- the model
        checks the refusal and the table's sum, not each task's count."""
        table = self.engine.table
        return sum(held_bytes(table.live.get(i) or table.dead[i]) for i in (*self.live, *self.dead))

    def running(self) -> list[Model]:
        return sorted((m for m in self.live.values() if m.state == RUNNING), key=lambda m: m.id)

    # -- rules -----------------------------------------------------------------------------
    @initialize()
    def start_clock(self) -> None:
        self.engine.fire_due(self.now)

    @rule(specs=st.lists(TASK_OPTIONS, min_size=1, max_size=4), again=PICK)
    def submit(self, specs: list[dict[str, Any]], again: int) -> None:
        """One to four submits of new ids; the first, one time in eight, of an id already used."""
        for i, options in enumerate(specs):
            if i == 0 and self.known and again % 8 == 0:
                task_id = pick(self.known, again // 8)
            else:
                self.counter += 1
                task_id = f"t{self.counter}"
            self.submit_one(task_id, {k: v for k, v in options.items() if v is not None and v is not False})

    def submit_one(self, task_id: str, options: dict[str, Any]) -> None:
        wire: dict[str, Any] = {"id": task_id, "name": "n", "body": BODY, **options}
        queue, key = wire["queue"], wire.get("key")
        task = task_from_wire(wire, self.now, self.engine.config)
        size = held_bytes(task)
        # The model's answer (docs/semantics.md: idempotency by id, dedup by key, BUSY).
        expected: Any
        holder = None
        known = task_id in self.live or task_id in self.dead or task_id in self.stones
        if not known and key is not None and (holder := self.keys.get(key)) is not None:
            if holder not in self.live and holder not in self.dead and (
                    self.stones[holder].finished + CONFIG["dedup_window"] <= self.now):
                del self.keys[key]      # past the window: the key is free again
                holder = None
        if known:
            expected = (DUPLICATE, task_id)
        elif holder is not None:
            expected = (DUPLICATE, holder)
        elif len(self.live) >= CONFIG["max_tasks"]:
            expected = Busy
        elif (self.held() + size
              > CONFIG["max_bytes"]):
            expected = Busy
        else:
            expected = (ACCEPTED, None)
        try:
            answer: Any = self.engine.submit(task, self.now)
        except Busy:
            answer = Busy
        assert answer == expected, (task_id, answer, expected)
        if answer != (ACCEPTED, None):
            return
        if task_id not in self.known:
            self.known.append(task_id)
        self.cancelled.discard(task_id)
        # The ttl counts from acceptance, the countdown from now (docs/semantics.md, "ttl").
        eta = self.now + options.get("countdown", 0.0)
        expires = self.now + options["ttl"] if "ttl" in options else 0.0
        assert (task.eta, task.expires) == (eta, expires), (task.eta, task.expires, options)
        m = Model(task_id, queue, options["priority"], eta, expires, key, options["max_retries"], options["timeout"],
                  options["backoff"], bool(options.get("at_most_once")), size, seq=self.next_seq())
        self.live[task_id] = m
        if key is not None:
            self.keys[key] = task_id
        self.count("submitted")
        if m.eta <= self.now:
            self.m_ready(m)

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 45.0]))
    def tick(self, dt: float) -> None:
        """Time passes and the node's loop fires what is due (as clockwork does, until nothing is)."""
        self.now += dt
        self.fire()

    def fire(self) -> None:
        for _ in range(100):
            nxt = self.engine.fire_due(self.now)
            if nxt is None or nxt > self.now:
                break
        else:
            raise AssertionError("fire_due still has due timers after 100 calls")
        self.m_fire()

    @rule(dt=st.sampled_from([0.5, 3.0, 45.0]))
    def late_clock(self, dt: float) -> None:
        """The loop runs late: time passes and no timer fires yet (a take or a
        report may come before the timers do)."""
        self.now += dt

    @rule(consumer=st.sampled_from(CONSUMERS),
          queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3, unique=True), credit=st.integers(1, 3))
    def take(self, consumer: str, queues: list[str], credit: int) -> None:
        """A consumer with ``credit`` asks for tasks of ``queues`` (what the dispatcher does)."""
        for _ in range(credit):
            self.take_one(consumer, queues)

    @rule(consumer=st.sampled_from(CONSUMERS), queue=st.sampled_from(QUEUES),
          end=st.sampled_from(["done", "retry", "reject", "keep"]), specs=st.lists(TASK_OPTIONS, max_size=2))
    def work(self, consumer: str, queue: str, end: str, specs: list[dict[str, Any]]) -> None:
        """A busy producer and worker in one step: submits, a take, and the
        task's end at once (done, a retryable or a final failure) or later (keep)."""
        for options in specs:
            self.counter += 1
            self.submit_one(f"t{self.counter}", {k: v for k, v in options.items() if v is not None and v is not False})
        m = self.take_one(consumer, [queue])
        if m is None or end == "keep":
            return
        if end == "done":
            assert self.engine.complete(m.id, m.attempt, b"ok", self.now, by=consumer)
            self.count("completed")
            self.m_finish(m, DONE)
        else:
            assert self.engine.fail(m.id, m.attempt, {"type": "E", "message": "boom"}, end == "retry", None,
                                    self.now, by=consumer)
            self.count("failed")
            m.consumer = None
            self.m_retry_or_kill(m, end == "retry", None)

    def take_one(self, consumer: str, queues: list[str]) -> Model | None:
        open_lanes = self.limits.open(queues, self.now)
        task = self.engine.take(open_lanes, self.now) if open_lanes else None
        # The model: the first ready task by (priority, ready order) of the unpaused queues;
        # one whose ttl passed is expired on the way.
        while True:
            ready = [m for m in self.live.values() if m.state == READY and m.queue in queues
                     and m.queue not in self.paused]
            first = min(ready, key=lambda m: (m.priority, m.seq), default=None)
            if first is not None and first.expires and first.expires <= self.now:
                self.m_finish(first, EXPIRED)
                continue
            break
        assert (task.id if task else None) == (first.id if first else None), (
            task and task.id, first and (first.id, first.priority, first.seq), sorted(
                (m.priority, m.seq, m.id) for m in self.live.values() if m.state == READY))
        if task is None or first is None:
            return None
        assert task.eta <= self.now and not (task.expires and task.expires <= self.now), task
        assert task.id not in self.cancelled and task.queue not in self.paused
        self.engine.start(task, self.consumers[consumer], self.now)
        self.count("started")
        first.state, first.consumer = RUNNING, consumer
        first.attempt += 1
        first.lessees = (first.lessees + [(first.attempt, consumer)])[-LEASE_HISTORY:]
        first.lease_end = self.now + first.timeout
        return first

    @precondition(lambda self: any(m.state == RUNNING for m in self.live.values()))
    @rule(which=PICK, result=st.sampled_from([None, b"ok", b"x" * 40]))
    def complete(self, which: int, result: bytes | None) -> None:
        m = pick(self.running(), which)
        assert self.engine.complete(m.id, m.attempt, result, self.now, by=m.consumer)
        self.count("completed")
        self.m_finish(m, DONE)

    @precondition(lambda self: any(m.state == RUNNING for m in self.live.values()))
    @rule(which=PICK, retryable=st.booleans(), delay=st.sampled_from([None, None, 0.0, 1.0, 10.0]))
    def fail(self, which: int, retryable: bool, delay: float | None) -> None:
        m = pick(self.running(), which)
        assert self.engine.fail(m.id, m.attempt, {"type": "E", "message": "boom"}, retryable, delay, self.now,
                                by=m.consumer)
        self.count("failed")
        m.consumer = None
        self.m_retry_or_kill(m, retryable, delay)

    @precondition(lambda self: bool(self.known))
    @rule(which=PICK, done=st.booleans(), by=st.sampled_from(CONSUMERS), back=st.integers(0, 5), lease=PICK)
    def stale_report(self, which: int, done: bool, by: str, back: int, lease: int) -> None:
        """A late or foreign report: half the time of a lease on record for the
        task (the last ``LEASE_HISTORY``: one before a revival too), else of an
        attempt ``back`` before the task's current one, from ``by`` (who may
        or may not have been leased it)."""
        task_id = pick(self.known, which)
        m = self.live.get(task_id) or self.dead.get(task_id)
        attempt = (m.attempt if m is not None else 1) - back
        if m is not None and m.lessees and lease % 2 == 0:
            attempt, by = pick(m.lessees, lease // 2)
        leased = m is not None and (attempt, by) in m.lessees
        if done:
            ok = self.engine.complete(task_id, attempt, None, self.now, by=by)
            assert ok == leased, (task_id, attempt, by, m)
            if ok:
                assert m is not None
                self.count("completed")
                if m.state == RUNNING and (m.attempt != attempt or m.consumer != by):    # a second run: aborted
                    assert task_id in self.consumers[m.consumer].aborted     # type: ignore[index]
                self.m_finish(m, DONE)
        else:
            ok = self.engine.fail(task_id, attempt, {"type": "E", "message": "late"}, True, None, self.now, by=by)
            # Only the current attempt's report counts, from the consumer running it (not one
            # leased the same attempt number before a revival: attempts count from zero again).
            expected = (m is not None and m.state == RUNNING and attempt == m.attempt and by == m.consumer)
            assert ok == expected, (task_id, attempt, by, m)
            if ok:
                assert m is not None
                self.count("failed")
                m.consumer = None
                self.m_retry_or_kill(m, True, None)

    @precondition(lambda self: any(m.state == RUNNING for m in self.live.values()))
    @rule(which=PICK)
    def touch(self, which: int) -> None:
        m = pick(self.running(), which)
        assert self.engine.touch(m.id, self.now, by=m.consumer)
        m.lease_end = self.now + m.timeout

    @precondition(lambda self: any(m.state == RUNNING for m in self.live.values()))
    @rule(which=PICK)
    def release(self, which: int) -> None:
        """The consumer gives the task back unstarted: no attempt spent."""
        m = pick(self.running(), which)
        assert self.engine.give_back(m.id, m.attempt, m.consumer, self.now)    # type: ignore[arg-type]
        if m.lessees and m.lessees[-1][0] == m.attempt:
            m.lessees.pop()
        m.attempt -= 1
        self.m_ready(m)

    @rule(consumer=st.sampled_from(CONSUMERS))
    def lose_consumer(self, consumer: str) -> None:
        """The consumer vanished: what it held goes back, each attempt spent."""
        held = self.consumers[consumer].running
        assert set(held) == {m.id for m in self.live.values() if m.consumer == consumer}
        for task in sorted(held.values(), key=lambda t: t.id):
            self.engine.lose(task, "worker went silent", self.now)
            m = self.live[task.id]
            self.count("lost")
            m.consumer = None
            self.m_retry_or_kill(m, True, 0.0)

    @rule(which=PICK)
    def cancel(self, which: int) -> None:
        task_id = pick(["nobody", *self.known], which)
        m = self.live.get(task_id) or self.dead.get(task_id)
        try:
            answer: Any = self.engine.cancel(task_id, self.now)
        except NotFound:
            answer = NotFound
        if m is not None:
            assert answer == (True, m.state), (task_id, answer, m)
            consumer = m.consumer
            self.m_finish(m, CANCELLED)
            if consumer is not None:
                assert task_id in self.consumers[consumer].aborted
        elif task_id in self.stones:
            assert answer == (False, self.stones[task_id].state)
        else:
            assert answer is NotFound

    @rule(queue=st.sampled_from(QUEUES))
    def pause(self, queue: str) -> None:
        assert self.limits.pause(queue, self.now) == (queue not in self.paused)
        self.paused.add(queue)

    @rule(queue=st.sampled_from(QUEUES))
    def resume(self, queue: str) -> None:
        assert self.limits.resume(queue) == (queue in self.paused)
        self.paused.discard(queue)

    @precondition(lambda self: bool(self.dead))
    @rule(which=st.lists(PICK, max_size=3))
    def dead_retry(self, which: list[int]) -> None:
        ids = self.some_ids(which)
        revived = self.engine.dead_retry(ids, self.now)
        expected = [i for i in ids if i in self.dead]
        assert revived == expected
        for task_id in expected:
            m = self.dead.pop(task_id)
            self.live[task_id] = m
            m.attempt = 0
            self.m_ready(m)

    @precondition(lambda self: bool(self.dead))
    @rule(which=st.lists(PICK, max_size=3), queue=st.sampled_from([None, *QUEUES]), by_id=st.booleans())
    def dead_purge(self, which: list[int], queue: str | None, by_id: bool) -> None:
        if by_id:
            ids = self.some_ids(which)
            n = self.engine.dead_purge(None, ids)
            victims = [self.dead[i] for i in ids if i in self.dead]
        else:
            n = self.engine.dead_purge(queue)
            victims = [m for m in self.dead.values() if queue is None or m.queue == queue]
        assert n == len(victims)
        for m in victims:
            self.m_gone(m)

    @rule()
    def housekeeping(self) -> None:
        """The node's sweeps: tombstones past their time, stale lane entries, empty queues."""
        self.engine.table.sweep(self.now)
        for task_id in [i for i, s in self.stones.items() if s.finished <= self.now - KEEP]:
            self.m_forget(task_id)
        self.engine.compact_lanes()

    @precondition(lambda self: not self.far_done)
    @rule()
    def many_queues(self) -> None:
        """A producer makes up queue names: 101 queues, each one task, cancelled;
        the housekeeping then forgets every empty queue (its counts, its
        outcomes -- kept in the totals), and a paused one stays paused."""
        self.far_done = True
        if len(self.live) >= CONFIG["max_tasks"] or self.held() > CONFIG["max_bytes"]:
            return      # the node is full: refused (the submit rules check that)
        for i in range(FAR_QUEUES):
            task = task_from_wire({"id": f"far{i}", "name": "n", "queue": f"far{i}"}, self.now, self.engine.config)
            if task.id in self.engine.table.tombstones or self.engine.submit(task, self.now) != (ACCEPTED, None):
                continue
            self.engine.cancel(task.id, self.now)
            self.count("submitted")
            self.next_seq()
            self.next_seq()
            m = Model(task.id, task.queue, 0, task.eta, 0.0, None, 0, 1.0, 0.0, False, held_bytes(task))
            self.m_finish(m, CANCELLED)
            self.cancelled.discard(task.id)    # not in self.known: never picked again
            self.far += 1
        self.engine.compact_lanes()
        held = {m.queue for m in (*self.live.values(), *self.dead.values())}
        assert set(self.engine.counts) == held, (sorted(self.engine.counts), held)
        assert set(self.limits.paused) == self.paused

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def same_as_the_model(self) -> None:
        STEPS_RUN[0] += 1
        engine = self.engine
        table = engine.table
        assert set(table.live) == set(self.live), (sorted(table.live), sorted(self.live))
        assert list(table.dead) == list(self.dead)
        assert set(table.tombstones) == set(self.stones), (sorted(table.tombstones), sorted(self.stones))
        assert not set(self.live) & set(self.dead) and not (set(self.live) | set(self.dead)) & set(self.stones)
        for m in (*self.live.values(), *self.dead.values()):
            task = table.live.get(m.id) or table.dead[m.id]
            assert (task.state, task.attempt) == (m.state, m.attempt), (m, task)
            assert task.attempt <= m.max_retries + 1, m
            if m.state == RUNNING:
                assert task.consumer is self.consumers[m.consumer], m    # type: ignore[index]
                assert task.lease_end == m.lease_end
            if m.state == RETRYING:
                assert task.eta == m.retry_at, (m, task.eta)
            assert len(task.lessees or ()) <= LEASE_HISTORY
        for task_id, stone in self.stones.items():
            assert table.tombstone(task_id).state == stone.state, (task_id, stone)      # type: ignore[union-attr]
        for name, consumer in self.consumers.items():
            assert set(consumer.running) == {m.id for m in self.live.values() if m.consumer == name}
        assert engine.outcome_totals() == {k: v for k, v in self.totals.items()}, (
            engine.outcome_totals(), self.totals)
        counts: dict[str, dict[str, int]] = {}
        for m in (*self.live.values(), *self.dead.values()):
            row = counts.setdefault(m.queue, {})
            row[m.state] = row.get(m.state, 0) + 1
        shown = {q: {s: n for s, n in row.items() if n} for q, row in engine.queue_counts().items()}
        assert {q: r for q, r in shown.items() if r} == counts
        assert invariants.problems(engine) == []
        # Bounds.
        assert len(table.live) <= CONFIG["max_tasks"] and len(table.dead) <= CONFIG["max_dead"]
        assert len(table.tombstones) <= CONFIG["max_tombstones"]
        # Errors past max_bytes: at most ERROR_BYTES_MIN a held task (docs/semantics.md, "Capacity and memory").
        assert table.payload_bytes <= CONFIG["max_bytes"] + ERROR_BYTES_MIN * (len(table.live) + len(table.dead))
        assert len(engine.counts) <= MAX_QUEUES and len(self.limits.paused) <= MAX_PAUSED
        assert set(self.limits.paused) == self.paused

    def teardown(self) -> None:
        """Everything ended and swept: nothing held, no timer armed."""
        SEEN.update(self.totals)
        SEEN.subtract({"submitted": self.far, CANCELLED: self.far})     # the made-up queues' tasks
        try:
            engine = self.engine
            for task_id in list(engine.table.live):
                engine.cancel(task_id, self.now)
            engine.dead_purge(None)
            self.now += KEEP + 1
            engine.fire_due(self.now)
            engine.table.sweep(self.now)
            engine.compact_lanes()
            assert not engine.table.live and not engine.table.dead and not engine.table.tombstones
            assert engine.table.payload_bytes == 0 and engine.table.result_bytes == 0
            assert engine.timers.armed() == {}
            assert not engine.table.keys
            assert all(not c.running for c in self.consumers.values())
            assert all(lane.count == 0 for lane in engine.ready.lanes.values())
        finally:
            self.limits.close()


STEPS_RUN = [0]      # steps checked (invariants run after every step), for the long run's figures
SEEN: Counter[str] = Counter()     # outcomes over every example: the run went through the states it claims


def test_the_engine_follows_its_model() -> None:
    """The machine above: ``MIYAQ_MODEL_EXAMPLES`` examples of up to
    ``MIYAQ_MODEL_STEPS`` steps; with ``MIYAQ_MODEL_SECONDS``, batches of
    examples (seeds ``MIYAQ_MODEL_SEED``, +1, ...) until that time or that count."""
    first = None if SEED == "random" else int(SEED)
    began, examples, batch_no = time.monotonic(), 0, 0
    while examples < EXAMPLES:
        batch = min(EXAMPLES - examples, 500) if SECONDS else EXAMPLES
        machine = type("Machine", (EngineMachine,), {})
        if first is not None:
            machine = seed(first + batch_no)(machine)
        run_state_machine_as_test(machine, settings=settings(
            max_examples=batch, stateful_step_count=STEPS, deadline=None, database=None, report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck)))
        examples += batch
        batch_no += 1
        if not SECONDS or time.monotonic() - began > SECONDS:
            break
    if SECONDS:
        print(f"engine model: {examples} examples, {STEPS_RUN[0]} steps, {time.monotonic() - began:.0f} s, "
              f"seeds {first}..{first + batch_no - 1 if first is not None else 'random'}; outcomes {dict(SEEN)}")
