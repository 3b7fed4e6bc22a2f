"""The harness's nodes when another process takes a picked port first.

Fault (a suite run under load, 2026-12-07): the picker (miyaq.testing.ports)
checks a port free, and the node binds it a moment later; another process
-- another test's subprocess, another suite on the machine -- took it in
between, and the node failed to start ("port 20781 is in use (service
port)"), failing a test that had nothing to do with ports. A node the
harness picked the ports of is now started again on fresh ones (a bounded
number of times, with a WARNING); one whose port the test named still
fails with the error, which tests of that error check.

The fault is played by handing the node, once, a port this test holds
(listening), then the picker's own choice.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from miyaq.client.client import Client
from miyaq.errors import ConfigError, MiyaqError
from miyaq.testing import harness, ports
from miyaq.testing.harness import ThreadNode
from miyaq.testing.zookeeper import ZooKeeperServer


@pytest.fixture
def held() -> Iterator[int]:
    """A loopback port this test listens on (taken, as by another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def hand_out_first(monkeypatch, taken: int, times: int = 1, after: int = 0) -> list[int]:
    """The picker hands out ``taken`` for ``times`` picks after its next
    ``after``, its own choices otherwise; returns the list of every port it
    handed out."""
    real = ports.free_port
    handed: list[int] = []

    def picker(span: int = 1, host: str = "127.0.0.1") -> int:
        port = taken if after <= len(handed) < after + times else real(span, host)
        handed.append(port)
        return port

    monkeypatch.setattr(ports, "free_port", picker)
    return handed


def test_a_thread_node_whose_picked_port_was_taken_starts_on_fresh_ports(monkeypatch, held, caplog):
    handed = hand_out_first(monkeypatch, held)
    with caplog.at_level(logging.WARNING, logger="miyaq.testing.harness"):
        with ThreadNode(shutdown_grace=0.2) as node:
            assert handed[0] == held and node.config.port == handed[-1] != held
            client = Client(node.endpoint, request_timeout=5)
            try:
                assert client.status()["node"] == node.config.node_id == f"t{node.config.port}"
            finally:
                client.close(flush=False)
    assert any(f"port {held} (service port) was taken" in r.getMessage() for r in caplog.records)


def test_a_thread_node_on_a_port_the_test_named_still_fails_in_use(monkeypatch, held):
    handed = hand_out_first(monkeypatch, held)
    with pytest.raises(ConfigError, match=f"port {held} is in use \\(service port on 127.0.0.1\\)"):
        ThreadNode(port=held, shutdown_grace=0.2).start()
    assert handed == []


def test_a_thread_node_gives_up_after_port_tries_starts(monkeypatch, held):
    handed = hand_out_first(monkeypatch, held, times=100)
    with pytest.raises(ConfigError, match=f"port {held} is in use"):
        ThreadNode(shutdown_grace=0.2).start()
    assert handed == [held] * harness.PORT_TRIES


def test_a_node_process_whose_picked_port_was_taken_starts_on_fresh_ports(monkeypatch, held, procs, client_for):
    handed = hand_out_first(monkeypatch, held)
    node = procs.node()
    assert handed[0] == held and node.port == handed[-1] != held
    assert node.endpoint == f"tcp://127.0.0.1:{node.port}"
    assert client_for(node.endpoint).status()["node"] == f"n{node.port}"


def test_a_node_process_on_a_port_the_test_named_still_fails_in_use(monkeypatch, held, procs):
    handed = hand_out_first(monkeypatch, held)
    with pytest.raises(Exception, match="node exited early") as failed:
        procs.node(port=held)
    assert f"miyaq: error: port {held} is in use (service port on 127.0.0.1)" in str(failed.value)
    assert handed == []


def test_a_zookeeper_whose_picked_port_was_taken_starts_on_a_fresh_one(monkeypatch, held, caplog):
    handed = hand_out_first(monkeypatch, held)
    server = ZooKeeperServer()
    try:
        with caplog.at_level(logging.WARNING, logger="miyaq.testing.zookeeper"):
            server.start()
        assert handed[0] == held and server.port == handed[-1] != held
        assert server.serving()
    finally:
        server.close()
    assert any(f"port {held} was taken" in r.getMessage() for r in caplog.records)


def test_a_zookeeper_on_a_port_the_caller_named_still_fails_in_use(monkeypatch, held):
    handed = hand_out_first(monkeypatch, held)
    server = ZooKeeperServer(port=held)
    try:
        with pytest.raises(MiyaqError, match="exited with code") as failed:
            server.start()
        assert "Address already in use" in str(failed.value)
    finally:
        server.close()
    assert handed == []


def test_a_gateway_test_node_whose_picked_http_port_was_taken_starts_on_fresh_ports(monkeypatch, held):
    from gateway_harness import Http, NodeThread

    handed = hand_out_first(monkeypatch, held, after=3)      # its 4th pick: the HTTP port
    node = NodeThread()
    try:
        assert handed[3] == held and node.config.http_port == handed[-1] != held
        http = Http(node.url)
        try:
            assert http.get("/status")[0] == 200
        finally:
            http.close()
    finally:
        node.stop()


def test_a_gateway_test_node_on_an_http_port_the_test_named_still_fails_in_use(monkeypatch, held):
    from gateway_harness import NodeThread

    hand_out_first(monkeypatch, held, times=0)
    with pytest.raises(RuntimeError, match=f"port {held} is in use \\(HTTP gateway on 127.0.0.1\\)"):
        NodeThread(http_port=held)


def test_a_cluster_node_whose_picked_port_was_taken_starts_on_fresh_ports(zk_server, zk_cluster_name, procs,
                                                                           client_for, monkeypatch, held):
    """The run that lost tests/test_peer_versions.py's test: nodes started
    together (``wait=False``), one of them on a port taken meanwhile; its
    client is one to the node's final port."""
    from cluster_harness import Cluster

    cluster = Cluster(procs, zk_server.hosts, zk_cluster_name, client_for)
    handed = hand_out_first(monkeypatch, held, after=1)     # the second node's pick
    cluster.start(2)
    assert handed[1] == held and held not in (cluster.nodes["n0"].port, cluster.nodes["n1"].port)
    assert cluster.nodes["n1"].endpoint == f"tcp://127.0.0.1:{cluster.nodes['n1'].port}"
    assert cluster.client("n1").status()["node"] == "n1"


def test_an_in_process_node_whose_picked_port_was_taken_starts_on_a_fresh_one(monkeypatch, held, inproc):
    handed = hand_out_first(monkeypatch, held, after=1)     # the second node's pick
    cluster = inproc(nodes=2)
    ports_now = sorted(handle.config.port for handle in cluster.nodes.values())
    assert handed[1] == held and held not in ports_now and len(set(ports_now)) == 2
