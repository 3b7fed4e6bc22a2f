"""The worker's ZMTP heartbeat timeout on its connections to nodes is a
setting (``--node-timeout``, ``MIYAQ_NODE_TIMEOUT``): libzmq hears a
heartbeat's answer only behind the message in front of it, so on a slow
link the timeout must exceed the time one message takes
(docs/configuration.md)."""
from __future__ import annotations

import pytest
import zmq

from apps import basic
from miyaq.cli.main import build_parser
from miyaq.errors import ConfigError
from miyaq.testing.harness import wait_for
from miyaq.worker.config import RECENT_REPORT_SECONDS, WorkerConfig


def test_node_timeout_from_the_command_line_reaches_the_worker_s_sockets(thread_worker, node):
    """Fault: the worker's ZMTP heartbeat timeout on its connections to
    nodes was a constant of 5 s (NODE_CONNECTION_TIMEOUT), too short for a
    link on which one large task takes longer to arrive, and nothing could
    change it. ``miyaq worker --node-timeout 30`` sets it on the socket of
    every node link (a PING every fifth of it)."""
    args = build_parser().parse_args(["worker", "tasks:app", "--node-timeout", "30"])
    config = WorkerConfig.load(vars(args), {})
    assert config.node_timeout == 30.0
    worker = thread_worker(basic.app, node.endpoint, node_timeout=config.node_timeout).worker
    link = worker.links[0]
    wait_for(lambda: link.heard, what="the worker registered")
    sock = link.sock.sock
    assert (sock.getsockopt(zmq.HEARTBEAT_IVL), sock.getsockopt(zmq.HEARTBEAT_TIMEOUT)) == (6000, 30000)


def test_node_timeout_comes_from_the_environment_and_defaults_to_5_seconds():
    assert WorkerConfig.load({}, {"MIYAQ_NODE_TIMEOUT": "12.5"}).node_timeout == 12.5
    assert WorkerConfig.load({}, {}).node_timeout == 5.0


def test_a_long_node_timeout_keeps_sent_reports_at_least_three_times_as_long():
    """A node frozen just after a DONE reached it has its connection dropped
    up to ``node_timeout`` later: the report must still be there to send to
    another holder (15 s by default, three times a longer timeout)."""
    assert WorkerConfig.load({}, {}).recent_report_seconds == RECENT_REPORT_SECONDS
    assert WorkerConfig.load({"node_timeout": "30"}, {}).recent_report_seconds == 90.0


@pytest.mark.parametrize("raw,says", [
    ("0", "0.5..3600 seconds"),
    ("0.1", "0.5..3600 seconds"),
    ("7200", "0.5..3600 seconds"),
    ("-1", "must not be negative"),
    ("nan", "finite"),
    ("inf", "finite"),
    ("soon", "expects float"),
])
def test_a_node_timeout_no_worker_can_run_with_is_refused_naming_it(raw, says):
    """Fault: a timeout of 0 or 0.1 s drops every connection at once (the
    worker registers in a loop), NaN or an infinite one never drops a
    frozen node's. ConfigError naming the setting, before the worker starts."""
    with pytest.raises(ConfigError) as info:
        WorkerConfig.load({"node_timeout": raw}, {})
    assert "node_timeout" in info.value.message and says in info.value.message
