"""The numbers users alert on say what happened: STATUS ``errors`` and
``miyaq_protocol_errors_total`` count every refused submit, a cluster's
holders count an at-most-once task's end like any other task's, the
start-delay and run histograms observe the attempt they name, and the
console's chart does not drop when the node forgets empty queues.

The histogram tests drive an :class:`~miyaq.core.engine.Engine` with
explicit times and a :class:`~miyaq.gateway.metrics.TaskTimings` listener
whose clock the test sets; the cluster tests use the in-process cluster
(:mod:`miyaq.testing.inprocess`)."""
from __future__ import annotations

from typing import Any

from gateway_harness import FIXTURES

from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.protocol.recordspec import STARTED_ELSEWHERE
from miyaq.runtime import wall
from miyaq.store.task import DONE

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

T0 = 1_700_000_000.0


# -- helpers -------------------------------------------------------------------------------------
def raw_submit(sock: Any, tasks: list[dict[str, Any]]) -> list[list[Any]]:
    sock.send_multipart([c.TAG, c.SUBMIT, codec.pack({"tasks": tasks})])
    assert sock.poll(10_000), "no SUBMITTED answer"
    frames = sock.recv_multipart()
    assert frames[1] == c.SUBMITTED
    return codec.unpack(frames[2])["results"]


# -- refused submits ------------------------------------------------------------------------------
def test_submits_refused_because_the_node_is_full_are_counted_by_code(make_node, client_for, ctx, sockets):
    """Fault: a node at ``max_tasks`` answers ZeroMQ SUBMITs ``rejected``
    with ``busy``; the refusals were counted on a counter nothing read, so
    STATUS ``errors`` (and ``miyaq_protocol_errors_total``, which reads the
    same counter) showed nothing while producers were being turned away.
    An invalid task in the same SUBMIT is counted once, as before."""
    import zmq

    node = make_node(max_tasks=3)
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sockets.append(sock)
    sock.connect(node.endpoint)
    stored = raw_submit(sock, [{"id": f"f{i}", "name": "job", "countdown": 600} for i in range(3)])
    assert [r[1] for r in stored] == [c.ACCEPTED] * 3
    refused = raw_submit(sock, [{"id": f"z{i}", "name": "job"} for i in range(5)] + [{"id": "bad id", "name": "job"}])
    assert [r[1] for r in refused] == [c.REJECTED] * 6
    assert [r[2]["code"] for r in refused] == ["busy"] * 5 + ["invalid_field"]
    status = client_for(node.endpoint).status()
    assert status["errors"] == {"busy": 5, "invalid_field": 1}
    assert status["outcomes"].get("submitted") == 3


def test_a_clustered_node_counts_the_submits_its_engine_refuses(inproc):
    """Fault: in a cluster, a holder coordinating a ZeroMQ SUBMIT it cannot
    store (full: ``max_tasks``) answered ``rejected``/``busy`` from the
    replicating intake's engine-refusal branch and counted it nowhere.
    A refusal given to an in-process submitter (the HTTP gateway, which
    counts its own answers by status) is not counted in ``errors``."""
    cluster = inproc(3, max_tasks=1)
    first = cluster.submit("n1", cluster.task_id(), countdown=600)
    cluster.wait_until(lambda: first.status == c.ACCEPTED, what="the first task stored on its holders")
    endpoint = cluster["n1"].node.core.endpoint
    endpoint.handlers[c.SUBMIT](b"\x00a-zeromq-client", {"tasks": [{"id": "z1", "name": "job"}]}, wall())
    endpoint.flush_acks()
    assert endpoint.errors["busy"] == 1
    over_http = cluster.submit("n1", cluster.task_id())
    cluster.wait_until(lambda: over_http.status is not None, what="the gateway's submit answered")
    assert over_http.error_code == "busy"
    assert dict(endpoint.errors) == {"busy": 1}


# -- outcomes in a cluster ------------------------------------------------------------------------
def test_every_holder_counts_an_at_most_once_tasks_done_and_no_placeholder(inproc):
    """Fault: the holders that did not run an at-most-once task counted the
    placeholder they keep when it starts (outcome ``started-elsewhere``,
    which no document lists) and never counted the task's ``done`` when the
    runner's outcome replaced it: per node ``done`` read [1, 0, 0] where an
    ordinary task reads [1, 1, 1]."""
    cluster = inproc(3)
    amo, ordinary = cluster.task_id(), cluster.task_id()
    holders = cluster.holders(amo)
    workers = {h: cluster.worker(h) for h in cluster.nodes}
    cluster.submit(holders[1], amo, at_most_once=True)
    runner = cluster.wait_until(lambda: next((h for h, w in workers.items() if w.runs(amo)), None),
                                what="a holder to start the at-most-once task")
    others = [h for h in holders if h != runner]
    cluster.wait_until(lambda: all(cluster[h].state(amo) == STARTED_ELSEWHERE for h in others),
                       what="the other holders to drop their copies")
    assert all("started-elsewhere" not in cluster[h].engine.outcome_totals() for h in holders)
    workers[runner].complete(amo)
    cluster.wait_until(lambda: all(cluster[h].state(amo) == DONE for h in holders), what="done on every holder")

    cluster.submit(holders[0], ordinary)
    ran = cluster.wait_until(lambda: next((h for h, w in workers.items() if w.runs(ordinary)), None),
                             what="the ordinary task to start")
    workers[ran].complete(ordinary)
    cluster.wait_until(lambda: all(cluster[h].state(ordinary) == DONE for h in cluster.holders(ordinary)),
                       what="the ordinary task done on every holder")
    totals = {h: cluster[h].engine.outcome_totals() for h in holders}
    assert [totals[h].get("done") for h in holders] == [2, 2, 2], totals
    assert all(set(t) <= {"submitted", "started", "completed", "done"} for t in totals.values()), totals
    assert sum(t.get("started", 0) for t in totals.values()) == 2
    assert sum(t.get("completed", 0) for t in totals.values()) == 2
    assert not cluster.crashes()


