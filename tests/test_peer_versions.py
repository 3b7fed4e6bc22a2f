"""Protocol versions across a rolling upgrade: a peer that announces a peer
protocol newer than the node speaks is refused with ``bad_version`` and a
logged error, never misread (docs/cluster.md, "Versions")."""
from __future__ import annotations

import pytest
import zmq
from cluster_harness import Cluster

from miyaq.cluster.peer_requests import ANSWER, QUERY
from miyaq.cluster.peer_versions import PEER_PROTOCOL
from miyaq.protocol import codec
from miyaq.testing.harness import wait_for


@pytest.fixture
def cluster(procs, zk_server, zk_cluster_name, client_for):
    return Cluster(procs, zk_server.hosts, zk_cluster_name, client_for)


@pytest.fixture
def peer_socket():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    yield sock
    sock.close(linger=0)
    ctx.term()


def ask(sock, body: dict) -> dict:
    sock.send_multipart(codec.encode(QUERY, body))
    assert sock.poll(10_000), "the node did not answer the peer request"
    _, answer = codec.decode(sock.recv_multipart(), frozenset({ANSWER}), 1 << 20)
    return answer


def test_a_peer_announcing_a_newer_protocol_is_refused_with_a_logged_error(cluster, peer_socket):
    """Fault: during a rolling upgrade, a node of the next version (peer
    protocol PEER_PROTOCOL + 1) sends a QUERY to a node of this one. The
    request is answered bad_version with a message naming both versions,
    the node logs it, and the same request in the version it speaks is
    answered as usual."""
    cluster.start(1)
    node = cluster.nodes["n0"]
    peer_socket.connect(f"tcp://127.0.0.1:{node.port + 1}")
    newer = PEER_PROTOCOL + 1
    answer = ask(peer_socket, {"from": "n9", "req": 7, "proto": newer, "ids": ["t1"]})
    assert answer["code"] == "bad_version" and answer["req"] == 7
    assert f"peer protocol {newer}" in answer["message"] and "n9" in answer["message"]
    assert "states" not in answer
    wait_for(lambda: "refused a peer's request" in node.log_tail(400), what="the refusal in the node's log")
    line = next(x for x in node.log_tail(400).splitlines() if "refused a peer's request" in x)
    assert "ERROR" in line and "from 127.0.0.1 (node n9; 1 so far, code bad_version)" in line, line
    answer = ask(peer_socket, {"from": "n9", "req": 8, "proto": PEER_PROTOCOL, "ids": ["t1"]})
    assert isinstance(answer.pop("clock"), float)      # every answer carries its sender's clock
    assert answer == {"req": 8, "states": {"t1": ["unknown"]}, "speaks": PEER_PROTOCOL}
    answer = ask(peer_socket, {"from": "n9", "req": 9, "ids": ["t1"]})     # a node from before versions
    assert answer["states"] == {"t1": ["unknown"]}


def test_a_malformed_peer_protocol_version_is_refused(cluster, peer_socket):
    """Bad input from a peer: a ``proto`` that is not a version number is refused, not guessed at."""
    cluster.start(1)
    peer_socket.connect(f"tcp://127.0.0.1:{cluster.nodes['n0'].port + 1}")
    for req, proto in enumerate(["2", 0, True, None, 2.0], start=1):
        answer = ask(peer_socket, {"from": "n9", "req": req, "proto": proto, "ids": ["t1"]})
        assert answer["code"] == "bad_version", proto


@pytest.mark.parametrize("frames, code", [
    ([b"MQ1", QUERY, b"\xc1"], "bad_encoding"),              # a body that is not msgpack
    ([b"MQ1", b"HELLO?", b"\x80"], "unknown_command"),
    ([b"MQ1", QUERY, b"\x80", b"", b"more"], "bad_frame"),    # more frames than a peer request has
])
def test_a_malformed_peer_request_is_logged_with_its_address(cluster, frames, code):
    """Fault: something that is not a miyaq node (a port scanner, a client
    pointed at the peer port, a buggy build) sends the peer port a message no
    node sends. It was answered and counted, never logged: an operator had
    no sign of it, nor of where it came from. The node logs it naming the
    connection's address, a few lines a minute for each code."""
    from test_operator_signs import RawDealer

    cluster.start(1)
    node = cluster.nodes["n0"]
    raw = RawDealer(node.port + 1)
    try:
        raw.send(frames)
        wait_for(lambda: f"code {code})" in node.log_tail(400), what="the refusal in the node's log")
    finally:
        raw.close()
    line = next(x for x in node.log_tail(400).splitlines() if f"code {code})" in x)
    assert f"refused a peer's request from 127.0.0.1 (no node id; 1 so far, code {code})" in line, line
    assert "WARNING" in line


def test_a_huge_claimed_node_id_makes_no_huge_log_line(cluster, peer_socket):
    """Fault: a stranger on the peer port claims a node id of a megabyte
    (and a version as large) in a request of another peer protocol. The
    refusal's line and answer quoted both whole: five lines a minute of a
    megabyte each (52 MB from 20 requests of 10 MB, review 2026-12-06).
    Both are cut now; the answer still says what was wrong."""
    cluster.start(1)
    node = cluster.nodes["n0"]
    peer_socket.connect(f"tcp://127.0.0.1:{node.port + 1}")
    answer = ask(peer_socket, {"from": "n" * 1_000_000, "req": 3, "proto": "9" * 100_000, "ids": ["t1"]})
    assert answer["code"] == "bad_version" and len(answer["message"]) < 400, len(answer["message"])
    wait_for(lambda: "refused a peer's request" in node.log_tail(400), what="the refusal in the node's log")
    line = next(x for x in node.log_tail(400).splitlines() if "refused a peer's request" in x)
    assert len(line) < 1000 and "nnnn..." in line, len(line)
