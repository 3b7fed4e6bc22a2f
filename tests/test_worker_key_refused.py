"""A worker started with a key the nodes refuse: a producer's key (its role
may not send the worker protocol). What its log says, and that it registers
without a restart once the key is given the worker role."""
from __future__ import annotations

import os
import time

from miyaq.testing.harness import wait_for

from secure_harness import Keys, make_keys


def _forbidden(node) -> int:
    return node.node.status(time.time())["errors"].get("forbidden", 0)


def _give_role(keys: Keys, name: str, role: str) -> None:
    """Rewrite ``authorized/NAME.key`` with ``role`` (its public key kept), at
    once (a rename), as an operator editing the certificate would."""
    path = os.path.join(keys.dir, "authorized", name + ".key")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    fresh = path + ".tmp"
    with open(fresh, "w", encoding="utf-8") as f:
        f.write(text.replace('role = "producer"', f'role = "{role}"'))
    os.replace(fresh, path)


def test_a_worker_with_a_producers_key_says_once_why_and_registers_when_its_role_changes(tmp_path, make_node,
                                                                                          procs):
    """Fault: a worker started with a producer's key. The node refuses its
    READY, then each heartbeat (one every 0.25 s here), each answered
    ``forbidden``; the worker logged each refusal as a WARNING, five a minute
    for ever, and never an error saying its key's role is not a worker's nor
    what to do. Now it says so once, at ERROR, naming the key's role and the
    command that makes a worker's key, and logs the refusals after it at most
    once every 10 minutes. It keeps trying: when the key is given the worker
    role in ``authorized/`` (the node re-reads it), it registers without a
    restart."""
    keys = make_keys(str(tmp_path / "keys"))
    node = make_node(keys=keys.dir)
    worker = procs.worker("apps.basic:app", node.endpoint, 1, "--key", keys.secret("producer"),
                          "--server-key", keys.server_key)
    wait_for(lambda: _forbidden(node) >= 12, timeout=30, what="the READY and many heartbeats refused")
    lines = worker.log_tail(400).splitlines()
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1, lines
    assert ("refuses this worker's key: key 'producer' has role producer, which may not send READY" in errors[0]
            and "--role worker" in errors[0] and "keeps trying" in errors[0]), errors
    refusals = [line for line in lines if "forbidden" in line or "refuses this worker's key" in line]
    assert refusals == errors, lines      # the heartbeats refused after it: not a line each
    assert node.node.status(time.time())["totals"]["workers"] == 0

    _give_role(keys, "producer", "worker")
    wait_for(lambda: node.node.status(time.time())["totals"]["workers"] == 1, timeout=30,
             what="the worker registered once its key has the worker role")
    wait_for(lambda: "accepts this worker's key now; registered" in worker.log_tail(400), timeout=10)
    assert worker.alive()


def test_a_refused_key_is_said_once_then_reminded_every_ten_minutes(monkeypatch, caplog):
    """Fault: a node refuses every heartbeat of a worker whose key it does
    not take, for an hour. One ERROR, then a WARNING every
    ``REFUSED_REMINDER`` seconds counting the refusals since the last, and
    the node's welcome says the key is taken now; a refusal after that is
    told at ERROR again."""
    import logging

    from miyaq.worker import key_refusal
    clock = [1000.0]
    monkeypatch.setattr(key_refusal, "monotonic", lambda: clock[0])
    refusal = key_refusal.KeyRefusal("tcp://127.0.0.1:1")
    caplog.set_level(logging.INFO, logger="miyaq.worker.link")
    for _ in range(3600):               # a heartbeat refused every second for an hour
        refusal.refused("key 'app' has role producer")
        clock[0] += 1.0
    levels = [r.levelname for r in caplog.records]
    assert levels == ["ERROR"] + ["WARNING"] * 5, levels
    assert "600 refusal(s) in the last 10 minutes" in caplog.records[1].getMessage()
    assert refusal.welcomed() is True and refusal.welcomed() is False
    caplog.clear()
    refusal.refused("revoked")
    assert [r.levelname for r in caplog.records] == ["ERROR"]
