"""``miyaq status`` (the node summary, text) says when handshakes failed or
were refused.

Fault simulated: connections whose ZeroMQ handshake fails (a TCP check on
the service port; a client with another node key, with keys on one side
only) or whose key the node refuses. STATUS ``security`` counted them and
``/metrics`` had them, but the summary an operator reads first said nothing
of them. It now prints a line for each kind with a count above 0, and none
when all are 0.
"""
from __future__ import annotations

import socket
from typing import Any

import pytest
from raw_nodes import CountingNode, NodesPlayer

from miyaq.cli.main import main
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(60)

BASE = {"node": "n1", "version": "1", "uptime": 5.0, "accepting": True,
        "totals": {"live": 0, "dead": 0, "workers": 0}, "queues": {}}
FAILED = "handshakes failed before any key was checked  "
REFUSED = "handshakes refused (key unknown, revoked or not a peer's)  "


def _status_lines(security: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> list[str]:
    with NodesPlayer([CountingNode({c.STATUS: {**BASE, "security": security}})], tasks=0) as player:
        assert main(["status", "--connect", player.nodes[0].endpoint]) == 0
    assert not player.problems
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("handshakes")]


def test_failed_and_refused_handshakes_have_a_line_each_and_none_while_all_are_zero(capsys):
    security = {"keys": True, "authorized": 2, "handshakes_refused": 4, "handshakes_admitted": 9,
                "handshakes_failed": {"service": {"mechanism mismatch": 3, "closed in the handshake": 1},
                                      "peer": {"cryptographic error": 2}}}
    assert _status_lines(security, capsys) == [
        FAILED + "peer: cryptographic error 2; service: closed in the handshake 1, mechanism mismatch 3",
        REFUSED + "4"]
    # none while every count is 0
    assert _status_lines({"keys": True, "handshakes_refused": 0, "handshakes_failed": {}}, capsys) == []
    assert _status_lines({"keys": False, "handshakes_failed": {}}, capsys) == []
    assert _status_lines({"keys": False}, capsys) == []      # a node before 2026-12-06: no such field


def test_an_answer_of_thousands_of_ports_and_reasons_makes_a_short_line(capsys):
    """Fault: a hostile or broken node answers STATUS with 20,000 ports of
    failed handshakes (an audit: one line of 249 KB). The line shows the
    first eight ports, each with its first eight reasons, and how many
    more."""
    reasons = {f"reason {i:02d}": 1 for i in range(20)}
    failed = {f"port{i:05d}": dict(reasons) for i in range(20_000)}
    lines = _status_lines({"keys": True, "handshakes_failed": failed}, capsys)
    assert len(lines) == 1
    line = lines[0]
    assert line.count("port") == 8 and line.endswith("; and 19992 more")
    assert line.count("reason") == 8 * 8 and line.count(", and 12 more") == 8
    assert len(line) < 2_000


def test_a_count_of_the_wrong_shape_is_a_clear_error(capsys):
    """An answer from something else than a miyaq node: one line, exit 2, no traceback."""
    with NodesPlayer([CountingNode({c.STATUS: {**BASE, "security": {"handshakes_failed": {"service": 3}}}})],
                     tasks=0) as player:
        assert main(["status", "--connect", player.nodes[0].endpoint]) == 2
    assert "unexpected answer" in capsys.readouterr().err


def test_a_tcp_check_on_a_node_shows_in_its_status(make_node, capsys):
    """A real node: a connection that closes in the handshake (a load
    balancer's TCP check) is counted, and ``miyaq status`` says so."""
    node = make_node()
    endpoint = ["--connect", node.endpoint]
    assert main(["status", *endpoint]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("handshakes")]
    port = int(node.endpoint.rsplit(":", 1)[1])
    socket.create_connection(("127.0.0.1", port), timeout=5).close()

    def shown() -> list[str]:
        assert main(["status", *endpoint]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("handshakes")]

    lines = wait_for(shown, interval=0.2, what="the failed handshake in miyaq status")
    assert lines == [FAILED + "service: closed in the handshake 1"]
