"""Fuzz the client's core with what a buggy or hostile node can answer.

A node is trusted no more than a client (docs/security.md): whatever a node
sends -- a SUBMITTED, REPLY or ERROR with one field wrong, garbage bodies,
wrong frame counts, RING replies naming junk, refused or too many
endpoints -- must not end the client's I/O loop (which would leave every
later call to time out), resolve a caller twice, or lose a caller. The
client's core (:class:`miyaq.client.core.ClientCore`) has no I/O, so this
test drives it directly, on its own clock, through the same calls its
drivers make: submits, requests, timers, closed connections and messages.

A seeded generator (tests/fuzz_inputs.py's values) makes the replies,
mostly *valid-looking* -- an answer to a submit or request the client really
has outstanding, with one field made wrong. Checked after every step: the
call returned (no exception), no waiter was resolved twice (the waiter
asserts it), the transport's connections and :attr:`Nodes.endpoints` stay
aligned and bounded. At the end, time runs past every deadline: every
submit and request was resolved exactly once.

``MIYAQ_CLIENT_FUZZ_EXAMPLES`` steps (default 4,000: a second or two);
``MIYAQ_CLIENT_FUZZ_SEED`` picks the seed (a failure names it).
"""
from __future__ import annotations

import os
import random
import re
from typing import Any

import msgpack
import pytest
from fuzz_inputs import Inputs, pack

from miyaq.client.core import ClientCore
from miyaq.client.learned_nodes import MAX_NODES
from miyaq.client.nodes import Nodes
from miyaq.client.pending import Pending
from miyaq.errors import MiyaqError
from miyaq.protocol import commands as c

EXAMPLES = int(os.environ.get("MIYAQ_CLIENT_FUZZ_EXAMPLES", "4000"))
SEED = int(os.environ.get("MIYAQ_CLIENT_FUZZ_SEED", "11"))
REQUESTS = [c.STATUS, c.TASK, c.CANCEL, c.RESULT, c.TASKS, c.DEAD, c.RECEIVE, c.ACK, c.NACK]
# What libzmq accepts to dial, roughly: a transport it knows and, for TCP, a port.
DIALABLE = re.compile(r"(tcp://[^\s:]+:[0-9]+|ipc://.+|inproc://.+)")

pytestmark = pytest.mark.timeout(120)


class Transport:
    """The core's transport: every connection up; ``connect`` refuses what
    libzmq would and, as the drivers do, opens the new connection at the
    index :attr:`Nodes.next_slot` names; ``disconnect`` closes one (a node
    that left the ring)."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        self.open = set(range(len(nodes.endpoints)))     # the indexes with a connection
        self.sent: list[tuple[int, bytes, dict[str, Any]]] = []
        self.refused: list[str] = []

    def send(self, node: int, frames: list[bytes]) -> bool:
        if node not in self.open:
            assert node in self.nodes.retired, f"sent to connection {node} of {sorted(self.open)}"
            return False            # closed (a caller's request raced its node's retirement)
        self.sent.append((node, frames[1], msgpack.unpackb(frames[2], raw=False)))
        return True

    def connect(self, endpoint: str) -> bool:
        if not DIALABLE.fullmatch(endpoint):
            self.refused.append(endpoint)
            return False
        assert self.nodes.next_slot not in self.open, "dialled over an open connection"
        self.open.add(self.nodes.next_slot)
        return True

    def disconnect(self, node: int) -> None:
        assert node >= self.nodes.given, "closed a connection the user gave"
        self.open.remove(node)

    def reconnect(self, node: int) -> None:
        assert node in self.open


class Waiter:
    def __init__(self) -> None:
        self.outcomes: list[Any] = []

    def set(self, value: Any) -> None:
        assert not self.outcomes, f"resolved twice: {self.outcomes} then {value!r}"
        self.outcomes.append(value)

    def fail(self, error: MiyaqError) -> None:
        assert isinstance(error, MiyaqError), error
        assert not self.outcomes, f"resolved twice: {self.outcomes} then {error!r}"
        self.outcomes.append(error)


class Replies:
    """Answers to what the client sent, valid-looking with one field wrong, or garbage."""

    def __init__(self, rng: random.Random, inputs: Inputs) -> None:
        self.rng = rng
        self.inputs = inputs
        self.submitted: list[str] = []                 # task ids sent, newest last
        self.reqs: list[tuple[bytes, int]] = []        # (command, req) asked, newest last

    def note(self, sent: list[tuple[int, bytes, dict[str, Any]]]) -> None:
        for _, command, body in sent:
            if command == c.SUBMIT:
                self.submitted += [t["id"] for t in body["tasks"]]
            elif "req" in body:                 # not a WITHDRAW (one-way)
                self.reqs.append((command, body["req"]))
        del self.submitted[:-200], self.reqs[:-50]

    def endpoint(self) -> Any:
        r = self.rng
        return r.choice([f"tcp://127.0.0.1:{r.randrange(1, 70000)}", "tcp://no port here", "ipc://", "",
                         f"udp://h:{r.randrange(9)}", f"ipc:///tmp/n{r.randrange(9)}", "tcp://h:x",
                         "tcp://" + "a" * 300 + ":1", self.inputs.junk()])

    def ring(self, req: int) -> dict[str, Any]:
        r = self.rng
        members: dict[Any, Any] = {}
        for i in range(r.choice([0, 1, 2, 3, 20, 300])):
            info: Any = {"service": self.endpoint(), "weight": r.choice([1.0, 2, 0, -1, float("nan"), 1e9, "x"])}
            members[f"n{i}" if r.random() < 0.9 else self.inputs.junk(3)] = info
        body: dict[str, Any] = {"req": req, "epoch": r.randrange(5), "leader": "n0", "members": members,
                                "vnodes": r.choice([160, 1, 0, -4, 10**6, "x", None]), "node": "n0"}
        if r.random() < 0.7:        # a node's limits: sensible, tiny, or nonsense
            body["limits"] = r.choice([
                {"max_message": r.choice([4096, 100_000, 1 << 20, 0, "x"]),
                 "max_payload": r.choice([1, 50_000, 1 << 20, -1, None]),
                 "max_batch": r.choice([1, 3, 1000, True, 2.5])},
                self.inputs.junk()])
        return self.inputs.maybe_mutate(body, 0.3)

    def submitted_body(self) -> dict[str, Any]:
        r = self.rng
        results: list[Any] = []
        for task_id in r.sample(self.submitted, min(len(self.submitted), r.randrange(1, 6))):
            status = r.choice([c.ACCEPTED, c.DUPLICATE, c.REJECTED, c.REJECTED, "odd", None])
            detail: Any = None
            if status == c.REJECTED:
                detail = {"code": r.choice(["busy", "not_enough_replicas", "invalid_field", "shutting_down",
                                            "internal", "nope", 7]), "message": "m"}
                if r.random() < 0.5:
                    detail = self.inputs.mutate(detail)
            elif status == c.DUPLICATE:
                detail = self.inputs.known_id()
            item: Any = [task_id, status, detail]
            if r.random() < 0.2:
                item = self.inputs.junk()
            results.append(item)
        return self.inputs.maybe_mutate({"results": results}, 0.2)

    def answer(self, command: bytes, req: int) -> tuple[bytes, dict[str, Any]]:
        r = self.rng
        if command == c.RING:
            return c.REPLY, self.ring(req)
        if r.random() < 0.3:
            error = {"req": req, "code": r.choice(["not_found", "busy", "timeout", "unavailable", "nope", 3]),
                     "message": self.inputs.junk()}
            if r.random() < 0.2:
                error[self.inputs.junk(3)] = self.inputs.junk()      # a detail named by anything
            return c.ERROR, self.inputs.maybe_mutate(error, 0.5)
        body = {"req": req, "task": {"id": "t", "state": "done", "queue": "q", "attempt": r.choice([1, "1"])},
                "cancelled": True, "tasks": [], "ok": True,
                "state": "done", "result": pack(1), "timeout": False}
        return c.REPLY, self.inputs.maybe_mutate(body, 0.7)

    def message(self) -> list[bytes]:
        r = self.rng
        roll = r.random()
        if roll < 0.35 and self.submitted:
            return [c.TAG, c.SUBMITTED, pack(self.submitted_body())]
        if roll < 0.70 and self.reqs:
            command, body = self.answer(*r.choice(self.reqs))
            return [c.TAG, command, pack(body)]
        if roll < 0.80:
            return [c.TAG, r.choice(sorted(c.NODE_REPLIES)), pack(self.inputs.junk())]
        if roll < 0.85:
            return [c.TAG, r.choice(sorted(c.NODE_REPLIES)), r.randbytes(r.randrange(0, 20))]
        if roll < 0.90:
            return [c.TAG, c.REPLY] + [pack({"req": 1})] * r.choice([0, 2, 5])
        if roll < 0.95:
            return [c.TAG, r.choice(sorted(c.NODE_COMMANDS)), pack({"req": 1})]     # looks looped back
        return [r.choice([b"MQ2", b""]), r.choice([b"NOPE", c.REPLY]), pack({})]


def test_no_answer_a_node_can_send_breaks_the_client() -> None:
    """Fault: a buggy or hostile node answers a client's submits and
    requests with wrong fields, garbage and junk rings (seeded; see the
    module). The core never raises, resolves no caller twice, keeps its
    connections aligned with the nodes it knows, and at the end every
    caller has been resolved exactly once."""
    rng = random.Random(SEED)
    inputs = Inputs(rng, "n0", "p1", 0.0)
    seeds = [f"tcp://127.0.0.1:{7450 + i}" for i in range(3)]
    nodes = Nodes(list(seeds))
    transport = Transport(nodes)
    core = ClientCore(transport, nodes, max_batch=16, ack_timeout=0.5, max_message=1 << 20)
    replies = Replies(rng, inputs)
    waiters: list[Waiter] = []
    asked: dict[int, Waiter] = {}            # req -> its caller
    withdrawn: set[Waiter] = set()           # callers that stopped waiting: never resolved, never twice
    now = 0.0
    for step in range(EXAMPLES):
        where = f"seed {SEED}, step {step}"
        roll = rng.random()
        try:
            if roll < 0.15:
                waiter = Waiter()
                waiters.append(waiter)
                wire = {"id": inputs.new_id(), "name": "echo", "body": b"x" * rng.choice([1, 1, 1, 70_000, 2_000_000])}
                core.submit(Pending(wire, waiter, now, now + rng.choice([0.3, 2.0, 10.0])),
                            now if rng.random() < 0.5 else None)
            elif roll < 0.25:
                waiter = Waiter()
                waiters.append(waiter)
                req = core.next_req()
                asked[req] = waiter
                core.request(rng.randrange(len(nodes)), rng.choice(REQUESTS), {"req": req, "id": "t"},
                             waiter, now + rng.choice([0.3, 2.0]), now)
            elif roll < 0.27 and asked:             # the caller stops waiting (cancelled, interrupted)
                req = rng.choice(list(asked)[-20:])
                withdrawn.add(asked[req])
                core.withdraw(req, now)
            elif roll < 0.28:
                core.on_disconnected(rng.choice(sorted(transport.open)), now)     # only an open one closes
            elif roll < 0.40:
                now += rng.choice([0.01, 0.1, 0.6, 3.0])
                core.on_timer(now)
            else:
                core.on_frames(rng.choice(sorted(transport.open)), replies.message(), now)   # on an open one
        except Exception as exc:
            raise AssertionError(f"{where}: the core raised {exc!r}") from exc
        replies.note(transport.sent)
        transport.sent.clear()
        assert transport.open == set(range(len(nodes.endpoints))) - nodes.retired, where
        assert len(nodes.endpoints) <= MAX_NODES, where
    for _ in range(20):                       # past every deadline: all resolved
        now += 5.0
        core.on_timer(now)
    unresolved = [w for w in waiters if not w.outcomes and w not in withdrawn]
    assert not unresolved, f"seed {SEED}: {len(unresolved)} of {len(waiters)} callers never resolved"
    assert transport.refused, "the generator named no refused endpoint: it tests less than it says"
    assert any(isinstance(o, MiyaqError) and "more than" in o.message for w in waiters for o in w.outcomes), \
        "no submit was refused for a node's limits: the generator tests less than it says"


@pytest.mark.parametrize("payload, cls, details", [
    ({"code": "busy", "message": "full", "reason": "bytes"}, "Busy", {"reason": "bytes"}),
    ({"code": "busy", "message": "m", 7: "int key", b"k": 1, "self": 2}, "Busy", {}),
    ({"code": ["x"], "message": {"a": 1}}, "MiyaqError", {}),
    ({"code": "retry", "delay": "soon"}, "MiyaqError", {"delay": "soon"}),
    ({}, "MiyaqError", {}),
])
def test_an_error_a_node_sends_is_rebuilt_from_any_map(payload, cls, details) -> None:
    """Fault: a node's ERROR (or a submit's rejection) carries fields named
    by integers or bytes, a ``self``, or a code that is not a string. The
    client rebuilds an exception from any map, keeping the fields named by
    strings; before, such a field raised TypeError in the client's I/O loop."""
    from miyaq.errors import from_wire
    err = from_wire(payload)
    assert type(err).__name__ == cls and isinstance(err, MiyaqError)
    assert err.details == details


def test_no_answer_a_node_can_send_reaches_a_caller_as_anything_but_a_miyaq_error() -> None:
    """Fault: a buggy or hostile node answers status, cancel, result, tasks,
    dead-letter, receive, ack and nack requests with a field missing or of
    another type (seeded). Each call returns, or raises a MiyaqError
    naming what was wrong (ProtocolError); before, a caller could get a
    KeyError, a TypeError from msgpack or an AttributeError."""
    from miyaq.client import operations as ops
    from miyaq.client.wire import ReceivedTask, decode_outcome

    rng = random.Random(SEED)
    inputs = Inputs(rng, "n0", "p1", 0.0)
    nodes = Nodes([f"tcp://127.0.0.1:{7450 + i}" for i in range(2)])
    valid = {"task": {"id": "t", "queue": "q", "attempt": 1, "state": "done"}, "cancelled": True,
             "tasks": [], "ok": True, "state": "done", "result": pack(1), "timeout": False,
             "error": {"type": "E", "message": "m"}}

    def answer(ask: ops.Ask) -> dict[str, Any]:
        body = dict(valid, state=rng.choice(["done", "dead", "cancelled", "expired", "running"]))
        if rng.random() < 0.3:
            body["result"] = rng.choice([rng.randbytes(5), b"\xc1", inputs.junk()])
        if rng.random() < 0.3:
            body["task"] = dict(body["task"], **{rng.choice(["id", "queue", "attempt"]): inputs.junk()})
        return inputs.mutate(body) if rng.random() < 0.8 else {}

    operations = [lambda: ops.status(nodes, "t", None), lambda: ops.status(nodes, None, None),
                  lambda: ops.cancel(nodes, "t"), lambda: ops.tasks(None, None, 10),
                  lambda: ops.dead("list", None, None, 10), lambda: ops.receive("q", 1.0, 1.0),
                  lambda: ops.ack("t", 1, None), lambda: ops.nack("t", 1, "e", True, None),
                  lambda: ops.wait_result(nodes, "t", 0.0, None, 1.0)]
    kinds: dict[str, int] = {}
    for i in range(EXAMPLES // 4):
        make = operations[i % len(operations)]
        try:
            value = ops.run(make(), answer)
            if i % len(operations) == len(operations) - 1:        # a RESULT answer, as the handle reads it
                decode_outcome("t", value)
            elif i % len(operations) == 5 and value is not None:  # a received task
                ReceivedTask(value)
            kinds["returned"] = kinds.get("returned", 0) + 1
        except MiyaqError as err:
            kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
        except Exception as exc:
            raise AssertionError(f"seed {SEED}, call {i}: a caller got {exc!r}") from exc
    assert kinds.get("returned") and kinds.get("ProtocolError"), kinds
