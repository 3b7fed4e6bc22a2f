"""Who may report on a task (issue 9): a worker reports DONE, FAILED and TOUCH
only on tasks dispatched to it, a pull consumer ACKs and NACKs only what it
received, and a worker's heartbeat counts only from the key it registered
with. Played by raw DEALERs (:class:`secure_harness.Speaker`) against real
nodes, with and without keys: the ownership checks hold in every mode.
"""
from __future__ import annotations

import os
import time

import msgpack
import pytest
import zmq

from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

from secure_harness import Keys, Speaker, make_keys, submit, task

FORGED = msgpack.packb("forged")


@pytest.fixture
def keys(tmp_path) -> Keys:
    return make_keys(os.path.join(str(tmp_path), "keys"), ("producer", "producer"), ("w-a", "worker"),
                     ("w-b", "worker"), ("admin", "admin"))


def connect(ctx: zmq.Context, node, keys: Keys | None = None, name: str | None = None) -> Speaker:
    if keys is None or name is None:
        return Speaker(ctx, node.endpoint)
    public, secret = keys.pair(name)
    return Speaker(ctx, node.endpoint, (public, secret, keys.server_public))


def register(speaker: Speaker, wid: str, queues: list[str] | None = None, capacity: int = 4) -> None:
    speaker.send(c.READY, {"worker": wid, "queues": queues or ["default"], "capacity": capacity})
    got = speaker.recv(skip=(c.HEARTBEAT, c.RECONNECT))
    assert got is not None and got[0] == c.WELCOME, got


def dispatched(speaker: Speaker) -> list[list]:
    got = speaker.recv(skip=(c.HEARTBEAT, c.WELCOME))
    assert got is not None and got[0] == c.DISPATCH, got
    return got[1]["tasks"]


def state(node, task_id: str) -> dict:
    return node.node.core.engine.info(task_id)


def not_leased(node) -> int:
    return node.node.status(time.time())["ignored"]["not_leased"]


def test_done_for_a_scheduled_task_it_never_received_is_ignored(ctx, node):
    """Attack: a stranger sends DONE (with a forged result) for a *scheduled*
    task it never received -- first without registering, then registered as
    a worker of another queue, for attempt 0 and 1. Without keys too: the
    task stays scheduled, its submitter never reads the forged result, and
    each report is counted."""
    producer = connect(ctx, node)
    assert submit(producer, task("s" * 32, eta=time.time() + 3600))[0][1] == c.ACCEPTED
    stranger = connect(ctx, node)
    stranger.send(c.DONE, {"done": [["s" * 32, 0, FORGED]]})
    register(stranger, "evil", queues=["elsewhere"])
    stranger.send(c.DONE, {"done": [["s" * 32, 0, FORGED], ["s" * 32, 1, FORGED]]})
    stranger.send(c.FAILED, {"failed": [["s" * 32, 0, {"type": "X", "retry": False}]]})
    wait_for(lambda: not_leased(node) >= 3, timeout=10)
    assert state(node, "s" * 32)["state"] == "scheduled"
    assert producer.ok(c.RESULT, {"id": "s" * 32})["state"] == "scheduled"


def test_reports_on_a_task_leased_to_another_worker_are_ignored(ctx, node):
    """Attack: a second worker reports DONE, FAILED and TOUCH for a task leased
    to the first. Ignored and counted; the first worker's DONE finishes it."""
    producer, first, second = connect(ctx, node), connect(ctx, node), connect(ctx, node)
    register(first, "first")
    register(second, "second", queues=["other"])
    submit(producer, task("r" * 32))
    delivery = dispatched(first)[0]
    attempt = delivery[4]
    lease_end = state(node, "r" * 32)["lease_end"]
    second.send(c.DONE, {"done": [["r" * 32, attempt, FORGED]]})
    second.send(c.FAILED, {"failed": [["r" * 32, attempt, {"type": "X", "retry": False}]]})
    second.send(c.TOUCH, {"ids": ["r" * 32]})
    wait_for(lambda: not_leased(node) >= 3, timeout=10)
    info = state(node, "r" * 32)
    assert info["state"] == "running" and info["lease_end"] == lease_end
    first.send(c.DONE, {"done": [["r" * 32, attempt, msgpack.packb("real")]]})
    wait_for(lambda: state(node, "r" * 32)["state"] == "done", timeout=10)
    assert producer.ok(c.RESULT, {"id": "r" * 32})["result"] == msgpack.packb("real")


def test_late_done_of_an_earlier_attempt_from_its_worker_still_counts(ctx, make_node):
    """Fault: a worker is declared lost while its handler runs (silent past
    liveness), re-registers, and reports the old attempt. The task was leased
    to it, so the DONE still finishes the task (no second run needed)."""
    node = make_node(heartbeat=0.1, liveness=2)
    producer, worker = connect(ctx, node), connect(ctx, node)
    register(worker, "slow", capacity=1)
    submit(producer, task("l" * 32))
    attempt = dispatched(worker)[0][4]
    wait_for(lambda: state(node, "l" * 32)["state"] != "running", timeout=10)   # lost: silent
    worker.send(c.DONE, {"done": [["l" * 32, attempt, msgpack.packb("late")]]})
    wait_for(lambda: state(node, "l" * 32)["state"] == "done", timeout=10)
    assert not_leased(node) == 0


def test_ack_of_a_task_another_pull_consumer_received_is_refused(ctx, node):
    """Attack: a pull consumer ACKs (with a forged result) and NACKs a task
    another consumer received. ``ok: false``, counted, the task stays leased."""
    producer, puller, other = connect(ctx, node), connect(ctx, node), connect(ctx, node)
    submit(producer, task("p" * 32))
    got = puller.ok(c.RECEIVE, {"queues": ["default"]})["task"]
    assert got["id"] == "p" * 32
    assert other.ok(c.ACK, {"id": "p" * 32, "attempt": got["attempt"], "result": FORGED})["ok"] is False
    assert other.ok(c.NACK, {"id": "p" * 32, "attempt": got["attempt"],
                             "error": {"message": "x"}, "retry": False})["ok"] is False
    assert state(node, "p" * 32)["state"] == "running" and not_leased(node) == 2
    assert puller.ok(c.ACK, {"id": "p" * 32, "attempt": got["attempt"]})["ok"] is True


def test_heartbeat_for_another_worker_keeps_no_dead_worker_alive(ctx, make_node, keys):
    """Attack: a key holder sends side HEARTBEATs for another worker's id to keep
    a dead worker's tasks leased. Only the key that sent that worker's READY
    may: the beats are ignored (counted), the silent worker is declared lost
    and its task goes back to ready."""
    node = make_node(keys=keys.dir, heartbeat=0.1, liveness=3)
    producer = connect(ctx, node, keys, "producer")
    victim = connect(ctx, node, keys, "w-a")
    attacker = connect(ctx, node, keys, "w-b")
    own_pulse = connect(ctx, node, keys, "w-a")
    register(victim, "victim", capacity=1)
    submit(producer, task("h" * 32))
    dispatched(victim)
    own_pulse.send(c.HEARTBEAT, {"worker": "victim", "side": True})   # the worker's own heartbeat thread
    deadline = time.monotonic() + 15     # 50 times the liveness: beats that counted would keep it running
    while state(node, "h" * 32)["state"] == "running" and time.monotonic() < deadline:
        attacker.send(c.HEARTBEAT, {"worker": "victim", "side": True})   # the victim is silent; the attacker beats
        time.sleep(0.02)
    assert state(node, "h" * 32)["state"] == "ready"
    status = node.node.status(time.time())
    assert status["ignored"]["foreign_heartbeats"] >= 1 and status["totals"]["workers"] == 0


def test_ready_for_a_worker_id_another_key_holds_is_refused(ctx, make_node, keys):
    """Attack: a worker key registers with another key's worker id, to take over
    its registration (and so its leased tasks). Refused ``forbidden``; the
    victim stays registered with its task."""
    node = make_node(keys=keys.dir)
    producer = connect(ctx, node, keys, "producer")
    victim, attacker = connect(ctx, node, keys, "w-a"), connect(ctx, node, keys, "w-b")
    register(victim, "victim", capacity=1)
    submit(producer, task("v" * 32))
    dispatched(victim)
    attacker.send(c.READY, {"worker": "victim", "queues": ["default"]})
    got = attacker.recv()
    assert got is not None and got[0] == c.ERROR and got[1]["code"] == "forbidden", got
    assert "registered by another key" in got[1]["message"]
    assert state(node, "v" * 32)["state"] == "running"
    assert node.node.status(time.time())["totals"]["workers"] == 1
