"""Inputs for the fuzz test (tests/test_fuzz.py): a seeded generator of
service commands, peer commands, replication stream messages and answers to
a node's own peer requests.

Each is mostly *valid-looking* -- a correct body with one field made wrong
(another type, out of range, huge, deeply nested, NaN) or one field missing
-- and sometimes plain garbage (random values, wrong frame counts, bodies
that are not msgpack), so inputs get past the first checks and reach the
code behind them.
"""
from __future__ import annotations

import random
from typing import Any

import msgpack

from miyaq.cluster.peer_requests import QUERY, REPLICATE, SYNC
from miyaq.cluster.stream_numbering import topic
from miyaq.config import NodeConfig
from miyaq.protocol import commands as c
from miyaq.protocol.recordrow import copy_row
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.records import task_record, transfer_record

QUEUES = ["q1", "q2", "emails", "z.z:z-z_z"]
NAMES = ["echo", "add", "send"]
STATES = ["scheduled", "ready", "running", "retrying", "dead", "done", "cancelled", "expired",
          "started-elsewhere", "unknown", "later", "moved", ""]
SERVICE = [c.SUBMIT, c.STATUS, c.TASK, c.CANCEL, c.RESULT, c.TASKS, c.DEAD, c.RECEIVE, c.ACK, c.NACK, c.RING,
           c.WITHDRAW, c.READY, c.HEARTBEAT, c.CREDIT, c.DONE, c.FAILED, c.TOUCH, c.RETURN, c.BYE]


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


class Inputs:
    def __init__(self, rng: random.Random, node_id: str, peer_id: str, now: float) -> None:
        self.rng = rng
        self.node_id = node_id
        self.peer_id = peer_id
        self.now = now
        self.config = NodeConfig()
        self.ids: list[str] = []
        self.n = 0
        self.seq = 0
        self.incarnation = 77

    # -- values ------------------------------------------------------------------------
    def junk(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(14 if depth < 3 else 8)     # from depth 3: hashable (a map's keys)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice([0, -1, 1, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63), 2**64 - 1, r.randrange(-999, 999)])
        if kind == 3:
            return r.choice([0.0, -0.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), r.random()])
        if kind == 4:
            return r.choice(["", "x", "\n", "é" * 70, "a\x00b", "q1", "done", "running", self.known_id(),
                             "0" * r.randrange(60, 300)])
        if kind == 5:
            return r.choice([b"", b"\x00", b"\xc1", r.randbytes(r.randrange(1, 64))])
        if kind == 6:
            return self.known_id()
        if kind == 7:
            return r.choice(STATES)
        if kind == 8:
            return "x" * r.choice([1000, 70_000]) if r.random() < 0.5 else b"y" * r.choice([1000, 70_000])
        if kind == 9:
            return [self.junk(depth + 1) for _ in range(r.randrange(0, 5))]
        if kind == 10:
            return {self.junk(3): self.junk(depth + 1) for _ in range(r.randrange(0, 5))}
        if kind == 11:
            return self.deep(r.choice([50, 200, 600]))
        if kind == 12:
            return {"type": self.junk(depth + 1), "message": self.junk(depth + 1)}
        return [self.known_id(), r.randrange(0, 4), self.junk(depth + 1)]

    def deep(self, levels: int) -> Any:
        value: Any = "bottom"
        for i in range(levels):
            value = [value] if i % 2 else {"k": value}
        return value

    def known_id(self) -> str:
        if self.ids and self.rng.random() < 0.8:
            return self.rng.choice(self.ids)
        return f"f{self.rng.randrange(100_000)}"

    def new_id(self) -> str:
        self.n += 1
        task_id = f"fz{self.n}"
        self.ids.append(task_id)
        if len(self.ids) > 300:
            del self.ids[:100]
        return task_id

    def mutate(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with one field made wrong, removed, or a junk field added."""
        r = self.rng
        body = dict(body)
        roll = r.random()
        keys = [k for k in body if r.random() < 0.3 or k not in ("req", "from")]
        if keys and roll < 0.7:
            body[r.choice(keys)] = self.junk()
        elif keys and roll < 0.85:
            del body[r.choice(keys)]
        else:
            body[self.junk(3) if r.random() < 0.5 else "surprise"] = self.junk()
        return body

    def maybe_mutate(self, body: dict[str, Any], p: float = 0.6) -> dict[str, Any]:
        return self.mutate(body) if self.rng.random() < p else body

    # -- tasks and records ---------------------------------------------------------------
    def task_wire(self) -> dict[str, Any]:
        r = self.rng
        wire: dict[str, Any] = {"id": self.new_id(), "queue": r.choice(QUEUES), "body": r.randbytes(r.randrange(0, 40))}
        if r.random() < 0.15:
            wire.update(url=r.choice(["http://127.0.0.1:9/x", "https://example.invalid/h"]), method="PUT",
                        headers={"X-A": "b"})
        else:
            wire["name"] = r.choice(NAMES)
        for key, make in (("priority", lambda: r.randrange(-3, 4)), ("countdown", lambda: r.choice([0, 0.05, 60])),
                          ("ttl", lambda: r.choice([0.1, 60])), ("key", lambda: f"k{r.randrange(20)}"),
                          ("max_retries", lambda: r.randrange(0, 3)), ("timeout", lambda: r.choice([0.2, 30])),
                          ("at_most_once", lambda: True), ("replicas", lambda: r.randrange(1, 3)),
                          ("offset", lambda: r.choice([0.0, 0.1])), ("resent", lambda: True)):
            if r.random() < 0.2:
                wire[key] = make()
        return wire

    def record(self) -> dict[str, Any]:
        """A task record as another node sends it: a submit's copy or a transfer."""
        r = self.rng
        wire = self.task_wire()
        wire.pop("url", None) if "name" in wire else None
        task = task_from_wire(wire, self.now, self.config)
        task.holders = (self.node_id, self.peer_id) if r.random() < 0.9 else (self.peer_id,)
        if r.random() < 0.4:
            task.state = r.choice(["scheduled", "ready", "running", "retrying", "dead"])
            task.attempt = r.randrange(0, 3)
            task.lease_end = self.now + 30
            if r.random() < 0.3:
                task.error = {"type": "E", "message": "failed", "status": 500}
            return transfer_record(task)
        out = task_record(task)
        out.pop("rank", None)
        return out

    def replicated(self) -> Any:
        """A REPLICATE's record in peer protocol 2: a submit's copy as a row
        (miyaq.protocol.recordrow) when it is one, else the map."""
        return copy_row(self.record())

    def mutate_row(self, row: Any) -> Any:
        """``row`` (a row, or a map) with one value made wrong, a value
        removed or added (another length), or a row of junk."""
        r = self.rng
        if not isinstance(row, list):
            return self.mutate(row)
        row = list(row)
        roll = r.random()
        if roll < 0.7:
            row[r.randrange(len(row))] = self.junk()
        elif roll < 0.8:
            del row[r.randrange(len(row))]
        elif roll < 0.9:
            row.insert(r.randrange(len(row) + 1), self.junk())
        else:
            row = [self.junk() for _ in range(r.choice([0, 1, len(row), 40]))]
        return row

    def event(self) -> list[Any]:
        r = self.rng
        task_id = self.known_id()
        op = r.choice("STFRDVP")
        event: list[Any] = {
            "S": ["S", task_id, r.randrange(1, 3), self.now + 30, r.random() < 0.2],
            "T": ["T", task_id, self.now + 30],
            "F": ["F", task_id, r.choice(["done", "cancelled", "expired", "started-elsewhere"]),
                  r.choice([None, b"\x01"]), None],
            "R": ["R", task_id, r.randrange(0, 3), r.choice([0.0, self.now + 1]), {"type": "E", "message": "m"}],
            "D": ["D", task_id, 2, {"type": "E", "message": "m"}],
            "V": ["V", task_id], "P": ["P", task_id]}[op]
        if r.random() < 0.5:
            i = r.randrange(len(event))
            event[i] = self.junk()
        elif r.random() < 0.2:
            event = event[:r.randrange(len(event))]
        return event

    def outcome(self) -> list[Any]:
        return [self.rng.choice(STATES), self.rng.choice([None, b"res", self.junk()]),
                self.rng.choice([None, {"type": "E", "message": "m"}, self.junk()])]

    # -- service commands ------------------------------------------------------------------
    def service_body(self, command: bytes) -> dict[str, Any]:
        """A correct body for ``command`` (requests carry ``req``)."""
        r = self.rng
        req = r.randrange(1 << 30)
        wait_req = r.randrange(32)       # long-polls: few numbers, so that WITHDRAWs name some waiting ones
        short = r.choice([0, 0, 0.01, 0.05])
        bodies: dict[bytes, Any] = {
            c.SUBMIT: lambda: {"tasks": [self.task_wire() for _ in range(r.randrange(1, 4))]},
            c.STATUS: lambda: {"req": req},
            c.TASK: lambda: {"req": req, "id": self.known_id()},
            c.CANCEL: lambda: {"req": req, "id": self.known_id()},
            c.RESULT: lambda: {"req": wait_req, "id": self.known_id(), "timeout": short},
            c.TASKS: lambda: {"req": req, "queue": r.choice(QUEUES), "state": r.choice(STATES[:5]), "limit": 5},
            c.DEAD: lambda: {"req": req, "op": r.choice(["list", "retry", "purge"]), "ids": [self.known_id()]},
            c.RECEIVE: lambda: {"req": wait_req, "queues": [r.choice(QUEUES)], "timeout": short},
            c.ACK: lambda: {"req": req, "id": self.known_id(), "attempt": r.randrange(0, 3), "result": b"ok"},
            c.NACK: lambda: {"req": req, "id": self.known_id(), "attempt": r.randrange(0, 3),
                             "error": {"type": "E", "message": "m"}, "retry": r.random() < 0.5, "delay": 0.05,
                             "returned": r.random() < 0.3},
            c.RING: lambda: {"req": req},
            c.WITHDRAW: lambda: {"reqs": [r.randrange(32) for _ in range(r.randrange(1, 4))]},
            c.READY: lambda: {"worker": f"w{r.randrange(5)}", "queues": [r.choice(QUEUES)], "names": NAMES,
                              "capacity": r.randrange(1, 4), "credit": 1, "periodic": self.schedules(),
                              "pid": r.randrange(1, 1 << 22), "host": f"box-{r.randrange(3)}",
                              "concurrency": r.randrange(1, 9), "pool": r.choice(["gevent", "threads"])},
            c.HEARTBEAT: lambda: {"worker": f"w{r.randrange(5)}", "side": r.random() < 0.5},
            c.CREDIT: lambda: {"n": r.randrange(1, 4)},
            c.DONE: lambda: {"done": [[self.known_id(), r.randrange(0, 3), r.choice([None, b"r"])]]},
            c.FAILED: lambda: {"failed": [[self.known_id(), r.randrange(0, 3),
                                           {"type": "E", "message": "m", "retry": r.random() < 0.5}]]},
            c.TOUCH: lambda: {"ids": [self.known_id()]},
            c.RETURN: lambda: {"ids": [self.known_id()], "credit": r.random() < 0.5},
            c.BYE: lambda: {"worker": f"w{r.randrange(5)}"},
        }
        return bodies[command]()

    def schedules(self) -> list[dict[str, Any]]:
        r = self.rng
        if r.random() < 0.9:
            return []
        spec: dict[str, Any] = {"name": f"s{r.randrange(3)}", "task": r.choice(NAMES), "queue": r.choice(QUEUES)}
        if r.random() < 0.5:
            spec["every"] = r.choice([0.1, 0.5, 3600])
        else:
            spec["cron"] = r.choice(["* * * * *", "@hourly", "0 0 31 2 *", "*/0 * * * *", "61 * * * *", "a b c d e"])
        return [self.maybe_mutate(spec, 0.3)]

    def with_deep(self, body: dict[str, Any]) -> bytes:
        """``body`` packed with one more field nested as deep as msgpack unpacks
        (about 1,020 levels: too deep for msgpack to pack again)."""
        body = {k: v for k, v in body.items() if k != "req"}
        assert len(body) < 15
        raw = pack(body)
        field = self.rng.choice([b"\xa3req", b"\xa2id", b"\xa5tasks", b"\xa4done", b"\xa5queue"])
        return bytes([0x80 | (len(body) + 1)]) + raw[1:] + field + b"\x91" * self.rng.randrange(1010, 1023) + b"\xc0"

    def service_message(self) -> list[bytes]:
        r = self.rng
        roll = r.random()
        command = r.choice(SERVICE)
        if roll < 0.02:
            return [c.TAG, command, self.with_deep(self.service_body(command))]
        if roll < 0.80:
            return [c.TAG, command, pack(self.maybe_mutate(self.service_body(command)))]
        if roll < 0.88:
            return [c.TAG, command, pack(self.junk())]
        if roll < 0.92:
            return [c.TAG, command, r.randbytes(r.randrange(0, 30))]
        if roll < 0.96:
            return [c.TAG, command] + [pack({"req": 1})] * r.choice([0, 2, 5, 40])
        return [r.choice([b"MQ2", b"", c.TAG]), r.choice([b"NOPE", c.DISPATCH, b"x" * 300, command]), pack({})]

    # -- peer commands -------------------------------------------------------------------------
    def peer_message(self) -> list[bytes]:
        r = self.rng
        command = r.choice([REPLICATE, REPLICATE, REPLICATE, QUERY, SYNC, b"HELLO"])
        if command == REPLICATE:
            # Half in peer protocol 2: submits' copies as rows, now and then in
            # a request that says version 1 (a row is then refused), or none.
            rows = r.random() < 0.5
            make, spoil = (self.replicated, self.mutate_row) if rows else (self.record, self.mutate)
            body: Any = {"tasks": [make() for _ in range(r.randrange(1, 4))]}
            if rows and (proto := r.choice([2, 2, 2, 2, 1, None])) is not None:
                body["proto"] = proto
            if r.random() < 0.7:
                tasks = body["tasks"]
                i = r.randrange(len(tasks))
                tasks[i] = spoil(tasks[i])
        elif command == QUERY:
            body = {"ids": [self.known_id() for _ in range(r.randrange(0, 5))]}
        else:
            body = {"cursor": r.choice([0, 1, 5, -1, 10**9])}
        body = self.maybe_mutate(body, 0.2)
        if r.random() < 0.95:
            body.update(req=r.randrange(1 << 30), **{"from": self.peer_id if r.random() < 0.8 else self.junk()})
        if r.random() < 0.05:
            return [c.TAG, command, r.randbytes(20)]
        if r.random() < 0.02 and len(body) < 15:
            return [c.TAG, command, self.with_deep(body)]
        return [c.TAG, command, pack(body)]

    # -- the replication stream ------------------------------------------------------------------
    def stream_message(self) -> list[bytes]:
        r = self.rng
        roll = r.random()
        if roll < 0.05:
            self.incarnation += 1              # the peer restarted: a new incarnation
        if roll < 0.85:
            self.seq += 1 if r.random() < 0.95 else r.randrange(2, 5)
            body: dict[str, Any] = {"src": self.peer_id, "inc": self.incarnation, "seq": self.seq, "epoch": 1}
            if r.random() < 0.1:
                body["hb"] = True
            else:
                body["ev"] = [self.event() for _ in range(r.randrange(1, 6))]
            return [topic(self.node_id), pack(self.maybe_mutate(body, 0.15))]
        if roll < 0.92:
            return [topic(self.node_id), pack(self.junk())]
        return [topic(self.node_id)] + [r.randbytes(8)] * r.choice([0, 2, 3])

    # -- answers to the node's own requests -----------------------------------------------------------
    def answer(self, command: bytes, request: dict[str, Any]) -> dict[str, Any]:
        r = self.rng
        if command == SYNC:
            body: dict[str, Any] = {"tasks": [self.maybe_mutate(self.record(), 0.5) for _ in range(r.randrange(0, 4))],
                                    "next": r.choice([None, None, None, 1, 0, -5, "x"])}
            if r.random() < 0.7:
                body["stones"] = [[self.known_id()] + self.outcome() + [r.choice([None, "k1", 5])]
                                  for _ in range(r.randrange(0, 4))]
            if r.random() < 0.3:        # purge marks (since 2026-12-07): [id, at], some malformed
                body["purged"] = [r.choice([[self.known_id(), self.now - r.random() * 60], [self.known_id(), self.now],
                                            [self.known_id()], [self.known_id(), -1.0], [self.known_id(), 1e20],
                                            [self.junk(), self.now], self.junk()])
                                  for _ in range(r.randrange(0, 4))]
        elif command == QUERY:
            ids = request.get("ids") if isinstance(request.get("ids"), list) else []
            body = {"states": {i: r.choice([self.outcome(), ["dead"], ["unknown"],
                                            ["running", False, 0, self.now + 30], ["scheduled", True, 1, self.now],
                                            self.junk()])
                               for i in ids if r.random() < 0.9}}
        else:
            # The test's own check tasks are left alone: a peer saying it
            # finished them would be right to finish them here too.
            rows = [dict(zip(("id",), t)) for t in request.get("tasks") or () if isinstance(t, list)]
            ids = [t.get("id") for t in [*(request.get("tasks") or ()), *rows]
                   if isinstance(t, dict) and not str(t.get("id")).startswith("check-")]
            body = {"ids": [i for i in ids if r.random() < 0.8]}
            if r.random() < 0.3:
                body["finished"] = {i: self.outcome() for i in ids if r.random() < 0.5}
        # What p1 says it speaks: the node then writes to it in that version
        # (peer protocol 2: submits' copies as rows), or in 1.
        speaks = r.choice([2, 2, 2, 1, None, 3, self.junk()])
        if speaks is not None:
            body["speaks"] = speaks
        return self.maybe_mutate(body, 0.3)
