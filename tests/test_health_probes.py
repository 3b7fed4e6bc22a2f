"""The health probes ``GET /livez`` and ``GET /readyz`` (miyaq.gateway.health).

Before them an orchestrator could only probe a TCP connect: the service
port is bound when the node is built, before its log's replay and long
before it is back in the ring, so a StatefulSet rolling update stopped the
next node while the last one was still replaying (two of three holders
down at once); a SIGSTOPped node still accepted connections (the kernel's
backlog); and ``/status`` needs a token, which a probe would have to carry
in its manifest. The probes need no token, over HTTP or HTTPS, and answer
one status word."""
from __future__ import annotations

import http.client
import logging
import ssl
from types import SimpleNamespace
from typing import Any

import gevent.socket
import pytest
from gateway_harness import FIXTURES, Http
from test_http_tls import make_cert

from miyaq.constants import STALL
from miyaq.core.gate import RECONCILING
from miyaq.gateway.health import Health
from miyaq.runtime import monotonic
from miyaq.testing.inprocess import InProcessCluster
from miyaq.testing.ports import free_port

http_node, api, make_http_node, make_web_worker = FIXTURES

TOKEN = "probe-admin-token-0123456789abcdef"


def test_probes_answer_without_a_token_on_a_node_with_tokens(make_http_node, caplog):
    """Fault: every endpoint needed a token (an endpoint missing from the
    role table needed admin), so a probe had to carry a token in its manifest
    or fall back to a TCP connect. Now ``/livez`` and ``/readyz`` answer
    without one -- or with a wrong one -- while ``/status`` still needs
    one; HEAD works as for any GET; no log line is written for them."""
    caplog.set_level(logging.DEBUG)
    node = make_http_node(http_token=TOKEN)
    anonymous, wrong = Http(node.url), Http(node.url, token="not-the-token-0123456789abcdef")
    try:
        for client in (anonymous, wrong):
            assert client.get("/livez")[:2] == (200, {"status": "live"})
            status, body, headers = client.get("/readyz")
            assert (status, body) == (200, {"status": "ready"})
            assert headers["cache-control"] == "no-store"
            assert client.get("/status")[0] == 401
            assert client.get("/metrics")[0] == 401
        assert anonymous.post("/readyz", {})[0] == 405           # only GET and HEAD
        head = http.client.HTTPConnection("127.0.0.1", node.config.http_port, timeout=15)
        head.request("HEAD", "/readyz")
        assert head.getresponse().status == 200
        head.close()
    finally:
        anonymous.close()
        wrong.close()
    assert not [r for r in caplog.records if "livez" in r.getMessage() or "readyz" in r.getMessage()]


def test_probes_answer_over_https_without_a_token(make_http_node, tmp_path):
    """Fault: as above, over HTTPS (the probe's ``scheme: HTTPS``): the
    kubelet sends no token and does not check the certificate."""
    cert, key = make_cert(tmp_path, "node")
    node = make_http_node(http_cert=str(cert), http_key=str(key), http_token=TOKEN)
    context = ssl.create_default_context(cafile=str(cert))
    for path, expected in (("/livez", 200), ("/readyz", 200), ("/status", 401)):
        conn = http.client.HTTPSConnection("127.0.0.1", node.config.http_port, context=context, timeout=15)
        try:
            conn.request("GET", path)
            assert conn.getresponse().status == expected, path
        finally:
            conn.close()


def test_readyz_is_503_while_draining_or_held_and_200_when_serving(make_http_node):
    """Fault: nothing told a probe that the node would not serve: a
    reconciling or draining node looked ready. Now ``/readyz`` answers 503
    naming why while the dispatch gate is held for a reconcile, 200 once it
    opens, and 503 ``draining`` once SIGTERM's drain began; ``/livez`` stays
    200 meanwhile (a node that answers is alive)."""
    node = make_http_node(http_token=TOKEN)
    client = Http(node.url)
    try:
        gate = node.call(lambda: node.node.core.gate)
        node.call(lambda: gate.close(RECONCILING))
        assert client.get("/readyz")[:2] == (503, {"status": "reconciling"})
        node.call(lambda: gate.open(RECONCILING))
        assert client.get("/readyz")[:2] == (200, {"status": "ready"})
        node.call(node.node.core.drain)
        assert client.get("/readyz")[:2] == (503, {"status": "draining"})
        assert client.get("/livez")[:2] == (200, {"status": "live"})
    finally:
        client.close()


def test_livez_is_503_when_housekeeping_stopped_stamping():
    """Fault: a node whose housekeeping no longer ran (its greenlet wedged)
    still looked alive to a TCP probe. Now a clustered node whose
    housekeeping stamp is older than STALL answers ``stalled``; a fresh
    stamp, or none (a standalone node does not stamp), is live."""
    def health(alive_at: float) -> Health:
        return Health(SimpleNamespace(dispatcher=SimpleNamespace(alive_at=alive_at)), None)  # type: ignore[arg-type]
    assert health(monotonic() - STALL - 1).not_live() == "stalled"
    assert health(monotonic()).not_live() == ""
    assert health(0.0).not_live() == ""


def probe(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` from a gateway in this hub (gevent sockets: the
    in-process nodes run while this waits). Returns (status, body)."""
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def start_with_gateways(cluster: InProcessCluster, ports: dict[str, int], **settings: Any) -> None:
    for node_id in cluster.ids:
        cluster.start_node(node_id, http_port=ports.setdefault(node_id, free_port()), **settings)


@pytest.fixture
def cluster():
    made = InProcessCluster(3, replicas=3)
    yield made
    made.close()


def test_readyz_in_a_cluster_waits_for_the_ring(cluster):
    """Fault: a clustered node looked ready as soon as its ports were bound,
    before the ring listed it (the audit's rolling update: TCP-ready 0.8 s
    after start, in the ring 7 s after). Now ``/readyz`` is 503
    ``not_in_ring`` until the ring the node holds lists it, 200 then, and
    503 again for a node the ring dropped (``miyaq leave``)."""
    ports: dict[str, int] = {}
    start_with_gateways(cluster, ports)
    for node_id in cluster.ids:
        assert probe(ports[node_id], "/readyz") == (503, b'{"status":"not_in_ring"}'), node_id
        assert probe(ports[node_id], "/livez")[0] == 200
    cluster.publish(cluster.ids)
    for node_id in cluster.ids:
        assert probe(ports[node_id], "/readyz") == (200, b'{"status":"ready"}'), node_id
    cluster.publish(["n1", "n2"])
    assert probe(ports["n3"], "/readyz") == (503, b'{"status":"not_in_ring"}')
    assert probe(ports["n1"], "/readyz")[0] == 200


def test_readyz_of_a_restarted_node_waits_for_its_reconcile(tmp_path):
    """Fault: a node restarted from its log looked ready while it still
    reconciled with its peers (dispatch held), so the next node of a rolling
    update was stopped meanwhile. Now ``/readyz`` is 503 ``reconciling``
    until the reconcile ends (here: its resyncs are lost, so on its
    timeout), then 200."""
    cluster = InProcessCluster(2, replicas=2, data_dir=str(tmp_path), fsync="always")
    try:
        ports: dict[str, int] = {}
        start_with_gateways(cluster, ports)
        cluster.publish(cluster.ids)
        cluster.submit_accepted("n1", countdown=600)
        cluster.stop_node("n2")
        cluster.net.drop("SYNC", src="n2")
        back = cluster.start_node("n2", http_port=ports["n2"])
        assert back.node.core.gate.holds(RECONCILING)
        assert probe(ports["n2"], "/readyz") == (503, b'{"status":"reconciling"}')
        cluster.advance(cluster.settings["reconcile_timeout"] + 0.5)
        cluster.wait_until(lambda: not back.node.core.gate.holds(RECONCILING), what="n2's reconcile to end")
        assert probe(ports["n2"], "/readyz") == (200, b'{"status":"ready"}')
    finally:
        cluster.close()
