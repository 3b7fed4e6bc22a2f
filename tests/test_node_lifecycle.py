"""How a node is put together and how it lives and dies: the composition
root, the parts' lifecycle, the dispatch gate, the standalone role, and the
silent deaths that are no longer silent (each fault injected, then shown to
be logged, counted in ``miyaq_greenlet_crashes_total`` and either recovered
from or the node stopped).

Nodes here run in the test's own gevent hub (no thread), so a test can reach
into a part and inject a fault; every node is stopped at the end.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from hub_waits import until
from miyaq.cluster.holder_events import EventPublisher, apply_events
from miyaq.cluster.membership import StandaloneCoordinator
from miyaq.cluster import peer as peer_module
from miyaq.cluster.peer import PeerEndpoint
from miyaq.cluster.ring_view import local_member
from miyaq.cluster.role import ClusterRole
from miyaq.cluster.stream import ZmqStreamSubscriber
from miyaq.cluster.standalone import StandaloneRole
from miyaq.config import NodeConfig
from miyaq.core.consumers import Consumer
from miyaq.core.gate import RECONCILING, SHUTTING_DOWN, Gate
from miyaq.core.local_intake import LocalIntake
from miyaq.core.refusals import Refusals
from miyaq.errors import ShuttingDown
from miyaq.node.assemble import build_node
from miyaq.node.node import Node
from miyaq.protocol.commands import ACCEPTED
from miyaq.runtime import fairness
from miyaq.runtime import Supervisor, green, wall
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.store.task import RUNNING, Task
from miyaq.testing.harness import free_port


WAIT = 10.0   # a guard against a hang, never a timing assertion


@pytest.fixture
def local_node() -> Iterator[Callable[..., Node]]:
    """Factory: a node built by build_node and started in this thread's hub."""
    nodes: list[Node] = []

    def make(start: bool = True, **settings: Any) -> Node:
        settings.setdefault("port", free_port())
        settings.setdefault("http_port", 0)
        settings.setdefault("node_id", f"n{settings['port']}")
        settings.setdefault("shutdown_grace", 0.0)
        settings.setdefault("heartbeat", 0.25)
        node = build_node(NodeConfig(**settings))
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.stop(0)


def task(task_id: str, queue: str = "q") -> Task:
    now = wall()
    return Task(task_id, queue, "job", b"", created=now, eta=now)


class Collector(Consumer):
    def __init__(self, queues: list[str]) -> None:
        super().__init__(queues)
        self.got: list[Task] = []

    def deliver(self, tasks: list[Task]) -> bool:
        self.got.extend(tasks)
        return True


# -- the gate -------------------------------------------------------------------------------
def test_gate_opens_only_when_every_reason_is_released() -> None:
    """Two parts close the gate for their own reasons; one reopening cannot
    undo the other's, and the gate reports what holds it."""
    gate, opened = Gate(), []
    gate.on_open(lambda: opened.append(True))
    gate.close(SHUTTING_DOWN)
    gate.close(RECONCILING)
    gate.close(RECONCILING)
    assert not gate.is_open and gate.held() == [RECONCILING, SHUTTING_DOWN]
    gate.open(RECONCILING)
    assert not gate.is_open and gate.held() == [SHUTTING_DOWN] and opened == []
    gate.open("never held")
    gate.open(SHUTTING_DOWN)
    assert gate.is_open and gate.held() == [] and opened == [True]


def test_closed_gate_leases_nothing_and_reopening_dispatches(local_node: Callable[..., Node]) -> None:
    """While a reason holds the gate, ready tasks stay ready (and RECEIVE is
    refused with the reason); reopening dispatches them at once."""
    node = local_node()
    core = node.core
    core.gate.close(RECONCILING)
    consumer = Collector(["q"])
    core.dispatcher.grant(consumer, 10)
    core.engine.submit(task("t1"), wall())
    core.dispatcher.pump(wall())
    assert consumer.got == [] and core.status()["dispatch"] == {"open": False, "held": [RECONCILING]}
    with pytest.raises(ShuttingDown, match="reconciling"):
        core.endpoint.handlers[b"RECEIVE"](b"pull", {"queues": ["q"]}, wall())
    core.gate.open(RECONCILING)
    until(lambda: consumer.got, "the held task to be dispatched")
    assert [t.id for t in consumer.got] == ["t1"] and core.status()["dispatch"]["open"]


# -- the standalone role ------------------------------------------------------------------------
def test_standalone_role_is_a_ring_of_one_that_leads(local_node: Callable[..., Node]) -> None:
    node = local_node(http_port=free_port())
    role = node.role
    assert isinstance(role, StandaloneRole)
    config = node.config
    assert role.ring_info() == {
        "epoch": 1, "leader": node.id, "vnodes": 0,
        "members": {node.id: {"service": f"tcp://127.0.0.1:{config.port}", "share": 1.0, "weight": 1.0,
                              "http": f"http://127.0.0.1:{config.http_port}"}}}
    assert role.is_leader and role.members() == 1 and role.stats() is None
    assert node.status(wall())["cluster"] is None and node.status(wall())["periodic"]["leading"]
    acks: list[list[Any]] = []
    intake = role.new_intake(lambda identity, result: acks.append(result))
    assert isinstance(intake, LocalIntake)
    intake.submit(task("own"), wall(), b"me")
    assert acks == [["own", ACCEPTED, None]]


def test_clustered_node_is_assembled_with_an_injected_coordinator(local_node: Callable[..., Node]) -> None:
    """The seam the in-process cluster tests use: a clustered node built
    without ZooKeeper (a coordinator is given). Here a ring of one."""
    port = free_port()
    config = NodeConfig(port=port, node_id=f"c{port}", http_port=0)
    node = build_node(config, coordinator=StandaloneCoordinator(local_member(config)))
    try:
        node.start()
        assert isinstance(node.role, ClusterRole)
        until(lambda: node.role.members() == 1, "the ring view")
        acks: list[Any] = []
        node.role.intake.submit(task("c1"), wall(), lambda results: acks.extend(results))
        node.clockwork.wake(wall())
        until(lambda: acks, "the submit to be acknowledged")
        assert acks == [["c1", ACCEPTED, None]]
        assert node.core.directory.nodes() == [f"tcp://127.0.0.1:{port}"]
    finally:
        node.stop(0)


# -- stopping ---------------------------------------------------------------------------------
class BrokenPart:
    name = "broken"

    def __init__(self) -> None:
        self.killed = False

    def setup(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        raise RuntimeError("injected fault in stop")

    def kill(self) -> None:
        self.killed = True
        raise RuntimeError("injected fault in kill")


def test_stop_survives_parts_that_fail_to_stop(local_node: Callable[..., Node],
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Fault: a part's stop and kill both raise. Every other part still stops
    (the service socket is closed), the failures are logged and the node
    ends stopped."""
    node = local_node()
    broken = BrokenPart()
    node.parts.append(broken)
    with caplog.at_level(logging.ERROR, logger="miyaq.node.node"):
        node.stop(0)
    assert node.wait(0) and broken.killed
    assert node.core.endpoint._closed
    assert "stop of part broken failed" in caplog.text and "kill of part broken failed" in caplog.text


# -- silent deaths, no longer silent ----------------------------------------------------------
def test_timer_loop_death_stops_the_node_loudly(local_node: Callable[..., Node],
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Fault: the timer loop raises (a bug in the engine). A node whose timers
    stopped would hold tasks forever: it stops, saying why, and counts it."""
    node = local_node(start=False)

    def broken(now: float) -> float | None:
        raise RuntimeError("injected fault in fire_due")

    node.core.engine.fire_due = broken   # type: ignore[method-assign]
    with caplog.at_level(logging.CRITICAL, logger="miyaq.runtime.supervisor"):
        node.start()
        until(lambda: node.wait(0), "the node to stop")
    assert isinstance(node.crashed, RuntimeError)
    assert node.supervisor.crashes["timer loop"] == 1
    assert "critical greenlet timer loop died" in caplog.text


def test_log_writer_death_stops_the_node(local_node: Callable[..., Node], tmp_path: Any) -> None:
    """Fault: a bug in the log's append (not a disk fault: the writer rides
    those out and refuses new tasks). A node whose log writer died cannot
    keep what it acknowledges: it stops, loudly, and the death is counted."""
    node = local_node(data_dir=str(tmp_path / "data"))
    journal = node.part("persistence")

    def broken(batch: list[dict[str, Any]]) -> None:
        raise RuntimeError("injected bug in the log")

    journal.log.append_many = broken
    node.core.engine.submit(task("w1"), wall())    # a change the writer must log
    until(lambda: node.wait(0), "the node to stop")
    assert isinstance(node.crashed, RuntimeError) and node.supervisor.crashes["log-writer"] == 1


def test_housekeeping_death_is_counted_and_restarted(local_node: Callable[..., Node]) -> None:
    """Fault: housekeeping raises once (a bug in a long-poll sweep). It is
    restarted, the crash is counted in /metrics, and the node serves on."""
    node = local_node(http_port=free_port())
    waiters = node.core.waiters
    real, calls = waiters.sweep, []

    def sweep_once_broken(now: float) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("injected fault in sweep")
        real(now)

    waiters.sweep = sweep_once_broken   # type: ignore[method-assign]
    until(lambda: len(calls) >= 3, "the restarted housekeeping to sweep again")
    assert node.supervisor.restarts["housekeeping"] == 1 and node.supervisor.crashes["housekeeping"] == 1
    assert not node.wait(0) and node.crashed is None
    text = node.part("metrics").render().decode()
    assert 'miyaq_greenlet_crashes_total{name="housekeeping"} 1.0' in text


def test_a_scrape_of_many_queues_lets_the_node_serve_meanwhile(local_node: Callable[..., Node]) -> None:
    """Fault: ``/metrics`` read the node's state and wrote the whole text in
    one go in the node's hub: at 10,000 queues a scrape held every client,
    worker and peer 0.3 s. The text is now written in a thread while the
    hub runs on (and the reading yields every few ms): a greenlet that only
    yields gets turns during the scrape, and the scrape is whole."""
    node = local_node(http_port=free_port())
    queues = 2_000
    for i in range(queues):
        node.core.engine.submit(task(f"t{i}", queue=f"q{i}"), wall())
    turns = 0

    def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            green.sleep(0)

    other = green.Greenlet.spawn(other_work)
    try:
        green.sleep(0)
        before = turns
        text = node.part("metrics").render().decode()
        during = turns - before
    finally:
        other.kill()
    assert during > 0
    assert sum(line.startswith('miyaq_queue_tasks{queue="q') and 'state="ready"' in line
               for line in text.splitlines()) == queues


def test_reviving_and_purging_a_whole_dead_letter_queue_lets_the_node_serve_meanwhile(
        local_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: ``DEAD retry`` or ``purge`` without ids -- over ZeroMQ or HTTP
    -- revived or dropped the whole dead-letter queue in one go in the
    node's hub: 100,000 dead letters held every client, worker and peer
    about 0.5 s. They now yield to the hub every ``HUB_SLICE`` as they go
    (set to 0 here: at every task): another greenlet gets turns during
    each, and every dead letter is revived or dropped."""
    from miyaq.gateway.admin_api import AdminApi
    from miyaq.protocol import codec
    from miyaq.protocol import commands as c

    monkeypatch.setattr(fairness, "HUB_SLICE", 0.0)
    node = local_node(http_port=free_port())
    engine = node.core.engine
    consumer = Collector(["h", "p", "z", "y"])

    def make_dead(prefix: str, n: int) -> None:
        make_dead_letters(engine, consumer, prefix, n)

    turns = 0
    during: list[int] = []

    def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            green.sleep(0)

    def measured(name: str) -> None:
        real = getattr(engine, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            before = turns
            try:
                return real(*args, **kwargs)
            finally:
                during.append(turns - before)
        monkeypatch.setattr(engine, name, wrapper)

    measured("dead_retry")
    measured("dead_purge")
    other = green.Greenlet.spawn(other_work)
    sockets = SocketFactory()
    try:
        admin = AdminApi(node.part("gateway"))
        make_dead("h", 50)
        assert len(admin.retry_dead(None, None)) == 50               # HTTP's POST /dead/retry
        make_dead("p", 50)
        assert admin.purge_dead(None, None) == 50                    # POST /dead/purge
        dealer = sockets.dealer(f"tcp://127.0.0.1:{node.config.port}")
        make_dead("z", 50)
        dealer.send_multipart(codec.encode(c.DEAD, {"req": 1, "op": "retry"}))
        _, reply = codec.decode(dealer.recv_multipart(), {c.REPLY}, 1 << 20)
        assert len(reply["retried"]) == 50
        make_dead("y", 50)
        dealer.send_multipart(codec.encode(c.DEAD, {"req": 2, "op": "purge"}))
        _, reply = codec.decode(dealer.recv_multipart(), {c.REPLY}, 1 << 20)
        assert reply["purged"] == 50
        dealer.close(0)
    finally:
        other.kill()
        sockets.close()
    assert len(during) == 4 and all(n > 0 for n in during), during
    assert not engine.table.dead


def make_dead_letters(engine: Any, consumer: Consumer, queue: str, n: int) -> None:
    """``n`` dead letters in ``queue`` (a queue of their own: revived ones are not taken)."""
    for i in range(n):
        t = task(f"{queue}{i}", queue=queue)
        t.max_retries = 0
        now = wall()
        engine.submit(t, now)
        engine.start(engine.take([queue], now), consumer, now)
        engine.fail(t.id, 1, {"type": "E", "message": "no"}, False, None, now)


def test_a_dead_letter_operation_over_zeromq_lets_the_socket_s_other_messages_through(
        local_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: a ``DEAD retry`` or ``purge`` of a whole dead-letter queue over
    ZeroMQ ran in the service socket's reader, so every other client's and
    worker's message waited for it (0.4 s at ``max_dead``'s 100,000). It
    now runs in a greenlet of its own: a STATUS sent by another client just
    after a DEAD operation on 2,000 dead letters -- a yield at each
    (``HUB_SLICE`` 0) -- is answered first, and both are answered."""
    from miyaq.protocol import codec
    from miyaq.protocol import commands as c

    monkeypatch.setattr(fairness, "HUB_SLICE", 0.0)
    node = local_node()
    engine = node.core.engine
    consumer = Collector(["r", "p"])
    sockets = SocketFactory()
    endpoint = f"tcp://127.0.0.1:{node.config.port}"
    admin, other = sockets.dealer(endpoint), sockets.dealer(endpoint)

    def answered_in_order(op: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        order: list[str] = []
        replies: dict[str, Any] = {}

        def read(name: str, sock: Any) -> None:
            _, replies[name] = codec.decode(sock.recv_multipart(), {c.REPLY}, 1 << 20)
            order.append(name)

        readers = [green.Greenlet.spawn(read, "dead", admin), green.Greenlet.spawn(read, "status", other)]
        admin.send_multipart(codec.encode(c.DEAD, {"req": 1, **op}))
        other.send_multipart(codec.encode(c.STATUS, {"req": 2}))
        green.joinall(readers, timeout=30)
        return order, replies

    try:
        make_dead_letters(engine, consumer, "r", 2_000)
        order, replies = answered_in_order({"op": "retry", "queue": "r"})
        assert order == ["status", "dead"]
        assert len(replies["dead"]["retried"]) == 2_000
        make_dead_letters(engine, consumer, "p", 2_000)
        order, replies = answered_in_order({"op": "purge", "queue": "p"})
        assert order == ["status", "dead"]
        assert replies["dead"]["purged"] == 2_000
    finally:
        admin.close(0)
        other.close(0)
        sockets.close()
    assert not engine.table.dead


def test_dead_letter_operations_at_once_are_bounded_and_a_failing_one_is_answered(
        local_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """Faults: a client sends DEAD operations in a loop without waiting for
    their replies; and one of them fails inside the node. At most
    ``BACKGROUND_OPS`` (2) run at once: the third waits for a place, and the
    service socket's reader with it -- a STATUS sent after the three is
    answered once one of the first two is done, and before the third. An
    operation that raises is logged and answered with an ERROR, not left
    without a reply, and the node serves on."""
    from miyaq.core.handlers import BACKGROUND_OPS
    from miyaq.protocol import codec
    from miyaq.protocol import commands as c

    assert BACKGROUND_OPS == 2
    monkeypatch.setattr(fairness, "HUB_SLICE", 0.0)
    node = local_node()
    engine = node.core.engine
    queues = ["a", "b", "d"]
    consumer = Collector(queues)
    for q in queues:
        make_dead_letters(engine, consumer, q, 1_000)
    sockets = SocketFactory()
    dealer = sockets.dealer(f"tcp://127.0.0.1:{node.config.port}")
    try:
        for req, q in enumerate(queues, 1):
            dealer.send_multipart(codec.encode(c.DEAD, {"req": req, "op": "retry", "queue": q}))
        dealer.send_multipart(codec.encode(c.STATUS, {"req": 4}))
        order = []
        for _ in range(4):
            command, body = codec.decode(dealer.recv_multipart(), {c.REPLY}, 1 << 20)
            order.append(body["req"])
        assert order[-1] == 3 and order.index(4) > min(order.index(1), order.index(2)), order

        def broken(*args: Any) -> list[str]:
            raise RuntimeError("injected fault in dead_retry")

        monkeypatch.setattr(engine, "dead_retry", broken)
        dealer.send_multipart(codec.encode(c.DEAD, {"req": 5, "op": "retry"}))
        command, body = codec.decode(dealer.recv_multipart(), {c.ERROR}, 1 << 20)
        assert body["req"] == 5 and "internal error" in body["message"]
        dealer.send_multipart(codec.encode(c.STATUS, {"req": 6}))
        command, body = codec.decode(dealer.recv_multipart(), {c.REPLY}, 1 << 20)
        assert body["req"] == 6 and "queues" in body
    finally:
        dealer.close(0)
        sockets.close()


def test_failing_rate_limit_refill_is_logged_and_counted(local_node: Callable[..., Node],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Fault: the dispatch a rate-limit refill timer triggers raises. The
    timer greenlet's failure is logged and counted; the node serves on."""
    node = local_node(queue_limits="slow:rate=100,burst=1")
    limits = node.core.limits
    limits.wake_at = wall()

    def broken() -> None:
        raise RuntimeError("injected fault in refill")

    with caplog.at_level(logging.ERROR, logger="miyaq.runtime.supervisor"):
        limits.arm_wake(broken, wall())
        until(lambda: node.supervisor.crashes["rate-limit refill"], "the refill to fail")
    assert "greenlet rate-limit refill failed" in caplog.text and not node.wait(0)


def test_peer_callback_failures_are_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Fault: a request's callback raises, both when the request cannot be
    sent (the callback runs in its own greenlet) and when its deadline
    passes (it runs in the answer reader). Each is logged and counted; the
    reader keeps running."""
    supervisor = Supervisor("peer test", on_fatal=lambda name, exc: pytest.fail(f"{name} died"))
    sockets = SocketFactory()
    link = PeerEndpoint(sockets, supervisor, "me", f"tcp://127.0.0.1:{free_port()}")

    def broken(answer: dict[str, Any] | None) -> None:
        raise RuntimeError("injected fault in a peer callback")

    try:
        link.start()
        with caplog.at_level(logging.ERROR, logger="miyaq.runtime.supervisor"):
            assert not link.request("nobody", b"QUERY", {"ids": []}, 1.0, broken)
            until(lambda: supervisor.crashes["peer callback"] == 1, "the unsendable request's callback")
            link.connect({"silent": f"tcp://127.0.0.1:{free_port()}"})
            link.pending[999] = (0.0, broken)      # a request whose deadline has passed,
            link._next_expiry = 0.0                # as request() plans it, and the reader told
            link._expiry_moved()
            until(lambda: supervisor.crashes["peer callback"] == 2, "the expired request's callback")
        assert caplog.text.count("peer callback failed") == 2
        assert sorted(supervisor.live()) == ["peer answers", "peer requests"]
    finally:
        supervisor.kill()
        link.close()
        sockets.close()


def test_a_peer_back_in_the_ring_gets_a_new_link_that_carries_requests() -> None:
    """Fault: a peer restarted (its old connection died, and the DEALER to it
    retries on a backoff of up to 2 s). Linking to it ``fresh`` replaces that
    DEALER by a new one, which connects at once and carries requests; a
    peer not named fresh keeps its DEALER."""
    supervisor = Supervisor("peer test", on_fatal=lambda name, exc: pytest.fail(f"{name} died"))
    sockets = SocketFactory()
    ports = {n: f"tcp://127.0.0.1:{free_port()}" for n in ("me", "back", "other")}
    links = {n: PeerEndpoint(sockets, supervisor, n, ep) for n, ep in ports.items()}
    links["back"].handlers[b"QUERY"] = lambda sender, body: {"states": {}, "by": "back"}
    answers: list[dict[str, Any] | None] = []
    try:
        for link in links.values():
            link.start()
        me = links["me"]
        me.connect(ports)
        before = dict(me.dealers)
        me.connect(ports, fresh={"back"})
        assert me.dealers["back"] is not before["back"] and me.dealers["other"] is before["other"]
        # Until it is connected a request cannot be sent (IMMEDIATE): its callback gets None at once.
        until(lambda: me.request("back", b"QUERY", {"ids": []}, WAIT, answers.append), "the new link to connect")
        answered = until(lambda: [a for a in answers if a is not None], "the answer")
        assert answered[0]["by"] == "back"
    finally:
        supervisor.kill()
        for link in links.values():
            link.close()
        sockets.close()


def test_a_member_registered_with_an_endpoint_libzmq_refuses_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """Fault: a member's registration (ZooKeeper's member znode, written by
    a buggy or hostile node) names peer and stream endpoints libzmq refuses
    to dial (``"tcp://no port here"``). The node's peer link and stream
    subscriber log it and skip that member -- a request to it fails as to
    a node not connected -- and link to the others; before, the refusal
    raised out of the ring change into the node's membership handling."""
    supervisor = Supervisor("peer test", on_fatal=lambda name, exc: pytest.fail(f"{name} died"))
    sockets = SocketFactory()
    ports = {n: f"tcp://127.0.0.1:{free_port()}" for n in ("me", "good")}
    links = {n: PeerEndpoint(sockets, supervisor, n, ep) for n, ep in ports.items()}
    links["good"].handlers[b"QUERY"] = lambda sender, body: {"states": {}, "by": "good"}
    sub = ZmqStreamSubscriber(sockets, supervisor, "me", lambda src, events: None, lambda src, number: None)
    answers: list[dict[str, Any] | None] = []
    try:
        for link in links.values():
            link.start()
        me = links["me"]
        with caplog.at_level(logging.WARNING):
            me.connect({**ports, "bad": "tcp://no port here"})
            sub.connect({"good": f"tcp://127.0.0.1:{free_port()}", "bad": "tcp://no port here"})
        assert sorted(me.dealers) == ["good"] and "bad" not in me.endpoints
        assert list(sub.connected) == ["good"]
        assert not me.request("bad", b"QUERY", {"ids": []}, WAIT, answers.append)
        until(lambda: me.request("good", b"QUERY", {"ids": []}, WAIT, answers.append), "the link to connect")
        answered = until(lambda: [a for a in answers if a is not None], "the answer")
        assert answered[0]["by"] == "good"
        assert "peer link: member bad cannot be reached: cannot connect to 'tcp://no port here'" in caplog.text
        assert "stream: cannot follow member bad at 'tcp://no port here'" in caplog.text
    finally:
        supervisor.kill()
        sub.close()
        for link in links.values():
            link.close()
        sockets.close()


class EchoingPeer:
    """A raw ROUTER that sends every message back to its sender: what a
    DEALER reads when its connection looped back to itself (a TCP
    self-connect). ``connections``: the routing id of each message, in order."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.connections: list[bytes] = []

    def pump(self) -> None:
        while self.sock.poll(0):
            peer, *frames = self.sock.recv_multipart()
            self.connections.append(peer)
            self.sock.send_multipart([peer, *frames])

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def test_a_peer_link_that_reads_its_own_request_connects_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: the DEALER to a peer loops back to itself (a TCP self-connect:
    the peer's port is in the ephemeral range and nothing listened there as
    ZeroMQ retried), so it reads its own QUERY. It used to drop that as a
    malformed answer and keep the looped connection for ever: the peer, once
    up, never heard from this node on it. Now its own request makes the node
    replace that DEALER (the control one, which QUERY goes on), at most
    once per LOOP_RETRY (an hour here: the second echo changes nothing)."""
    monkeypatch.setattr(peer_module, "LOOP_RETRY", 3600.0)
    supervisor = Supervisor("peer test", on_fatal=lambda name, exc: pytest.fail(f"{name} died"))
    sockets = SocketFactory()
    me = PeerEndpoint(sockets, supervisor, "me", f"tcp://127.0.0.1:{free_port()}")
    echo = EchoingPeer()
    try:
        me.start()
        me.connect({"echo": echo.endpoint})
        first = me.controls["echo"]
        until(lambda: me.request("echo", b"QUERY", {"ids": []}, 0.5, lambda answer: None), "the link to connect")
        until(lambda: echo.pump() or me.controls["echo"] is not first, "a new DEALER after the echo")
        second = me.controls["echo"]
        until(lambda: me.request("echo", b"QUERY", {"ids": []}, 0.5, lambda answer: None), "the new link to connect")
        until(lambda: echo.pump() or len(set(echo.connections)) == 2, "the new DEALER's request")
        until(lambda: echo.pump() or not me.pending, "the echoed requests to end in silence")
        assert me.controls["echo"] is second, "a second loop within LOOP_RETRY must not make another DEALER"
    finally:
        supervisor.kill()
        me.close()
        sockets.close()
        echo.close()


# -- events between holders ---------------------------------------------------------------------
def test_duplicate_start_names_the_node_it_was_started_on(caplog: pytest.LogCaptureFixture) -> None:
    """Fault: another holder announces STARTED for a task already running
    here. The duplicate is counted and reported with the other node's id
    (not the task's)."""
    running = task("dup-1")
    running.state = RUNNING
    running.holders = ("me", "other-node")      # this node ranks first of the two: it counts the duplicate
    seen: list[dict[str, Any]] = []
    events = EventPublisher("me", SimpleNamespace(send=lambda dest, evs: None), 1 << 24)   # type: ignore[arg-type]
    events.duplicate_run = lambda t, info: seen.append(info)   # type: ignore[method-assign]
    engine = SimpleNamespace(table=SimpleNamespace(live={"dup-1": running}, dead={}), listeners=[events])
    role = SimpleNamespace(node_id="me", engine=engine, events=events, config=NodeConfig(), refusals=Refusals())
    apply_events(role, "other-node", [["S", "dup-1", 2, wall() + 30, False]])   # type: ignore[arg-type]
    assert seen == [{"also_started_on": "other-node", "attempt": 2}]


def test_the_service_socket_is_no_longer_read_when_the_log_closes(local_node: Callable[..., Node],
                                                                  tmp_path: Any) -> None:
    """Fault: a clean stop (SIGTERM) on a slow disk. The log's last fsync
    gives the hub a turn; before 2026-12-05 the service reader still ran
    then, and a CANCEL (a worker's DONE, a dead-letter retry) answered in
    that window was never written: 40 of 40 cancels undone by the restart
    in an audit's run. The core's greenlets now stop before the log closes."""
    node = local_node(data_dir=str(tmp_path / "data"))
    journal = node.part("persistence")
    real_stop = journal.stop
    live_at_close: list[list[str]] = []

    def stop() -> None:
        live_at_close.append(node.supervisor.live())
        real_stop()

    journal.stop = stop
    node.stop(0)
    [live] = live_at_close
    assert not {"service reader", "timer loop", "housekeeping"} & set(live), live


def test_a_stop_asked_during_start_up_waits_for_the_part_at_hand(local_node: Callable[..., Node],
                                                                 tmp_path: Any) -> None:
    """Fault: SIGTERM while the node replays a large log at start-up (the
    replay's fsyncs give the hub a turn). Before 2026-12-05 the stop ran
    beside the start: it closed the log the replay still used (a traceback,
    exit status 1), or the later parts started after "stopped". Now the stop
    waits for the part at hand, no later part starts, and the node ends
    stopped, cleanly."""
    node = local_node(start=False, data_dir=str(tmp_path / "data"))
    journal = node.part("persistence")
    real_setup = journal.setup

    def setup_interrupted() -> None:
        node.ask_stop()                  # the signal, in the middle of the replay
        real_setup()

    journal.setup = setup_interrupted
    started: list[str] = []
    for part in node.parts:
        part.start = (lambda real, name: lambda: (started.append(name), real())[1])(part.start, part.name)
    assert node.start() is node
    assert node.wait(0) and node.crashed is None
    assert started == []                          # nothing started after the stop was asked
    assert not journal.log.writable              # closed by the stop, after the replay


def test_a_start_up_failure_after_a_stop_was_asked_is_a_stop(local_node: Callable[..., Node],
                                                             tmp_path: Any) -> None:
    """Fault: SIGTERM during start-up, then the start-up fails (ZooKeeper
    unreachable, say). The operator asked for a stop and gets one: logged,
    not raised (``miyaq node`` exits 0, not 2)."""
    node = local_node(start=False)
    clockwork = node.part("core")

    def fails() -> None:
        node.ask_stop()
        raise RuntimeError("cannot reach ZooKeeper")

    clockwork.setup = fails
    assert node.start() is node and node.wait(0)


def test_a_second_stop_signal_ends_the_wait_for_running_tasks(local_node: Callable[..., Node],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Fault: a worker's task never ends while the node drains with an hour's
    ``shutdown_grace``, and the operator presses Ctrl-C again. The second
    signal ends the wait -- the node stops, saying it no longer waits for the
    running task -- where it waited the whole grace whatever was sent."""
    node = local_node(shutdown_grace=3600.0)
    monkeypatch.setattr(node.core, "running", lambda: 1)      # a task that never reports
    first = node.supervisor.spawn("signal stop", node.ask_stop)
    until(lambda: node.core.gate.holds(SHUTTING_DOWN), "the node draining")
    caplog.set_level(logging.WARNING, logger="miyaq.node.node")
    node.ask_stop()                                             # the second SIGTERM
    until(lambda: first.dead, "the stop to end")
    assert node._stopped.is_set()
    assert any("asked again to stop: not waiting for the 1 running task(s)" in r.getMessage()
               for r in caplog.records)
