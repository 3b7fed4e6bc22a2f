"""Large messages over a slow link (tests/slow_link.py: a loopback relay that
passes one direction at a bounded rate; between nodes, a played peer that
answers late). A message takes at least its size over the rate to cross;
the node's ZMTP heartbeat on the connection hears its answer only behind
it. No timing is asserted: waits are bounded guards, and what happened is
counted (runs, the worker's reconnects, a late page applied)."""
from __future__ import annotations

import time
from typing import Any

import pytest
from peer_fixtures import FakePeer, ServiceDealer, clustered_node
from slow_link import ADDRESS, SlowLink
from test_peer_validation import record, sync_record

import miyaq
from miyaq.cluster.peer_requests import SYNC
from miyaq.core.service import ServiceEndpoint
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.testing.harness import free_port, in_own_hub, wait_for

pytestmark = pytest.mark.timeout(120)

app = miyaq.App()
RUNS: list[int] = []

RATE = 50_000          # bytes a second, worker -> node
RESULT = 200_000       # a DONE of at least 4 s on that link


@app.task(name="large_result")
def large_result(n: int) -> bytes:
    RUNS.append(n)
    return b"r" * n


@pytest.fixture
def slow_worker(make_node: Any, thread_worker: Any) -> Any:
    """A node and a worker whose messages to it cross at RATE (its side
    heartbeats too); what the node sends the worker is not slowed. The
    worker's own ZMTP timeout is long: the node's wait is the one tested."""
    links: list[SlowLink] = []

    def make(**settings: Any) -> tuple[Any, Any]:
        RUNS.clear()
        node = make_node(advertise=ADDRESS, **settings)
        link = SlowLink(node.config.port, up=RATE)
        links.append(link)
        worker = thread_worker(app, link.endpoint, node_timeout=60.0)
        wait_for(lambda: worker.worker.links and worker.worker.links[0].heard, what="the worker registered")
        return node, worker
    yield make
    for link in links:
        link.close()


def test_a_result_slower_to_cross_than_the_service_heartbeat_timeout_has_the_worker_dropped(slow_worker,
                                                                                             client_for) -> None:
    """Fault: a worker's DONE carries a result that takes longer to cross its
    link than the node's ``service_heartbeat_timeout`` (here 1 s; 30 s by
    default: a 1 MiB result under 0.28 Mbit/s). The node's PING is answered
    behind the DONE, so the node drops the connection before the DONE is
    whole; the worker registers again and the task, put back, runs again
    (at the default of 4 attempts it is dead-lettered ``Lost``). This pins
    what the setting does to the connection."""
    node, worker = slow_worker(service_heartbeat_timeout=1.0)
    client = client_for(node.endpoint)
    client.submit("large_result", [RESULT]).wait_accepted(10)
    wait_for(lambda: worker.worker.links[0].reconnects >= 1, timeout=60,
             what="the worker's connection dropped by the node")
    wait_for(lambda: len(RUNS) >= 2, timeout=60, what="the task put back and run again")


def test_a_service_heartbeat_timeout_longer_than_a_result_takes_to_cross_keeps_the_worker(slow_worker,
                                                                                         client_for) -> None:
    """Fault: the same slow link, the node's ``service_heartbeat_timeout``
    (a setting since 2026-12-07; before, a fixed 30 s no operator could
    change) set above the time the DONE takes to cross: the connection
    stays, the task runs once and its result arrives whole."""
    node, worker = slow_worker(service_heartbeat_timeout=60.0)
    client = client_for(node.endpoint)
    handle = client.submit("large_result", [RESULT])
    assert handle.result(timeout=60) == b"r" * RESULT
    assert RUNS == [RESULT]
    assert worker.worker.links[0].reconnects == 0


def test_a_sync_answer_slower_than_the_resync_wait_counts_when_peer_heartbeat_timeout_allows_it(monkeypatch) -> None:
    """Fault: a SYNC answer (a page of up to 1 MiB of payloads: 5 s at 1.7
    Mbit/s) takes longer to come than the resync's own wait, on a link the
    operator sized ``peer_heartbeat_timeout`` for (docs/cluster.md, "Peer
    protocol"). Before 2026-12-07 that wait was a fixed 5 s
    (``RESYNC_TIMEOUT``) whatever ``peer_heartbeat_timeout`` said: the page
    was dropped when it came, the resync asked again from its first page,
    and that page went again behind the first, for as long as each took
    longer. The wait is now the longer of the two. Here ``RESYNC_TIMEOUT``
    is made 0.3 s, and the page comes 1 s after the question (its crossing:
    the fault, not a timing assertion)."""
    monkeypatch.setattr("miyaq.cluster.sync.RESYNC_TIMEOUT", 0.3)
    peer = FakePeer()
    node = clustered_node(peer, peer_heartbeat_timeout=10.0).start()
    service = ServiceDealer(node.endpoint)
    try:
        identity, body = peer.next_request(SYNC)        # the resync of the node's start
        time.sleep(1.0)
        page = [sync_record(record("s-late", [node.config.node_id, peer.node_id]))]
        peer.answer(identity, body["req"], {"tasks": page, "stones": [], "next": None})
        wait_for(lambda: service.task("s-late") is not None, timeout=15, what="the late page applied")
    finally:
        service.close()
        node.stop()
        peer.close()


@pytest.mark.parametrize("timeout", [0.5, 45.0, 3600.0])
def test_the_service_sockets_zmtp_heartbeat_is_the_nodes_setting(timeout: float) -> None:
    """Fault simulated (review29: a mutation that made the socket's timeout a
    tenth of the setting passed every test, the slow-link tests' margins
    being wide): the service socket drops a connection after
    ``service_heartbeat_timeout`` unanswered, a PING every third of it, at
    the bounds and between them."""
    def body() -> tuple[int, int]:
        factory = SocketFactory(green=True)
        endpoint = ServiceEndpoint(factory, f"tcp://127.0.0.1:{free_port()}", None, timeout)
        try:
            raw = endpoint.sock.sock
            return raw.getsockopt(zmq.HEARTBEAT_IVL), raw.getsockopt(zmq.HEARTBEAT_TIMEOUT)
        finally:
            endpoint.close()
            factory.close()
    assert in_own_hub(body) == (round(timeout * 1000 / 3), round(timeout * 1000))
