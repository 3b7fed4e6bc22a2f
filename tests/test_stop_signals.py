"""Stopping with signals: a second SIGTERM or SIGINT cuts every wait of a
stop short (the node's, for running tasks and for webhook deliveries in
flight; a worker's, in every pool and under the ``--processes N``
supervisor), SIGHUP stops a worker as SIGTERM does, and a worker's
``--grace`` is the whole of its wait for handlers.

No test here asserts a duration: each stop is given a grace far longer
than the test waits for it to end (a stop that waits its whole grace
fails the test)."""
from __future__ import annotations

import socket
import threading

import pytest
from gateway_harness import FIXTURES, Http, read_head, wait_for
from loopback_server import LoopbackServer

from miyaq.core.gate import SHUTTING_DOWN

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(120)

LONG_GRACE = 60.0     # a stop that waits this long fails the test
STOP_WAIT = 20.0      # how long a test waits for a hurried stop to end


class NeverAnswers(LoopbackServer):
    """A loopback webhook destination that reads requests and answers none
    until it is closed; counts the requests it holds."""

    def __init__(self) -> None:
        self.held = 0
        self.closing = threading.Event()
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while read_head(conn) is not None:
                with self.lock:
                    self.held += 1
                self.closing.wait()
                return
        except OSError:
            return

    def close(self) -> None:
        self.closing.set()
        super().close()


@pytest.fixture
def never_answers():
    server = NeverAnswers()
    yield server
    server.close()


def test_a_second_stop_signal_ends_the_wait_for_webhooks_in_flight(make_http_node, never_answers) -> None:
    """Fault: three webhooks are in flight to a destination that never
    answers when the node is stopped with a long ``shutdown_grace`` and
    ``webhook_timeout``, and the operator sends a second SIGTERM. Before
    2026-12-05 the node logged that it waited no longer, then waited for
    the deliveries up to min(webhook_timeout, shutdown_grace) anyway; now
    the second signal ends that wait too and the node stops."""
    node = make_http_node(shutdown_grace=LONG_GRACE, webhook_timeout=LONG_GRACE, webhook_allow_private=True)
    http = Http(node.url)
    for n in range(3):
        status, answer, _ = http.post("/queue/hooks", {"url": f"http://127.0.0.1:{never_answers.port}/hook/{n}",
                                                       "params": {"n": n}})
        assert status == 200, answer
    wait_for(lambda: never_answers.held == 3, "three deliveries in flight")
    inner = node.node
    assert inner is not None
    deliverer = inner.part("gateway").deliverer
    node.call(lambda: inner.supervisor.spawn("signal stop", inner.ask_stop))          # the first SIGTERM
    wait_for(lambda: node.call(lambda: deliverer.stopping and inner.core.gate.holds(SHUTTING_DOWN)),
             "the node waiting for its deliveries in flight")
    node.call(lambda: inner.supervisor.spawn("signal stop", inner.ask_stop))          # the second
    node.thread.join(STOP_WAIT)
    assert not node.thread.is_alive(), "the node still waits for its webhooks after a second signal"
