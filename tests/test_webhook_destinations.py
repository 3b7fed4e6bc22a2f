"""Where webhooks may go, and what they may carry (issue 9).

Attacks played: a webhook header value with CR/LF (header injection into
the node's request), a webhook aimed at the cloud metadata address, at
loopback or at private networks (server-side request forgery), a hostname
that resolves to such an address, and DNS that changes between the enqueue
and the delivery. No test sends anything beyond loopback: a "public"
address is only ever resolved, never connected to.
"""
from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from gateway_harness import FIXTURES, Http, NodeThread, wait_for

import miyaq
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.connections import Connections
from miyaq.protocol.taskspec import task_from_wire

http_node, api, make_http_node, make_web_worker = FIXTURES

PUBLIC = "93.184.216.34"   # resolved in these tests, never connected to


def task_of(api: Http, task_id: str) -> dict[str, Any]:
    return api.get(f"/tasks/{task_id}")[1]["task"]


def fake_dns(answers: dict[str, str]):
    """A resolver with the signature of getaddrinfo answering from ``answers``."""
    def resolve(host: str, port: int, *args: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        address = answers[host]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]
    return resolve


def use_dns(node: NodeThread, answers: dict[str, str]) -> None:
    """Make the node's gateway resolve webhook hosts from ``answers``."""
    def install() -> None:
        node.node.part("gateway").destinations._resolve = fake_dns(answers)
    node.call(install)


# -- CR/LF in headers ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "nul\x00", "bell\x07"])
def test_crlf_header_refused_at_an_http_enqueue(api, value):
    """The CR/LF header: a webhook header value with CR or LF (or another
    control character) would let a submitter write headers of its own into
    the node's request. POST /queue refuses it with 400 naming the header,
    and stores nothing."""
    status, body, _ = api.post("/queue", {"url": "http://hooks.example.test/x", "headers": {"X-Evil": value}})
    assert status == 400 and body["error"]["field"] == "headers", body
    assert "X-Evil" in body["error"]["message"]
    assert api.get("/status")[1]["totals"]["live"] == 0


def test_a_header_name_that_is_not_a_token_is_refused(api):
    """A header name with a space, colon or newline is refused the same way."""
    for name in ("X Evil", "X-Evil:", "X\r\nEvil", ""):
        status, body, _ = api.post("/queue", {"url": "http://hooks.example.test/x", "headers": {name: "v"}})
        assert status == 400 and body["error"]["field"] == "headers", (name, body)


def test_crlf_header_refused_at_a_zeromq_submit(http_node):
    """The CR/LF header over ZeroMQ: submit_url with such a header is refused
    invalid_field (field headers) and nothing is stored."""
    client = miyaq.Client(f"tcp://127.0.0.1:{http_node.config.port}")
    try:
        with pytest.raises(miyaq.ProtocolError) as info:
            client.submit_url("http://hooks.example.test/x", b"", headers={"X-Evil": "a\r\nHost: other"}, wait=True)
        assert info.value.code == "invalid_field" and "X-Evil" in str(info.value)
        assert client.status()["totals"]["live"] == 0
    finally:
        client.close()


def test_a_stored_crlf_header_is_never_sent(make_http_node, make_web_worker):
    """A task that holds such a header anyway (stored before this check, or
    by a peer) is dead-lettered as InvalidHeader before any byte is sent."""
    worker = make_web_worker()
    node = make_http_node(webhook_allow_private=True)
    api = Http(node.url)

    def store() -> str:
        task = task_from_wire({"id": "stored-crlf", "url": f"{worker.url}/x", "headers": {"X-Ok": "1"}},
                              time.time(), node.config)
        task.meta["headers"]["X-Evil"] = "a\r\nX-Injected: 1"
        node.node.core.engine.submit(task, task.created)
        node.node.part("gateway").redispatch()
        return task.id

    try:
        task_id = node.call(store)
        wait_for(lambda: task_of(api, task_id)["state"] == "dead", "the task to be refused")
        assert task_of(api, task_id)["error"]["type"] == "InvalidHeader"
        assert worker.count() == 0
    finally:
        api.close()


# -- private destinations -----------------------------------------------------------------------

@pytest.mark.parametrize("host", ["169.254.169.254", "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.0.1",
                                  "172.31.255.255", "192.168.1.1", "100.64.0.1", "0.0.0.0", "[::1]", "[fc00::1]",
                                  "[fd12::1]", "[fe80::1]", "[::ffff:127.0.0.1]", "[::ffff:169.254.169.254]",
                                  "localhost", "api.localhost", "224.0.0.1",
                                  # IPv6 forms a network may translate to a private IPv4 address
                                  # (NAT64, 6to4, IPv4-compatible): let through before 2026-12-05
                                  "[64:ff9b::a9fe:a9fe]", "[64:ff9b::10.0.0.1]", "[64:ff9b:1::7f00:1]",
                                  "[2002:a9fe:a9fe::1]", "[::127.0.0.1]",
                                  # IPv4-translated (SIIT), and localhost fully qualified: let
                                  # through before 2026-12-07 (review30)
                                  "[::ffff:0:a9fe:a9fe]", "[::ffff:0:127.0.0.1]", "localhost.",
                                  "api.localhost."])
def test_private_webhook_target_refused_at_an_http_enqueue(api, host):
    """The private webhook target: with no allow-list a webhook could target
    any address, the cloud metadata service at 169.254.169.254 included.
    Loopback, link-local, private, shared and multicast addresses (and
    IPv4-mapped IPv6 forms) are refused 403 forbidden_destination naming the
    field, unless webhook_allow_private."""
    for body, field in (({"url": f"http://{host}:8080/hook"}, "url"),):
        status, answer, _ = api.post("/queue", body)
        assert status == 403 and answer["error"]["code"] == "forbidden_destination", answer
        assert answer["error"]["field"] == field
    status, answer, _ = api.post("/queue", raw=f"task.url=http://{host}/hook".encode(),
                                 content_type="application/x-www-form-urlencoded")
    assert status == 403 and answer["error"]["field"] == "task.url", answer
    assert api.get("/status")[1]["totals"]["live"] == 0


def test_a_hostname_resolving_to_a_private_address_is_refused(http_node, api):
    """A name of the attacker's that resolves to 169.254.169.254 is refused
    at enqueue like the address itself; a name resolving to a public address
    is accepted, and a name that does not resolve is let through (its
    delivery will tell)."""
    use_dns(http_node, {"metadata.attacker.test": "169.254.169.254", "hooks.example.test": PUBLIC})
    status, answer, _ = api.post("/queue", {"url": "http://metadata.attacker.test/latest/meta-data"})
    assert status == 403 and "169.254.169.254" in answer["error"]["message"], answer
    for url in ("http://hooks.example.test/x", "http://unknown.example.test/x"):
        status, answer, _ = api.post("/queue", {"url": url, "countdown": 3600})
        assert status == 200, answer


def test_dns_that_changes_after_the_enqueue_is_checked_at_delivery(http_node, api):
    """DNS rebinding: the name is public when enqueued, then resolves to the
    metadata address when the node connects. The delivery resolves and
    checks again, so the task is dead-lettered ForbiddenDestination and no
    connection is made."""
    use_dns(http_node, {"rebind.attacker.test": PUBLIC})
    status, answer, _ = api.post("/queue", {"url": "http://rebind.attacker.test/x", "countdown": 0.5})
    assert status == 200, answer
    use_dns(http_node, {"rebind.attacker.test": "169.254.169.254"})
    task_id = answer["id"]
    wait_for(lambda: task_of(api, task_id)["state"] == "dead", "the delivery to be refused")
    error = task_of(api, task_id)["error"]
    assert error["type"] == "ForbiddenDestination" and "169.254.169.254" in error["message"], error


def test_a_webhook_submitted_over_zeromq_to_loopback_is_dead_lettered(http_node, api, make_web_worker):
    """ZeroMQ's submit_url is not checked by the gateway at submit: the
    delivery refuses loopback, and the web worker listening there never
    gets a request."""
    worker = make_web_worker()
    client = miyaq.Client(f"tcp://127.0.0.1:{http_node.config.port}")
    try:
        handle = client.submit_url(f"{worker.url}/internal", b"x", wait=True)
        wait_for(lambda: task_of(api, handle.id)["state"] == "dead", "the delivery to be refused")
    finally:
        client.close()
    assert task_of(api, handle.id)["error"]["type"] == "ForbiddenDestination"
    assert worker.count() == 0
    metrics = api.get("/metrics")[1].decode()
    assert 'miyaq_webhook_deliveries_total{queue="default",result="forbidden"} 1.0' in metrics


def test_webhook_allow_private_lets_this_machine_be_a_destination(make_http_node, make_web_worker):
    """--webhook-allow-private: a web worker on 127.0.0.1 gets its task."""
    worker = make_web_worker()
    node = make_http_node(webhook_allow_private=True)
    api = Http(node.url)
    try:
        status, answer, _ = api.post("/queue", {"url": f"{worker.url}/ok"})
        assert status == 200, answer
        wait_for(lambda: task_of(api, answer["id"])["state"] == "done", "the delivery")
    finally:
        api.close()


def test_an_allow_list_decides_alone(make_http_node, make_web_worker):
    """With webhook_allow_hosts the list decides: a listed loopback address
    is delivered to, an unlisted public name is refused."""
    worker = make_web_worker()
    node = make_http_node(webhook_allow_hosts=f"127.0.0.1:{worker.port}")
    api = Http(node.url)
    try:
        status, answer, _ = api.post("/queue", {"url": f"{worker.url}/ok"})
        assert status == 200, answer
        wait_for(lambda: task_of(api, answer["id"])["state"] == "done", "the delivery")
        status, answer, _ = api.post("/queue", {"url": "http://hooks.example.test/x"})
        assert status == 403, answer
    finally:
        api.close()


def test_the_deliverer_connects_to_the_address_it_checked():
    """Checked and connected are the same address: the pool for a
    destination is made for the resolved, approved address, with the URL's
    host kept for the Host header and the TLS server name (no second lookup
    that DNS could answer differently). Nothing is connected here."""
    destinations = Destinations("", False, resolve=fake_dns({"hooks.example.test": PUBLIC}))
    connections = Connections(2, 1.0, destinations)
    try:
        plain = connections.destination(("http", "hooks.example.test", 8080)).take(1.0)
        secure = connections.destination(("https", "hooks.example.test", 443)).take(1.0)
        assert plain.address == PUBLIC and secure.address == PUBLIC
        # the Host header and, for https, the TLS server name come from the host, not the address
        assert (plain.host, plain.port, secure.host, secure.port) == ("hooks.example.test", 8080,
                                                                      "hooks.example.test", 443)
        assert secure.default_port == 443 and getattr(secure, "context", None) is not None
    finally:
        connections.close()
