"""Long-polls (RESULT, RECEIVE) are bounded per connection and per key, and
freed when their connection goes away (issue 9): nobody can park every slot
and leave. Played with raw DEALERs against real nodes."""
from __future__ import annotations

import os
import threading
import time


import miyaq
from miyaq import constants
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

from secure_harness import Keys, Speaker, make_keys, submit, task


def waiters(node) -> dict:
    return node.node.status(time.time())["waiters"]


def park(speaker: Speaker, task_id: str, n: int) -> None:
    """``n`` one-hour RESULT long-polls on one live task (no answer expected)."""
    for i in range(n):
        speaker.send(c.RESULT, {"req": 1000 + i, "id": task_id, "timeout": 3600})


def test_waiters_exhaustion_by_a_stranger_who_then_leaves(ctx, make_node):
    """Attack: a stranger parks max_waiters one-hour RESULT waits from a few
    connections, so legitimate RECEIVEs get ``busy``, then disconnects. Its
    waits are freed once the node sees the connections gone (a probe), and the
    legitimate RECEIVE long-poll is served."""
    node = make_node(max_waiters=30, max_waiters_per_connection=10)
    producer = Speaker(ctx, node.endpoint)
    submit(producer, task("w" * 32, eta=time.time() + 3600))
    strangers = [Speaker(ctx, node.endpoint) for _ in range(3)]
    for stranger in strangers:
        park(stranger, "w" * 32, 10)
    wait_for(lambda: waiters(node)["pending"] == 30, timeout=10)
    consumer = Speaker(ctx, node.endpoint)
    assert consumer.refused(c.RECEIVE, {"queues": ["jobs"], "timeout": 30}, code="busy")
    for stranger in strangers:
        stranger.close()
    wait_for(lambda: waiters(node)["pending"] == 0, timeout=30, what="the stranger's waits freed")
    assert waiters(node)["released"] == 30
    consumer.send(c.RECEIVE, {"req": 7, "queues": ["jobs"], "timeout": 30})
    wait_for(lambda: waiters(node)["pending"] == 1, timeout=10)    # waiting, not refused
    submit(producer, task("j" * 32, queue="jobs"))
    got = consumer.recv()
    assert got is not None and got[0] == c.REPLY and got[1]["task"]["id"] == "j" * 32


def test_waits_are_bounded_per_connection_and_per_key(ctx, make_node, tmp_path):
    """Attack: one key holder parks as many long-polls as it can, over one
    connection and then over several. Past max_waiters_per_connection, and
    past max_waiters_per_key over all its connections, it gets ``busy``;
    another key still waits."""
    keys: Keys = make_keys(os.path.join(str(tmp_path), "keys"))
    node = make_node(keys=keys.dir, max_waiters_per_connection=3, max_waiters_per_key=5)
    pair = (*keys.pair("producer"), keys.server_public)
    first, second = Speaker(ctx, node.endpoint, pair), Speaker(ctx, node.endpoint, pair)
    submit(first, task("k" * 32, eta=time.time() + 3600))
    park(first, "k" * 32, 3)
    wait_for(lambda: waiters(node)["pending"] == 3, timeout=10)
    assert "max_waiters_per_connection" in first.refused(c.RESULT, {"id": "k" * 32, "timeout": 60},
                                                         code="busy")["message"]
    park(second, "k" * 32, 2)
    wait_for(lambda: waiters(node)["pending"] == 5, timeout=10)
    assert "max_waiters_per_key" in second.refused(c.RESULT, {"id": "k" * 32, "timeout": 60},
                                                   code="busy")["message"]
    worker = Speaker(ctx, node.endpoint, (*keys.pair("worker"), keys.server_public))
    worker.send(c.RECEIVE, {"req": 1, "queues": ["jobs"], "timeout": 60})
    wait_for(lambda: waiters(node)["pending"] == 6, timeout=10)


def test_clients_ignore_the_probe_while_they_wait(make_node, monkeypatch):
    """The probe a node sends to connections with long-polls waiting (a REPLY
    without ``req``) is ignored by the Python client: a RESULT and a RECEIVE
    that wait through several probes get their answers."""
    monkeypatch.setattr(constants, "WAITER_PROBE_INTERVAL", 0.05)
    node = make_node()
    answers: dict = {}
    with miyaq.Client(node.endpoint) as producer, miyaq.Client(node.endpoint) as consumer:
        handle = producer.submit("echo", [1], countdown=3600, wait=True)
        threads = [threading.Thread(target=lambda: answers.update(result=producer.wait_result(handle.id, 60))),
                   threading.Thread(target=lambda: answers.update(received=consumer.receive("jobs", timeout=60)))]
        for t in threads:
            t.start()
        wait_for(lambda: waiters(node)["pending"] == 2 and waiters(node)["probes"] >= 10, timeout=20)
        producer.cancel(handle.id)
        producer.submit("echo", [2], queue="jobs", wait=True)
        for t in threads:
            t.join(30)
    assert answers["result"]["state"] == "cancelled"
    assert answers["received"] is not None and answers["received"].queue == "jobs"
