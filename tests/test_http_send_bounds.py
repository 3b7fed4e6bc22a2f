"""What the kernel holds of the answers of an HTTP client that never reads
them (docs/http.md, "Limits on clients": "Answers").

The client plays from 127.0.0.2 and asks for a task's result of ~1.4 MB
of JSON; the node's side of its connection is read from
``/proc/net/tcp`` (Linux): its state and ``tx_queue``, the bytes the kernel
holds for the client (sent and not acknowledged, or not sent). No test
asserts a duration: each waits for a condition, bounded by ``WAIT``.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway_harness import FIXTURES, Http, NodeThread, metrics_text, wait_for
from gateway_harness import connect_from as connect
from miyaq.gateway.conn_io import SEND_LOWAT

http_node, api, make_http_node, make_web_worker = FIXTURES

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp (Linux)")]

#: A result whose JSON answer is ~1.4 MB (460,000 times ``10,``): under
#: the kernel's send buffer (4 MiB), which held it whole.
LARGE_RESULT = [10] * 460_000
ESTABLISHED = "01"      # a TCP state as /proc/net/tcp writes it


def _hex_address(host: str, port: int) -> str:
    """An IPv4 address as /proc/net/tcp writes it (little-endian hex, port in hex)."""
    return f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"


def node_side(node: NodeThread, client: socket.socket) -> tuple[str, int] | None:
    """The node's socket of ``client``'s connection: its TCP state (hex, as
    /proc writes it) and the bytes it holds for the client; None once gone."""
    local = _hex_address("127.0.0.1", node.config.http_port)
    remote = _hex_address(*client.getsockname())
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[3], int(fields[4].split(":")[0], 16)
    return None


def large_result_task(node: NodeThread) -> int:
    """Store a finished task ``big`` with ``LARGE_RESULT``; the size of its result's answer."""
    client = Http(node.url)
    try:
        assert client.post("/tasks", {"name": "big", "queue": "hoard", "id": "big"})[0] == 202
        task = client.post("/receive", {"queues": ["hoard"]})[1]["task"]
        assert client.post("/tasks/big/ack", {"attempt": task["attempt"], "result": LARGE_RESULT})[1]["ok"]
        status, _, headers = client.get("/tasks/big/result")
        assert status == 200
        return int(headers["content-length"])
    finally:
        client.close()


def ask_and_never_read(node: NodeThread, sockets: list[socket.socket]) -> socket.socket:
    hoarder = connect(node, "127.0.0.2", sockets, rcvbuf=4096)
    hoarder.sendall(b"GET /tasks/big/result HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return hoarder


def test_a_client_that_never_reads_a_large_answer_has_little_of_it_in_the_kernel(make_http_node, sockets):
    """Fault: a client asks for a large answer (a result, a long-poll's) and
    never reads it. The gateway handed the whole answer to the kernel, whose
    send buffer grows to 4 MiB a connection (``net.ipv4.tcp_wmem``): 500
    such connections held 608 MB of the machine's memory, none of it in the
    node's. Now the kernel holds at most ``SEND_LOWAT`` unsent (and a
    segment); the rest waits in the node, where the send deadline cuts it."""
    node = make_http_node(http_body_timeout=2.0)
    size = large_result_task(node)
    assert size > 8 * SEND_LOWAT
    hoarder = ask_and_never_read(node, sockets)
    peak = 0

    def held_past_bound_or_closed() -> bool:
        nonlocal peak
        seen = node_side(node, hoarder)
        if seen is None:
            return True
        peak = max(peak, seen[1])
        return peak > 2 * SEND_LOWAT or seen[0] != ESTABLISHED

    wait_for(held_past_bound_or_closed, what="the node to close the connection, or its answer held past the bound")
    assert peak <= 2 * SEND_LOWAT, f"the kernel held {peak} bytes of a {size}-byte answer nobody read"
    assert peak > 0, "the node sent nothing of the answer"


def test_a_connection_given_up_on_does_not_keep_its_answer_in_the_kernel(make_http_node, sockets):
    """Fault: the gateway closes the connection of a client that did not
    take its answer (send deadline, or idle), but the client keeps its end
    open with its window shut. The kernel kept the closed socket (FIN-WAIT-1)
    and the bytes it held, probing the window for as long as the client
    answered -- past the node's every limit, since a closed connection
    counts in none. Now such a socket ends within ``http_body_timeout``."""
    node = make_http_node(http_body_timeout=1.0, http_idle_timeout=1.0)
    large_result_task(node)
    hoarder = ask_and_never_read(node, sockets)
    wait_for(lambda: node_side(node, hoarder) is not None, what="the node's side of the connection")
    wait_for(lambda: node_side(node, hoarder) is None, what="the node's socket of the connection to end")
    assert 'miyaq_http_refused_total{reason="send_timeout"} 1.0' in metrics_text(node.url)
