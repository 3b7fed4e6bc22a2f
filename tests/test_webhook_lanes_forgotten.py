"""Webhook lanes of queues the engine forgot: one lane per webhook queue,
so queue names producers make up must not leave lanes, dispatcher entries,
``/status`` rows, ``/metrics`` series or log lines behind once their tasks
are delivered (docs/http.md, "Webhook delivery" and "Metrics"). Counted in
the node's own tables, never timed: the engine's pruning of empty queues
(:meth:`Engine.compact_lanes`, which housekeeping also runs every second:
it forgets the empty queues when the node holds more than 100) is called
in the node's hub where a test needs it at a given point."""
from __future__ import annotations

import logging
import threading

import pytest
from gateway_harness import FIXTURES, Http, NodeThread, wait_for
from loopback_server import read_head
from loopback_server import LoopbackServer

from miyaq.config import NodeConfig
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import QueueLimits, parse_limits
from miyaq.gateway.webhook_lane import WebhookLane
from miyaq.gateway.webhooks import WebhookDeliverer
from miyaq.runtime import Supervisor, wall
from miyaq.store.task import Task

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
QUEUES = 130      # past 100 queues the engine forgets the empty ones


class HeldDestination(LoopbackServer):
    """Reads requests and answers none (200 to each, then to every later
    one, once :attr:`gate` is set); counts the requests it read."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.requests = 0
        super().__init__()

    def _serve(self, conn) -> None:
        try:
            while read_head(conn) is not None:
                with self.lock:
                    self.requests += 1
                self.gate.wait()
                conn.sendall(OK)
        except OSError:
            return

    def close(self) -> None:
        self.gate.set()
        super().close()


@pytest.fixture
def held():
    destination = HeldDestination()
    yield destination
    destination.close()


def open_node(make_http_node, **settings) -> tuple[NodeThread, Http]:
    settings.setdefault("default_backoff", 0.01)
    settings.setdefault("webhook_allow_private", True)   # the destinations are on loopback
    node = make_http_node(**settings)
    return node, Http(node.url)


def deliverer(node: NodeThread) -> WebhookDeliverer:
    return node.node.part("gateway").deliverer   # type: ignore[union-attr]


def lanes(node: NodeThread) -> set[str]:
    """The queues the node's webhook deliverer holds a lane for."""
    return node.call(lambda: set(deliverer(node).lanes))


def hungry_lanes(node: NodeThread) -> list[str]:
    """The webhook lanes the node's dispatcher offers tasks on each pump."""
    return node.call(lambda: [c.queue for c in node.node.core.dispatcher.hungry if isinstance(c, WebhookLane)])


def live(node: NodeThread) -> int:
    return node.call(lambda: len(node.node.core.engine.table.live))


def empty_queues(engine: Engine, tag: str) -> None:
    """Give ``engine`` 130 queues that hold nothing (a task each, cancelled):
    its next pruning forgets every empty queue."""
    for n in range(QUEUES):
        engine.submit(Task(f"{tag}-{n}", f"{tag}-{n}", "job", b""), wall())
        engine.cancel(f"{tag}-{n}", wall())


def forget_empty_queues(node: NodeThread, tag: str) -> None:
    """Have the engine forget every queue that holds nothing: it does past
    100 queues (housekeeping may already have forgotten some, leaving fewer),
    so 130 more empty ones are made first, in the same call."""
    engine = node.node.core.engine

    def forget() -> None:
        empty_queues(engine, tag)
        engine.compact_lanes()

    node.call(forget)


def webhook_series(api: Http) -> list[str]:
    text = api.get("/metrics")[1].decode()
    return [line for line in text.splitlines() if line.startswith("miyaq_webhook_")]


def enqueue(api: Http, url: str, queue: str, **options: object) -> str:
    status, answer, _ = api.post(f"/queue/{queue}", {"url": url, **options})
    assert status == 200, answer
    return answer["id"]


def test_lanes_of_forgotten_queues_go_with_their_series(make_http_node, make_web_worker, caplog):
    """Fault: a producer sends one webhook task to each of 130 queues, every
    one delivered (200), every queue left empty. The engine forgot the
    queues, but each kept its lane (the audit: 20,000 queues, 250 MB, a
    20,000-entry ``webhooks.in_flight`` in ``GET /status``, 20,004 series of
    ``miyaq_webhook_deliveries_total`` and 380,000 histogram lines in a
    32.8 MB scrape) and an INFO line each when it opened. Now the lanes and
    their series end with their queues, a few lines a minute are logged,
    and a queue's next webhook task opens its lane again."""
    worker = make_web_worker()
    node, api = open_node(make_http_node)
    try:
        with caplog.at_level(logging.INFO, logger="miyaq.gateway.webhooks"):
            for n in range(QUEUES):
                enqueue(api, f"{worker.url}/hook", f"q-{n}")
            wait_for(lambda: live(node) == 0, "every webhook to be delivered")
        assert worker.count() >= QUEUES
        opened = [r for r in caplog.records if "delivering with" in r.getMessage()]
        assert len(opened) <= 5, len(opened)
        forget_empty_queues(node, "empty")
        wait_for(lambda: lanes(node) == set(), "every lane to close (a delivery may still be ending)")
        assert hungry_lanes(node) == []
        assert api.get("/status")[1]["webhooks"]["in_flight"] == {}
        assert webhook_series(api) == []

        task_id = enqueue(api, f"{worker.url}/again", "q-7")       # a forgotten queue, used again
        wait_for(lambda: api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "done", "the new queue's webhook")
        assert lanes(node) == {"q-7"}
        series = webhook_series(api)
        assert 'miyaq_webhook_deliveries_total{queue="q-7",result="2xx"} 1.0' in series
        assert all('queue="q-7"' in line for line in series if "queue=" in line)
    finally:
        api.close()


def test_idle_lanes_are_not_offered_tasks_on_every_pump(make_http_node, make_web_worker):
    """Fault: a lane with room stayed among the dispatcher's hungry
    consumers after its queue's tasks were all delivered, so every pump
    visited every idle lane of every webhook queue (the audit: 1,731 lanes
    visited, 2.7 ms for a pump with nothing ready, a plain submit 0.08 ->
    2.29 ms). Here 20 queues (not forgotten: the node has seen fewer than
    100) each had a webhook delivered; none of their lanes is offered tasks
    now, and each is again when its queue has a webhook task."""
    worker = make_web_worker()
    node, api = open_node(make_http_node)
    try:
        for n in range(20):
            enqueue(api, f"{worker.url}/hook", f"w-{n}")
        wait_for(lambda: live(node) == 0, "every webhook to be delivered")
        node.call(lambda: node.node.core.dispatcher.pump(wall()))
        assert len(lanes(node)) == 20
        assert hungry_lanes(node) == []
        task_id = enqueue(api, f"{worker.url}/hook", "w-3")
        wait_for(lambda: api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "done", "the idle lane's next webhook")
        assert worker.count() >= 21
    finally:
        api.close()


def test_a_lane_with_a_delivery_in_flight_is_kept_until_it_ends(make_http_node, held):
    """Fault: a queue is forgotten while a delivery of its lane is still in
    flight (its task cancelled, its greenlet not ended yet), and a task of
    the queue is ready again before it ends. The lane must not be dropped
    under it (a second lane would let the queue exceed its slots, and the
    first's slot be given back to books no one reads): the queue's new task
    is delivered by the same lane, every node slot comes back, and the lane
    closes once its last delivery ends with its queue forgotten again."""
    node, api = open_node(make_http_node, webhook_timeout=30.0)
    engine = node.node.core.engine
    try:
        first = enqueue(api, f"{held.url}/first", "busy")
        wait_for(lambda: held.requests == 1, "the first delivery to reach its destination")
        lane = node.call(lambda: deliverer(node).lanes["busy"])

        def cancel_and_forget() -> tuple[bool, bool]:
            empty_queues(engine, "a")
            engine.cancel(first, wall())     # kills the delivery's greenlet: it ends after this call
            engine.compact_lanes()
            return "busy" in engine.counts, deliverer(node).lanes.get("busy") is lane and bool(lane.slots)

        assert node.call(cancel_and_forget) == (False, True)
        wait_for(lambda: "busy" not in lanes(node), "the lane to close when its delivery ended")
        assert node.call(lambda: deliverer(node).in_flight_total()) == 0

        # Forgotten again while in flight, and ready again before the delivery ends.
        second = enqueue(api, f"{held.url}/second", "busy")
        wait_for(lambda: held.requests == 2, "the second delivery to reach its destination")
        reopened = node.call(lambda: deliverer(node).lanes["busy"])
        assert reopened is not lane

        def cancel_forget_and_submit() -> tuple[bool, int]:
            empty_queues(engine, "b")
            engine.cancel(second, wall())
            engine.compact_lanes()
            forgotten = "busy" not in engine.counts
            engine.submit(Task("third", "busy", None, b"", url=f"{held.url}/third", timeout=30.0), wall())
            return forgotten, len(reopened.slots)

        assert node.call(cancel_forget_and_submit) == (True, 1)
        wait_for(lambda: held.requests == 3, "the third delivery to reach its destination")
        assert node.call(lambda: deliverer(node).lanes.get("busy")) is reopened
        wait_for(lambda: node.call(lambda: len(reopened.greenlets)) == 1, "the cancelled delivery to end")
        assert node.call(lambda: (deliverer(node).in_flight_total(), deliverer(node).in_flight()["busy"])) == (1, 1)
        assert node.call(lambda: deliverer(node).lanes.get("busy")) is reopened
        held.gate.set()
        wait_for(lambda: api.get("/tasks/third")[1]["task"]["state"] == "done", "the third webhook")
        wait_for(lambda: node.call(lambda: deliverer(node).in_flight_total()) == 0, "every slot back")
        forget_empty_queues(node, "c")
        assert "busy" not in lanes(node)
    finally:
        api.close()


def test_a_lane_granted_until_idle_leaves_the_pump_only_with_nothing_ready():
    """The dispatcher side: a consumer granted ``until_idle`` leaves the
    hungry ones when a pump finds nothing ready in its queues, and stays
    while its queue's limits hold back tasks that are ready (the limits'
    refill pumps it again)."""
    engine = Engine(NodeConfig(queue_limits="q:rate=0,burst=1"))
    limits = QueueLimits(engine, Supervisor("test"), parse_limits("q:rate=0,burst=1"))
    dispatcher = Dispatcher(engine, 1024, Gate(), limits)
    engine.listeners.append(dispatcher)

    class Lane(WebhookLane):
        def __init__(self, queue: str) -> None:
            super().__init__(None, queue)   # type: ignore[arg-type]
            self.got: list[Task] = []

        def room(self) -> int:
            return 16 - len(self.got)

        def deliver(self, tasks: list[Task]) -> bool:
            self.got.extend(tasks)
            return True

    idle, limited = Lane("idle"), Lane("q")
    for lane in (idle, limited):
        dispatcher.grant(lane, 0, until_idle=True)
    for n in range(2):
        engine.submit(Task(f"t{n}", "q", None, b"", url="http://127.0.0.1:9/x"), 1.0)
    dispatcher.pump(1.0)
    assert len(limited.got) == 1
    assert list(dispatcher.hungry) == [limited]     # one task ready, held back by the limit
    limits.close()
