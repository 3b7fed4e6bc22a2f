"""The node-wide bound on webhook deliveries in flight (``webhook_max_in_flight``):
over all queues, no more deliveries at once than the bound (each may hold a
socket); past it, webhook tasks wait ready in their queues, and a slot comes
back however a delivery ends. Each fault test's docstring names what the
destinations (or the producer) do wrong. The destinations are raw socket
servers in threads that count the requests they hold unanswered."""
from __future__ import annotations

import socket
import threading

import pytest
from loopback_server import LoopbackServer
from gateway_harness import FIXTURES, Http, NodeThread, wait_for
from loopback_server import read_head

from miyaq.config import NodeConfig
from miyaq.errors import ConfigError

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class BlackHole(LoopbackServer):
    """A loopback destination that accepts connections and reads requests
    but answers none until :meth:`answer` is called (then every request held,
    and every later one, gets 200). Counts connections accepted, requests
    held unanswered now, and the most ever held at once."""

    backlog = 256

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.accepted = 0
        self.requests = 0
        self.held = 0
        self.most_held = 0
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        self.accepted += 1

    def _serve(self, conn: socket.socket) -> None:
        try:
            while read_head(conn) is not None:
                with self.lock:
                    self.requests += 1
                    self.held += 1
                    self.most_held = max(self.most_held, self.held)
                self.gate.wait()
                with self.lock:
                    self.held -= 1
                conn.sendall(OK)
        except OSError:
            return


@pytest.fixture
def black_holes():
    gate = threading.Event()
    holes = [BlackHole(gate) for _ in range(4)]
    yield gate, holes
    gate.set()
    for hole in holes:
        hole.close()


def enqueue(api: Http, url: str, queue: str, **options: object) -> str:
    status, answer, _ = api.post(f"/queue/{queue}", {"url": url, "params": {"n": 1}, **options})
    assert status == 200, answer
    return answer["id"]


def state_of(api: Http, task_id: str) -> str:
    return api.get(f"/tasks/{task_id}")[1]["task"]["state"]


def in_flight(node: NodeThread) -> int:
    """The node's own count of deliveries in flight, over all queues."""
    return node.call(lambda: node.node.part("gateway").deliverer.in_flight_total())   # type: ignore[union-attr]


def open_node(make_http_node, **settings):
    settings.setdefault("default_backoff", 0.01)
    settings.setdefault("webhook_allow_private", True)   # the destinations are on loopback
    node = make_http_node(**settings)
    return node, Http(node.url)


def test_black_holes_over_many_queues_hold_no_more_deliveries_than_the_bound(make_http_node, black_holes):
    """Fault: a producer spreads 40 webhooks over 10 queues and 4
    destinations that accept connections and never answer. Each queue has
    16 slots of its own, so before the node-wide bound all 40 were leased
    and opened a connection each (the audit's 6,400 sockets, at scale: the
    node ran out of file descriptors). With ``webhook_max_in_flight=4`` at
    most 4 requests are ever in flight (counted at the destinations and by
    the node), the other 36 tasks wait ready, not leased; once the
    destinations answer, every task is done."""
    gate, holes = black_holes
    node, api = open_node(make_http_node, webhook_max_in_flight=4, webhook_concurrency=16, webhook_timeout=30.0)
    try:
        queues = [f"q{n}" for n in range(10)]
        ids = [enqueue(api, f"http://127.0.0.1:{holes[(q + n) % 4].port}/hook/{q}/{n}", queues[q])
               for q in range(10) for n in range(4)]
        wait_for(lambda: sum(h.requests for h in holes) >= 4, "four deliveries to reach the black holes")
        # Give an unbounded node every chance to lease more: a few rounds of
        # status calls (each a dispatcher wake-up on the node's hub).
        for _ in range(20):
            status = api.get("/status")[1]
        assert sum(h.accepted for h in holes) == 4
        assert sum(h.held for h in holes) == 4
        assert in_flight(node) == 4
        assert sum(status["webhooks"]["in_flight"].values()) == 4
        assert (status["webhooks"]["in_flight_total"], status["webhooks"]["max_in_flight"]) == (4, 4)
        rows = {q: api.get(f"/queues/{q}")[1] for q in queues}
        assert sum(row["running"] for row in rows.values()) == 4, rows
        assert sum(row["ready"] for row in rows.values()) == 36, rows

        gate.set()   # the destinations start answering
        wait_for(lambda: all(state_of(api, i) == "done" for i in ids), "every task to be done", timeout=30)
        assert max(h.most_held for h in holes) <= 4
        assert sum(h.most_held for h in holes) >= 1
        assert sum(h.requests for h in holes) == 40
        wait_for(lambda: in_flight(node) == 0, "every slot to be given back")
    finally:
        api.close()


def test_a_slot_comes_back_when_a_delivery_times_out_or_is_cancelled(make_http_node, black_holes):
    """Fault: with one slot on the node, the delivery holding it goes to a
    black hole. A task of another queue waits ready until the first
    delivery times out (its task's timeout is 1 s) (its slot given back, the task dead after no
    retries); a third waits until the one then holding the slot is
    cancelled. Then the destinations answer, and the last one is done."""
    gate, holes = black_holes
    node, api = open_node(make_http_node, webhook_max_in_flight=1, webhook_timeout=30.0)
    try:
        first = enqueue(api, f"http://127.0.0.1:{holes[0].port}/a", "a", max_retries=0, timeout=1)
        wait_for(lambda: holes[0].requests == 1, "the first delivery to reach its black hole")
        second = enqueue(api, f"http://127.0.0.1:{holes[1].port}/b", "b", max_retries=0, timeout=300)
        assert state_of(api, second) == "ready"
        wait_for(lambda: state_of(api, first) == "dead", "the first delivery to time out")
        wait_for(lambda: holes[1].requests == 1, "the second delivery to take the slot")
        third = enqueue(api, f"http://127.0.0.1:{holes[2].port}/c", "c")
        assert state_of(api, third) == "ready"
        assert api.request("DELETE", f"/tasks/{second}")[1]["cancelled"] is True
        gate.set()
        wait_for(lambda: state_of(api, third) == "done", "the third delivery, once the slot came back")
        wait_for(lambda: in_flight(node) == 0, "every slot to be given back")
        assert holes[0].requests + holes[1].requests + holes[2].requests == 3
    finally:
        api.close()


@pytest.mark.parametrize("value", [0, -1, 65_537])
def test_a_bound_out_of_range_is_a_config_error(value):
    with pytest.raises(ConfigError, match="webhook_max_in_flight must"):
        NodeConfig(webhook_max_in_flight=value)


def test_the_bound_comes_from_flags_and_the_environment():
    assert NodeConfig().webhook_max_in_flight == 256
    assert NodeConfig.load({"webhook_max_in_flight": "8"}, environ={}).webhook_max_in_flight == 8
    assert NodeConfig.load({}, environ={"MIYAQ_WEBHOOK_MAX_IN_FLIGHT": "9"}).webhook_max_in_flight == 9
    with pytest.raises(ConfigError, match="webhook_max_in_flight"):
        NodeConfig.load({"webhook_max_in_flight": "lots"}, environ={})
