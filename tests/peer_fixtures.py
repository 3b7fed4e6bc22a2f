"""A clustered node without ZooKeeper, and a fake peer the test plays.

:class:`FixedRing` is a coordinator whose ring never changes: the local node
(its leader) and the members given. :class:`FakePeer` binds, with plain
pyzmq sockets in the test's thread, the peer ROUTER and the replication PUB
of a member the node believes in, so a test can answer the node's requests
(SYNC, QUERY) and publish stream events to it as that member would -- or as a
broken one would.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

import msgpack
import zmq

from miyaq.cluster.membership import Coordinator
from miyaq.cluster.peer_requests import ANSWER, REPLICATE
from miyaq.cluster.ring_view import Member, RingView, local_member
from miyaq.cluster.stream_numbering import topic
from miyaq.config import NodeConfig
from miyaq.errors import ConfigError
from miyaq.protocol.commands import ERROR, REPLY, STATUS, SUBMIT, SUBMITTED, TAG, TASK
from miyaq.testing.harness import ThreadNode, free_port

WAIT = 15.0    # seconds: a guard against a hang, not a timing assertion


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


class FixedRing(Coordinator):
    """The local node and ``others``, epoch 1, led by ``leader`` (the local
    node when None; several nodes of one ring each get a FixedRing naming
    the same leader)."""

    def __init__(self, local: Member, others: list[Member], leader: str | None = None) -> None:
        super().__init__(local)
        self._members = {m.node_id: m for m in [local, *others]}
        self._leader = leader or local.node_id
        self._leads = self._leader == local.node_id
        self._view = RingView.empty()
        self._running = False

    def start(self) -> None:
        self._running = True
        self._view = RingView(epoch=1, members=dict(self._members), leader=self._leader)
        self._deliver_view(self._view)
        if self._leads:
            self._deliver_leadership(True, 1)

    def stop(self) -> None:
        if self._running:
            self._running = False
            if self._leads:
                self._deliver_leadership(False, 1)

    @property
    def view(self) -> RingView:
        return self._view

    @property
    def is_leader(self) -> bool:
        return self._running and self._leads

    def join(self, node_id: str) -> None:
        raise ConfigError("a fixed ring does not change")

    leave = set_weight = join     # type: ignore[assignment]

    def registered(self) -> dict[str, Member]:
        return dict(self._members)


class FakePeer:
    """Member ``node_id``'s peer ROUTER and PUB, bound by the test."""

    def __init__(self, node_id: str = "p1") -> None:
        self.node_id = node_id
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.peer_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.service_port = free_port()
        self.seq = 0
        self.incarnation = 4242
        self.member = Member(node_id=node_id, service=f"tcp://127.0.0.1:{self.service_port}",
                             peer=f"tcp://127.0.0.1:{self.peer_port}", pub=f"tcp://127.0.0.1:{self.pub_port}")

    # -- the node asks this peer ------------------------------------------------------
    def next_request(self, command: bytes, timeout: float = WAIT) -> tuple[bytes, dict[str, Any]]:
        """The node's next request of ``command`` (others are dropped unanswered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.router.poll(100):
                identity, tag, cmd, body = self.router.recv_multipart()
                if cmd == command:
                    return identity, msgpack.unpackb(body, raw=False)
        raise AssertionError(f"the node sent no {command!r} request")

    def answer(self, identity: bytes, req: Any, body: dict[str, Any]) -> None:
        self.router.send_multipart([identity, TAG, ANSWER, pack({**body, "req": req})])

    # -- this peer tells the node ---------------------------------------------------------
    def publish(self, dest: str, events: list[Any]) -> None:
        """One stream message of ``events`` for ``dest``, next in sequence."""
        self.seq += 1
        self.pub.send_multipart([topic(dest), pack({"src": self.node_id, "inc": self.incarnation,
                                                     "seq": self.seq, "epoch": 1, "ev": events})])

    def close(self) -> None:
        self.ctx.destroy(linger=0)


class PeerDealer:
    """A DEALER to the node's peer port, speaking as member ``sender``."""

    def __init__(self, endpoint: str, sender: str = "p1") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sender = sender
        self.req = 0

    def request(self, command: bytes, body: dict[str, Any]) -> dict[str, Any]:
        self.req += 1
        self.sock.send_multipart([TAG, command, pack({**body, "req": self.req, "from": self.sender})])
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                _, _, raw = self.sock.recv_multipart()
                answer = msgpack.unpackb(raw, raw=False)
                if answer.get("req") == self.req:
                    return answer
        raise AssertionError(f"no answer to {command!r}")

    def replicate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request(REPLICATE, {"tasks": records})

    def close(self) -> None:
        self.ctx.destroy(linger=0)


class ServiceDealer(PeerDealer):
    """A raw DEALER to the node's service port: asks this node only (a
    Client would route by the ring, to the fake member too)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)

    def ask(self, command: bytes, body: dict[str, Any] | None = None) -> tuple[bytes, dict[str, Any]]:
        """Send a request; its REPLY or ERROR as (command, body)."""
        self.req += 1
        self.sock.send_multipart([TAG, command, pack({**(body or {}), "req": self.req})])
        return self._reply(lambda cmd, b: b.get("req") == self.req)

    def submit(self, wire: dict[str, Any]) -> list[Any]:
        """SUBMIT one task; its result ``[id, status, detail]``."""
        self.sock.send_multipart([TAG, SUBMIT, pack({"tasks": [wire]})])
        _, body = self._reply(lambda cmd, b: cmd == SUBMITTED)
        return body["results"][0]

    def submit_stored(self, wire: dict[str, Any]) -> list[Any]:
        """SUBMIT one task as :meth:`submit`, sent again while the node
        answers ``unavailable`` (nothing stored), as a client resends it: a
        node coordinates no submit for ``SUSPECT_AFTER_FREEZE`` after a
        freeze, and a node in a thread of the test process takes a stall of
        that process past ``STALL`` (a loaded machine) for one. Bounded by
        ``WAIT``; the last result ``[id, status, detail]``."""
        deadline = time.monotonic() + WAIT
        result = self.submit(wire)
        while _code(result) == "unavailable" and time.monotonic() < deadline:
            time.sleep(0.05)    # pacing of the resends, not a timing assertion
            result = self.submit(wire)
        return result

    def _reply(self, match: Any) -> tuple[bytes, dict[str, Any]]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                _, command, raw = self.sock.recv_multipart()
                body = msgpack.unpackb(raw, raw=False)
                if match(command, body):
                    return command, body
        raise AssertionError("the node did not answer")

    def status(self) -> dict[str, Any]:
        command, body = self.ask(STATUS)
        assert command == REPLY, body
        return body

    def task(self, task_id: str) -> dict[str, Any] | None:
        """TASK: the task's info, or None if this node does not know it."""
        command, body = self.ask(TASK, {"id": task_id})
        if command == ERROR:
            assert body["code"] == "not_found", body
            return None
        return body["task"]


def _code(result: list[Any]) -> str | None:
    detail = result[2] if len(result) > 2 else None
    return detail.get("code") if isinstance(detail, dict) else None


def submit_until_copied(service: ServiceDealer, peer: FakePeer) -> tuple[str, dict[str, Any]]:
    """SUBMIT one task through ``service`` until its REPLICATE reaches
    ``peer``: (the task's id, the REPLICATE's body). A submit the node
    answers first (it could not coordinate it yet) is followed by a new
    one, as a client would resend it; if none gets through, the error
    names the node's last answers."""
    answers: list[Any] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        task_id = uuid.uuid4().hex
        service.sock.send_multipart([TAG, SUBMIT, pack({"tasks": [{"id": task_id, "name": "send"}]})])
        while time.monotonic() < deadline:
            if peer.router.poll(50):
                _, _, command, body = peer.router.recv_multipart()
                request = msgpack.unpackb(body, raw=False)
                if command == REPLICATE and task_id in [r["id"] for r in request["tasks"]]:
                    return task_id, request
            if service.sock.poll(0):
                _, command, raw = service.sock.recv_multipart()
                answers.append((command, msgpack.unpackb(raw, raw=False)))
                break
    raise AssertionError(f"no REPLICATE reached the peer; the node's last answers: {answers[-3:]}")


def clustered_node(peer: FakePeer, **settings: Any) -> ThreadNode:
    """A node in a ring with ``peer``: every task has both as holders
    (replicas 2), a submit is acknowledged once stored here (min_acks 1), and
    standby copies wait an hour (nothing runs on its own during a test)."""
    settings.setdefault("replicas", 2)
    settings.setdefault("min_acks", 1)
    settings.setdefault("replica_offset", 3600.0)
    settings.setdefault("heartbeat", 0.25)

    def coordinator(config: NodeConfig) -> FixedRing:
        return FixedRing(local_member(config), [peer.member])

    # The harness picks the ports (service, peer = port + 1, PUB = port + 2),
    # so it picks them again if another process takes one before the node
    # binds it (miyaq.testing.harness); the node is t<port>.
    return ThreadNode(coordinator=coordinator, **settings)
