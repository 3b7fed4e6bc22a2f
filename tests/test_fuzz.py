"""Fuzz the node's service and peer commands (issue 9).

A clustered node built by :func:`miyaq.node.assemble.build_node` runs in
this test's gevent hub, in a fixed ring with a member ``p1`` the test plays
(tests/peer_fixtures.py). A seeded generator (tests/fuzz_inputs.py) sends it,
over real sockets, service commands, peer commands (REPLICATE, QUERY, SYNC;
a REPLICATE's copies as maps or, in peer protocol 2, as rows)
and replication stream messages -- most of them valid-looking with one field
wrong, some garbage -- and answers the node's own requests to ``p1`` (SYNC,
QUERY, REPLICATE) the same way, saying it speaks peer protocol 2, 1 or
something else (the node then writes its copies to p1 as rows, or maps).

After every batch the test checks that no input crashed a node, left a task
stuck, or made a later valid request fail: the node is running and no
greenlet crashed or reported a failure; no reply was ``internal``; every live
task can move (core/invariants.py: a ready task is in a lane, a running one
has a lease and a consumer, a waiting one a timer), counts and byte sums
match the table, and every stored task and tombstone passes validation
(protocol/recordspec.py); STATUS answers; a valid SUBMIT, RECEIVE, ACK and
RESULT round trip works.

CI runs ``MIYAQ_FUZZ_EXAMPLES`` inputs (default 1,500: seconds). A long run:
``MIYAQ_FUZZ_EXAMPLES=1000000 MIYAQ_FUZZ_SECONDS=3600
MIYAQ_FUZZ_REPORT=fuzz.json pytest tests/test_fuzz.py`` (``MIYAQ_FUZZ_SEED``
picks the seed; a failure names the seed and batch to replay it).
"""
from __future__ import annotations

import json
import os
from itertools import islice
import random
import time
from typing import Any

import msgpack
import pytest
from fuzz_inputs import Inputs, pack
from peer_fixtures import FixedRing

from miyaq.cluster.peer_requests import ANSWER
from miyaq.cluster.ring_view import Member, local_member
from miyaq.config import NodeConfig
from miyaq.gateway.request import json_response
from miyaq.core import invariants
from miyaq.node.assemble import build_node
from miyaq.protocol import commands as c
from miyaq.runtime import LOG, Supervisor, green
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.testing.harness import free_port

EXAMPLES = int(os.environ.get("MIYAQ_FUZZ_EXAMPLES", "1500"))
SECONDS = float(os.environ.get("MIYAQ_FUZZ_SECONDS", "0"))       # 0: bounded by the count only
SEED = int(os.environ.get("MIYAQ_FUZZ_SEED", "9"))
REPORT = os.environ.get("MIYAQ_FUZZ_REPORT", "")
BATCH = 100
QUIET = 0.02          # seconds without a reply that end a batch's drain
CHECK_QUEUE = "fuzz-check"     # no generated input uses it

# A long run by count gets a guard that grows with it (about 0.6 ms an input is
# measured; 5 ms allowed): ``timeout(None)`` would have meant the suite's 60 s.
pytestmark = pytest.mark.timeout(max(120, SECONDS + 600) if SECONDS else max(120, EXAMPLES // 200))


class Rig:
    """The node, the sockets the test speaks through, and p1's answerer."""

    def __init__(self, seed: int) -> None:
        self.factory = SocketFactory(green=True)
        peer_port, pub_port = free_port(), free_port()
        self.p1 = Member(node_id="p1", service=f"tcp://127.0.0.1:{free_port()}",
                         peer=f"tcp://127.0.0.1:{peer_port}", pub=f"tcp://127.0.0.1:{pub_port}")
        self.p1_router = self.factory.router(self.p1.peer, audience="peer")
        self.p1_pub = self.factory.publisher(self.p1.pub)
        self.config = NodeConfig(port=free_port(), peer_port=free_port(), pub_port=free_port(), http_port=0,
                                 node_id="fz", replicas=2, min_acks=1, replica_offset=0.3, heartbeat=0.25,
                                 max_tasks=3000, max_tombstones=2000, max_dead=300, max_waiters=300,
                                 shutdown_grace=0.5, replication_timeout=0.5)
        self.node = build_node(self.config, coordinator=FixedRing(local_member(self.config), [self.p1])).start()
        self.engine = self.node.core.engine
        self.service = self.factory.dealer(f"tcp://127.0.0.1:{self.config.port}")
        self.peer = self.factory.dealer(f"tcp://127.0.0.1:{self.config.peer}")
        self.inputs = Inputs(random.Random(seed), "fz", "p1", time.time())
        self.answers = Inputs(random.Random(seed + 1), "fz", "p1", time.time())
        self.internal: list[str] = []
        self.answered = 0
        self.rows_sent = 0
        self.supervisor = Supervisor("fuzz p1")
        self.supervisor.spawn("fuzz p1 answers", self._answer_requests, policy=LOG)

    def _answer_requests(self) -> None:
        """Play p1's peer port: answer most requests the node sends it, fuzzed."""
        while True:
            identity, _, command, raw = self.p1_router.recv_multipart()
            self.answered += 1
            if self.answers.rng.random() < 0.1:
                continue                    # silence
            try:
                request = msgpack.unpackb(raw, raw=False)
            except Exception:
                continue
            if isinstance(request, dict) and request.get("proto") == 2 and any(
                    isinstance(t, list) for t in request.get("tasks") or ()):
                self.rows_sent += 1     # p1 said it speaks 2: copies as rows (peer protocol 2)
            body = self.answers.answer(command, request)
            body["req"] = request.get("req")
            try:
                self.p1_router.send_multipart([identity, c.TAG, ANSWER, pack(body)], zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                pass

    # -- one batch ---------------------------------------------------------------------------
    def send(self, frames: list[bytes], where: str) -> None:
        sock = {"service": self.service, "peer": self.peer, "stream": self.p1_pub}[where]
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass

    def drain(self) -> None:
        """Read every reply until QUIET passes without one; note ``internal`` ones."""
        poller = self.factory.poller()
        poller.register(self.service, zmq.POLLIN)
        poller.register(self.peer, zmq.POLLIN)
        while True:
            ready = dict(poller.poll(QUIET * 1000))
            if not ready:
                return
            for sock in ready:
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) == 3 and frames[1] in (c.ERROR, ANSWER):
                        body = msgpack.unpackb(frames[2], raw=False, strict_map_key=False)
                        if isinstance(body, dict) and body.get("code") == "internal":
                            self.internal.append(f"{frames[1]!r}: {body.get('message')}")

    # -- the checks ---------------------------------------------------------------------------
    def ask(self, command: bytes, body: dict[str, Any], sock: Any = None) -> tuple[bytes, dict[str, Any]]:
        """A request on ``sock``, or a socket of its own (so no fuzz reply gets in the way)."""
        own = sock is None
        if own:
            sock = self.factory.dealer(f"tcp://127.0.0.1:{self.config.port}")
        try:
            sock.send_multipart([c.TAG, command, pack(body)])
            with green.Timeout(10):
                while True:
                    _, cmd, raw = sock.recv_multipart()
                    answer = msgpack.unpackb(raw, raw=False)
                    if cmd in (c.REPLY, c.ERROR) and answer.get("req") == body.get("req"):
                        return cmd, answer
        finally:
            if own:
                sock.close(linger=0)

    def check(self, where: str) -> None:
        node = self.node
        assert node.crashed is None and node.supervisor.fatal is None, f"{where}: node died: {node.crashed!r}"
        assert not node.supervisor.crashes, f"{where}: greenlets failed: {dict(node.supervisor.crashes)}"
        assert not self.internal, f"{where}: internal errors: {self.internal[:5]}"
        problems = self._problems()
        assert problems == [], f"{where}: {problems[:10]} {self._describe(problems[0])}"
        command, status = self.ask(c.STATUS, {"req": 1})
        assert command == c.REPLY and isinstance(status["queues"], dict), (where, command, status)
        # what GET /workers, /status and /tasks/{id} answer in JSON: nothing stored may make them fail
        json_response({"workers": node.core.workers.describe(10_000), "status": status})
        table = self.engine.table
        for task_id in [*islice(table.live, 2_000), *islice(table.dead, 2_000)]:
            json_response({"task": self.engine.info(task_id)})
        self._round_trip(where)

    def _describe(self, problem: str) -> dict[str, Any] | None:
        """The task a problem line names, as the failure message shows it."""
        task_id = problem.split("'")[1] if problem.count("'") >= 2 else ""
        task = self.engine.table.live.get(task_id) or self.engine.table.dead.get(task_id)
        if task is not None:
            return {**task.header(), "standby": task.standby, "rank": task.rank, "timer_at": task.timer_at}
        stone = self.engine.table.tombstone(task_id)
        return stone.info() if stone is not None else None

    def _problems(self) -> list[str]:
        """The invariants; a standby copy asking the other holders has no timer
        until its QUERY ends (answered or silent)."""
        return invariants.problems(self.engine, waiting=self.node.role.standby.waiting())

    def _round_trip(self, where: str) -> None:
        """A valid task, submitted, received, acknowledged and its result read."""
        role = self.node.role
        n = 0
        while role.holders(task_id := f"check-{self.inputs.n}-{n}", 2)[0] != "fz":
            n += 1                       # a task this node runs first (rank 0)
        wire = {"id": task_id, "name": "echo", "queue": CHECK_QUEUE, "replicas": 2}
        sock = self.factory.dealer(f"tcp://127.0.0.1:{self.config.port}")   # one consumer throughout
        try:
            self._check_task(where, sock, task_id, wire)
        finally:
            sock.close(linger=0)

    def _check_task(self, where: str, sock: Any, task_id: str, wire: dict[str, Any]) -> None:
        sock.send_multipart([c.TAG, c.SUBMIT, pack({"tasks": [wire]})])
        with green.Timeout(10):
            while (frames := sock.recv_multipart())[1] != c.SUBMITTED:
                pass
        [[_, status, detail]] = msgpack.unpackb(frames[2], raw=False)["results"]
        assert status == c.ACCEPTED, (where, status, detail)
        command, got = self.ask(c.RECEIVE, {"req": 2, "queues": [CHECK_QUEUE]}, sock)
        assert command == c.REPLY and got["task"] and got["task"]["id"] == task_id, (where, got,
                                                                                  self._describe(f"'{task_id}'"))
        attempt = got["task"]["attempt"]
        command, ok = self.ask(c.ACK, {"req": 3, "id": task_id, "attempt": attempt, "result": b"fine"}, sock)
        assert command == c.REPLY and ok["ok"], (where, ok)
        command, result = self.ask(c.RESULT, {"req": 4, "id": task_id}, sock)
        assert command == c.REPLY and result["state"] == "done" and result["result"] == b"fine", (where, result)

    def tidy(self) -> None:
        """Keep the table small (the checks are O(n)): cancel and purge what the fuzz left."""
        now = time.time()
        for task_id in list(self.engine.table.live)[: len(self.engine.table.live) - 200]:
            self.engine.cancel(task_id, now)
        self.engine.dead_purge(None)

    def close(self) -> None:
        self.supervisor.kill()
        self.node.stop(0)
        self.factory.close()


def test_fuzz_service_and_peer_commands_never_break_the_node():
    """Fuzz (seeded): service and peer commands, stream messages and answers
    to the node's own requests, valid-looking with one field wrong or plain
    garbage. After every batch of 100: no crash, no ``internal``, nothing
    stuck, everything stored valid, and STATUS and a SUBMIT -> RESULT round
    trip still work."""
    rig = Rig(SEED)
    started = time.monotonic()
    sent = 0
    batches = 0
    try:
        rig.check("before any input")
        while sent < EXAMPLES and not (SECONDS and time.monotonic() - started > SECONDS):
            batch = []
            for _ in range(BATCH):
                where = rig.inputs.rng.choices(["service", "peer", "stream"], weights=[55, 30, 15])[0]
                frames = {"service": rig.inputs.service_message, "peer": rig.inputs.peer_message,
                          "stream": rig.inputs.stream_message}[where]()
                batch.append((where, frames))
                rig.send(frames, where)
            sent += len(batch)
            batches += 1
            rig.drain()
            try:
                rig.check(f"seed {SEED}, batch {batches}")
            except AssertionError as failure:
                last = [(w, [f[:80] for f in fr]) for w, fr in batch[-20:]]
                raise AssertionError(f"{failure}\n-- seed {SEED}, batch {batches}; its last inputs: {last}") from None
            if batches % 10 == 0:
                rig.tidy()
    finally:
        elapsed = time.monotonic() - started
        if REPORT:
            with open(REPORT, "w") as fh:
                json.dump({"seed": SEED, "inputs": sent, "answers": rig.answered, "batches": batches,
                           "seconds": round(elapsed, 1), "records_refused": dict(rig.node.core.refusals.counts)
                           and {f"{s}/{f}": n for (s, f), n in rig.node.core.refusals.counts.items()},
                           "errors": dict(rig.node.core.endpoint.errors)}, fh, indent=1)
        rig.close()
    assert sent >= EXAMPLES or SECONDS
    assert rig.node.core.refusals.total() > 0         # the generator reached the validation
    assert rig.rows_sent > 0 or EXAMPLES < 1500       # and the node wrote to p1 in peer protocol 2
