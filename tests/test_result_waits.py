"""How a RESULT long-poll ends without an outcome (docs/protocol.md, 5.5):
with the state the task is really in, or -- when the node let the task go
to other holders meanwhile -- at once with "not here any more" (the
service answers ``not_found``). Unit tests of :class:`miyaq.core.waiters.Waiters`
on a real :class:`~miyaq.core.engine.Engine`, no sockets, explicit clocks."""
from __future__ import annotations

from typing import Any

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.core.waiters import Waiters
from miyaq.protocol.taskspec import task_from_wire

T0 = 1_700_000_000.0


def setup() -> tuple[Engine, Waiters]:
    engine = Engine(NodeConfig(port=7450, http_port=0))
    waiters = Waiters(None, 100, live_state=engine.live_state)  # type: ignore[arg-type]  # RESULT waits only
    engine.listeners.append(waiters)
    return engine, waiters


def test_a_wait_that_ends_reports_the_live_state():
    """Fault simulated: the deadline of a long-poll passes before the task ran;
    each wait gets the task's state at that moment, not a fixed word."""
    engine, waiters = setup()
    config = engine.config
    engine.submit(task_from_wire({"id": "later", "name": "x", "countdown": 60}, T0, config), T0)
    engine.submit(task_from_wire({"id": "now", "name": "x"}, T0, config), T0)
    answers: dict[str, list[Any]] = {"later": [], "now": []}
    for task_id, box in answers.items():
        waiters.wait_result(task_id, 10.0, box.append)
    waiters.sweep(5.0)
    assert answers == {"later": [], "now": []}
    waiters.sweep(10.0)
    assert answers == {"later": [{"state": "scheduled", "timeout": True}],
                       "now": [{"state": "ready", "timeout": True}]}
    assert waiters.count == 0


def test_a_task_handed_off_ends_its_waits_at_once():
    """Fault simulated: a ring change moves a task to other holders while a
    client waits for it here; this node will never see its outcome, so the
    wait ends at once with None (answered not_found: ask another node)."""
    engine, waiters = setup()
    engine.submit(task_from_wire({"id": "moving", "name": "x"}, T0, engine.config), T0)
    box: list[Any] = []
    waiters.wait_result("moving", 3600.0, box.append)
    engine.forget(engine.table.live["moving"])
    assert box == [None]
    assert waiters.count == 0
    waiters.sweep(7200.0)
    assert box == [None]


def test_a_long_poll_is_answered_at_its_deadline_not_at_the_next_housekeeping_pass(monkeypatch):
    """Fault: a long-poll's deadline was only looked at by the node's
    housekeeping, every 0.1 s: ``call(timeout=0.01)`` took 101 ms and
    ``result(timeout=0.2)`` up to 304 ms. A long-poll due before the next
    pass now wakes housekeeping at its deadline -- shown with passes 30 s
    apart: RESULT and RECEIVE waits of 50 ms are answered (within the
    test's bound of 10 s, far below the pass)."""
    import msgpack
    import zmq

    import miyaq
    from miyaq.core import clockwork
    from miyaq.protocol import commands as c
    from miyaq.testing.harness import ThreadNode

    monkeypatch.setattr(clockwork, "HOUSEKEEPING_INTERVAL", 30.0)
    with ThreadNode() as node, miyaq.Client(node.endpoint) as client:
        task_id = client.submit("nobody", queue="empty", wait=True).id
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(node.endpoint)
            answers = []
            for req, (command, body) in enumerate([(c.RESULT, {"id": task_id, "timeout": 0.05}),
                                                   (c.RECEIVE, {"queues": ["other"], "timeout": 0.05}),
                                                   (c.RESULT, {"id": task_id, "timeout": 0.05})], 1):
                sock.send_multipart([c.TAG, command, msgpack.packb({**body, "req": req})])
                while True:
                    assert sock.poll(10_000), f"request {req} not answered at its deadline"
                    reply = msgpack.unpackb(sock.recv_multipart()[2])
                    if reply.get("req") == req:
                        answers.append(reply)
                        break           # (the node's liveness probes of parked waits pass by)
        finally:
            ctx.destroy(linger=0)
    assert [a.get("timeout") for a in answers[::2]] == [True, True]
    assert answers[1].get("task") is None
