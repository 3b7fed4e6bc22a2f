"""A task asked over HTTP of a node that does not hold it (miyaq.gateway.tasks_api).

Fault: an HTTP client POSTs a task to a member of a ring with more nodes
than ``replicas`` (or to a node that then left the ring, ``miyaq leave``);
the member coordinates the submit but the ring puts the copies on other
nodes. The client then asks that member for the task's result or status
and got a bare 404 "no task <id>" -- one ask in three in a 3-node ring
with 2 replicas, 39 and 81 in two soak runs -- with nothing saying where
the task is. Now such a node's 404 (code ``not_found`` still) says it is
not one of the holders, or is outside the ring, and names the holders'
HTTP URLs in its message and in the field ``holders``; a holder's 404 is
as before.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import gevent.socket
import pytest

from miyaq.testing.inprocess import InProcessCluster
from miyaq.testing.ports import free_port


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to a gateway in this hub (gevent sockets: the in-process
    nodes run while this waits). Returns (status, decoded JSON body or None)."""
    data = json.dumps(body).encode() if body is not None else b""
    return exchange(port, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: "
                          f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)


def exchange(port: int, request: bytes) -> tuple[int, Any]:
    """Send ``request`` as these bytes, read the answer to its end: (status, decoded JSON body or None)."""
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    finally:
        sock.close()
    head, _, answer = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(answer) if answer else None


@pytest.fixture
def ring():
    """Three in-process nodes with gateways, ``replicas`` 2, each member
    registered with its HTTP URL (as ``http_url`` is on ZooKeeper)."""
    cluster = InProcessCluster(3, replicas=2)
    ports: dict[str, int] = {}
    try:
        for node_id in cluster.ids:
            ports[node_id] = free_port()
            cluster.start_node(node_id, http_port=ports[node_id])
            member = cluster.script.registered[node_id]
            cluster.script.registered[node_id] = replace(member, http=f"http://127.0.0.1:{ports[node_id]}")
        cluster.publish(cluster.ids)
        yield cluster, ports
    finally:
        cluster.close()


def urls(ports: dict[str, int], node_ids: list[str]) -> list[str]:
    return [f"http://127.0.0.1:{ports[n]}" for n in node_ids]


def task_not_on(cluster: InProcessCluster, node_id: str) -> str:
    while True:
        tid = cluster.task_id()
        if node_id not in cluster.holders(tid):
            return tid


def test_a_member_that_is_not_a_holder_names_the_holders(ring):
    cluster, ports = ring
    tid = task_not_on(cluster, "n1")
    holders = cluster.holders(tid)
    status, body = call(ports["n1"], "POST", "/tasks", {"id": tid, "name": "job", "countdown": 600})
    assert status == 202 and body["status"] == "accepted", body
    cluster.wait_until(lambda: all(cluster[h].state(tid) == "scheduled" for h in holders), what="both copies")
    assert cluster["n1"].state(tid) is None      # coordinated by n1, held by the two others

    for method, path in (("GET", f"/tasks/{tid}/result"), ("GET", f"/tasks/{tid}/result?timeout=30"),
                         ("GET", f"/tasks/{tid}"), ("DELETE", f"/tasks/{tid}")):
        status, body = call(ports["n1"], method, path)
        assert status == 404, (method, path, body)
        error = body["error"]
        assert error["code"] == "not_found"
        assert error["holders"] == urls(ports, holders), (method, path, error)
        assert "node n1 is not one of its holders" in error["message"]
        assert all(url in error["message"] for url in error["holders"])

    # a holder answers as it always did; the task was not cancelled by the DELETE above
    status, body = call(ports[holders[0]], "GET", f"/tasks/{tid}/result")
    assert (status, body) == (200, {"id": tid, "state": "scheduled", "done": False})
    status, body = call(ports[holders[1]], "GET", f"/tasks/{tid}")
    assert status == 200 and body["task"]["state"] == "scheduled"


def test_a_holders_404_is_unchanged(ring):
    """A node the ring makes a holder of an id nobody knows says only "no task"."""
    cluster, ports = ring
    tid = cluster.task_led_by("n2")
    for path in (f"/tasks/{tid}/result", f"/tasks/{tid}"):
        status, body = call(ports["n2"], "GET", path)
        assert (status, body) == (404, {"error": {"code": "not_found", "message": f"no task {tid}"}})


def test_a_node_outside_the_ring_says_so_and_names_the_holders(ring):
    cluster, ports = ring
    tid = cluster.task_led_by("n1")
    cluster.publish(["n2", "n3"])         # n1 taken out, as with `miyaq leave`
    holders = cluster.holders(tid)
    assert "n1" not in holders
    for path in (f"/tasks/{tid}/result", f"/tasks/{tid}"):
        status, body = call(ports["n1"], "GET", path)
        assert status == 404, body
        assert body["error"]["holders"] == urls(ports, holders)
        assert "node n1 is outside the ring" in body["error"]["message"]


def test_holders_without_an_http_gateway_are_not_named(ring):
    """A member registered without ``http`` (its gateway is off) is left
    out of ``holders``; the message says none can be named."""
    cluster, ports = ring
    for node_id in ("n2", "n3"):
        cluster.script.registered[node_id] = replace(cluster.script.registered[node_id], http=None)
    cluster.publish(cluster.ids)
    tid = task_not_on(cluster, "n1")
    status, body = call(ports["n1"], "GET", f"/tasks/{tid}/result")
    assert status == 404
    assert body["error"]["holders"] == []
    assert "no holder has an HTTP gateway the ring knows" in body["error"]["message"]


def keyed_task_not_on(cluster: InProcessCluster, node_id: str) -> tuple[str, str]:
    """An id and a key whose holders both leave out ``node_id``, and differ
    (so asking by the id alone names the wrong nodes)."""
    for n in range(10_000):
        key = f"customer-{n}"
        if node_id in cluster.holders("x", key=key):
            continue
        tid = cluster.task_id()
        if node_id not in cluster.holders(tid) and cluster.holders(tid) != cluster.holders("x", key=key):
            return tid, key
    raise AssertionError("no such key in 10,000")


def test_a_keyed_task_asked_with_its_key_names_the_keys_holders(ring):
    """Fault: a task submitted with a ``key`` is placed by the key, so the
    holders a non-holder named from the id alone were other nodes' (the
    client followed them and found nothing). With ``?key=`` (and
    ``?replicas=`` for a task with replicas of its own) they are the task's."""
    cluster, ports = ring
    tid, key = keyed_task_not_on(cluster, "n1")
    key_holders = cluster.holders(tid, key=key)
    status, body = call(ports["n1"], "POST", "/tasks", {"id": tid, "name": "job", "countdown": 600, "key": key})
    assert status == 202 and body["status"] == "accepted", body
    cluster.wait_until(lambda: all(cluster[h].state(tid) == "scheduled" for h in key_holders), what="both copies")

    for method, path in (("GET", f"/tasks/{tid}/result?key={key}"), ("GET", f"/tasks/{tid}?key={key}"),
                         ("DELETE", f"/tasks/{tid}?key={key}&replicas=2")):
        status, body = call(ports["n1"], method, path)
        assert status == 404, (method, path, body)
        assert body["error"]["holders"] == urls(ports, key_holders), (method, path, body)

    # without the key the id's holders are named: not the task's (documented)
    status, body = call(ports["n1"], "GET", f"/tasks/{tid}")
    assert body["error"]["holders"] == urls(ports, cluster.holders(tid)) != urls(ports, key_holders)

    # a holder by the key answers with the task, the key given or not
    status, body = call(ports[key_holders[0]], "GET", f"/tasks/{tid}?key={key}")
    assert status == 200 and body["task"]["state"] == "scheduled", body

    # with ``replicas``: the holders of that many
    status, body = call(ports["n1"], "GET", f"/tasks/{tid}?key={key}&replicas=1")
    assert body["error"]["holders"] == urls(ports, key_holders[:1])


@pytest.mark.parametrize("query, field", [("key=", "key"), ("key=" + "k" * 257, "key"),
                                          ("replicas=0", "replicas"), ("replicas=17", "replicas"),
                                          ("replicas=two", "replicas")])
def test_a_bad_key_or_replicas_parameter_is_refused_and_changes_nothing(ring, query, field):
    """Bad input: a ``key`` or ``replicas`` query parameter out of bounds is
    a 400 naming it, on a holder too, and a DELETE so refused cancels nothing."""
    cluster, ports = ring
    tid = cluster.task_led_by("n2")
    status, body = call(ports["n2"], "POST", "/tasks", {"id": tid, "name": "job", "countdown": 600})
    assert status == 202, body
    for method in ("GET", "DELETE"):
        status, body = call(ports["n2"], method, f"/tasks/{tid}?{query}")
        assert status == 400, (method, query, body)
        assert body["error"]["field"] == field, body
    assert cluster["n2"].state(tid) == "scheduled"


def raw_get(port: int, target: bytes) -> tuple[int, Any]:
    """A GET whose request target is sent as these bytes, unencoded (as
    curl sends a literal ``?key=clé``)."""
    return exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")


def test_a_key_sent_as_raw_utf8_names_the_same_holders_as_percent_encoded(ring):
    """Fault: a query with raw bytes outside ASCII reached the handler as
    Latin-1 (the WSGI convention), so ``?key=clé`` sent unencoded was read
    as ``clÃ©`` and the holders named were another key's (or the node took
    itself for a holder and said only "no task"). Raw UTF-8 now reads as
    the UTF-8 it is; bytes that are not UTF-8 are a 400."""
    from urllib.parse import quote
    cluster, ports = ring
    tid = cluster.task_id()
    key = next(k for k in (f"clé-{n}-☃" for n in range(10_000)) if "n1" not in cluster.holders(tid, key=k))
    holders = urls(ports, cluster.holders(tid, key=key))
    status, encoded = call(ports["n1"], "GET", f"/tasks/{tid}?key={quote(key)}")
    assert status == 404 and encoded["error"]["holders"] == holders, encoded
    status, body = raw_get(ports["n1"], f"/tasks/{tid}?key={key}".encode())
    assert status == 404 and body["error"]["holders"] == holders, body
    status, body = raw_get(ports["n1"], f"/tasks/{tid}?key=".encode() + b"cl\xe9")   # Latin-1, not UTF-8
    assert status == 400 and body["error"]["field"] == "query", body
