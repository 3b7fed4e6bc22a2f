"""Per-queue rate limits and concurrency caps, counted (never timed): the
dispatcher with an injected clock, then real nodes with webhook workers, a
raw ZeroMQ worker and the ``miyaq queue`` command."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zmq
from gateway_harness import FIXTURES, Http, wait_for

from miyaq.cli.main import main as cli_main
from miyaq.config import NodeConfig
from miyaq.errors import ConfigError, InvalidField
from miyaq.core.consumers import Consumer
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import Limit, QueueLimits, parse_limits
from miyaq.runtime import Supervisor
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.store.task import Task

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals


class Collector(Consumer):
    """A consumer with plenty of credit that keeps what it is given."""

    def __init__(self, queues: list[str], credit: int = 1000) -> None:
        super().__init__(queues)
        self.credit = credit
        self.got: list[Task] = []

    def deliver(self, tasks: list[Task]) -> bool:
        self.got.extend(tasks)
        return True


def setup(spec: str, *queues: str) -> tuple[Engine, Dispatcher, Collector]:
    engine = Engine(NodeConfig(queue_limits=spec))
    limits = QueueLimits(engine, Supervisor("test"), parse_limits(spec))
    dispatcher = Dispatcher(engine, 1024, Gate(), limits)
    engine.listeners.append(dispatcher)
    consumer = Collector(list(queues))
    dispatcher.grant(consumer, 0)
    return engine, dispatcher, consumer


def submit(engine: Engine, queue: str, n: int, now: float, url: str | None = None) -> None:
    for i in range(n):
        name = None if url else "job"
        engine.submit(Task(f"{queue}-{url is not None}-{i}-{now}", queue, name, b"", url=url, created=now,
                           eta=now), now)


def pump(dispatcher: Dispatcher, now: float, times: int = 5) -> None:
    for _ in range(times):
        dispatcher.pending = True   # as a credit grant or the refill timer would
        dispatcher.pump(now)


def test_parse_limits():
    limits = parse_limits("emails:rate=50,burst=10; pdf:max_concurrent=2\nslow:rate=0.5")
    assert limits["emails"] == Limit(rate=50.0, burst=10.0)
    assert limits["pdf"] == Limit(max_concurrent=2)
    assert limits["slow"].bucket_size == 1.0
    assert Limit(rate=0).bucket_size == 0.0     # rate 0 alone pauses the queue
    for bad in ("emails", "emails:speed=3", "emails:rate=fast", "emails:rate=-1", "q:burst=3"):
        with pytest.raises(ConfigError):
            parse_limits(bad)
    with pytest.raises(InvalidField):
        Limit(max_concurrent=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("burst", [0, 0.5])
def test_a_burst_too_small_to_hold_a_token_is_refused_while_the_rate_runs(burst):
    """Fault: ``{"rate": 10, "burst": 0}`` was accepted and no task of the
    queue ever started (the bucket never held a whole token) -- a queue
    stopped for good by a limit that says it runs. Now it is refused, with
    a hint; ``rate`` 0 with a burst still lets exactly that many start."""
    with pytest.raises(InvalidField, match="at least 1"):
        Limit(rate=10.0, burst=burst)
    with pytest.raises(ConfigError):
        parse_limits(f"q:rate=10,burst={burst}")
    assert Limit(rate=0.0, burst=burst).bucket_size == burst


def test_burst_without_refill_starts_exactly_burst_tasks():
    engine, dispatcher, consumer = setup("q:rate=0,burst=5", "q")
    submit(engine, "q", 10, 100.0)
    pump(dispatcher, 100.0)
    pump(dispatcher, 10_000.0)
    assert len(consumer.got) == 5
    assert engine.queue_counts()["q"]["ready"] == 5
    assert dispatcher.limits.throttled["q"] > 0
    dispatcher.limits.close()


def test_tokens_refill_at_the_rate_and_the_refill_timer_is_armed():
    engine, dispatcher, consumer = setup("q:rate=10,burst=2", "q")
    submit(engine, "q", 20, 0.0)
    pump(dispatcher, 0.0)
    assert len(consumer.got) == 2
    assert dispatcher.limits._timer_at == pytest.approx(0.1)   # the next token is due in 1/rate s
    pump(dispatcher, 0.1)
    assert len(consumer.got) == 3
    pump(dispatcher, 0.35)                  # 2.5 tokens earned, the bucket holds 2
    assert len(consumer.got) == 5
    pump(dispatcher, 100.0)
    assert len(consumer.got) == 7
    dispatcher.limits.close()


def test_webhook_lane_and_worker_lane_share_the_queue_bucket():
    engine, dispatcher, workers = setup("q:rate=0,burst=4", "q")
    hooks = Collector(["@http/q"])
    dispatcher.grant(hooks, 0)
    submit(engine, "q", 3, 1.0)
    submit(engine, "q", 3, 1.0, url="http://127.0.0.1:9/x")
    pump(dispatcher, 1.0)
    assert len(workers.got) + len(hooks.got) == 4
    assert len(hooks.got) >= 1 and len(workers.got) >= 1


def test_max_concurrent_caps_running_tasks():
    engine, dispatcher, consumer = setup("q:max_concurrent=2", "q")
    submit(engine, "q", 5, 1.0)
    pump(dispatcher, 1.0)
    assert len(consumer.got) == 2
    task = consumer.got[0]
    engine.complete(task.id, task.attempt, None, 2.0)
    assert dispatcher.pending                     # a capped queue's task ended: pump again
    dispatcher.pump(2.0)
    assert len(consumer.got) == 3
    assert engine.queue_counts()["q"]["running"] == 2


def test_runtime_change_and_cluster_share():
    engine, dispatcher, consumer = setup("", "q")
    limits = dispatcher.limits
    assert not limits.active
    limits.set("q", Limit(rate=0, burst=8), 0.0)
    limits.set_share(4)                           # four nodes hold the queue: this one gets 8/4
    submit(engine, "q", 10, 0.0)
    pump(dispatcher, 0.0)
    assert len(consumer.got) == 2
    assert limits.describe("q")["node_share"] == 0.25
    assert limits.clear("q") and not limits.active
    pump(dispatcher, 0.0)
    assert len(consumer.got) == 10


def test_webhooks_rate_zero_burst_five_starts_five(make_http_node, make_web_worker):
    worker = make_web_worker()
    node = make_http_node(queue_limits="hooks:rate=0,burst=5", webhook_allow_private=True)
    api = Http(node.url)
    try:
        for _ in range(10):
            assert api.post("/queue/hooks", {"url": f"{worker.url}/h"})[0] == 200
        wait_for(lambda: worker.count() == 5 and api.get("/queues/hooks")[1]["running"] == 0,
                 "five deliveries to finish")
        throttled = node.call(lambda: node.node.core.limits.throttled["hooks"])
        assert api.post("/queue/hooks", {"url": f"{worker.url}/h"})[0] == 200   # wakes the dispatcher
        wait_for(lambda: node.call(lambda: node.node.core.limits.throttled["hooks"]) > throttled,
                 "the dispatcher to hold the queue back again")
        assert worker.count() == 5
        row = api.get("/queues/hooks")[1]
        assert (row["ready"], row["limits"]["tokens"]) == (6, 0.0)
    finally:
        api.close()


def test_webhooks_max_concurrent_two(make_http_node, make_web_worker):
    worker = make_web_worker(hold=0.1)
    node = make_http_node(webhook_concurrency=8, webhook_allow_private=True)
    api = Http(node.url)
    try:
        assert api.request("PUT", "/queues/capped/limits", {"max_concurrent": 2})[0] == 200
        for _ in range(8):
            api.post("/queue/capped", {"url": f"{worker.url}/c"})
        wait_for(lambda: worker.count() == 8 and worker.in_flight == 0, "eight deliveries")
        assert worker.max_in_flight == 2
    finally:
        api.close()


def _recv(sock: zmq.Socket) -> tuple[bytes, dict[str, Any]] | None:
    if not sock.poll(0):
        return None
    return codec.decode(sock.recv_multipart(), c.WORKER_INBOUND, 1 << 24)


def test_zeromq_worker_is_limited_and_runtime_changes_apply_at_once(make_http_node):
    node = make_http_node(heartbeat=5.0)   # this raw worker sends no heartbeats
    api = Http(node.url)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        assert api.request("PUT", "/queues/z/limits", {"rate": 0, "burst": 3})[0] == 200
        sock.connect(f"tcp://127.0.0.1:{node.config.port}")
        sock.send_multipart(codec.encode(c.READY, {"worker": "w1", "queues": ["z"], "names": ["job"],
                                                   "capacity": 10}))
        for i in range(6):
            assert api.post("/tasks", {"name": "job", "queue": "z", "args": [i]})[0] == 202
        dispatched: list[list[Any]] = []

        def drain() -> int:
            while (msg := _recv(sock)) is not None:
                if msg[0] == c.DISPATCH:
                    dispatched.extend(msg[1]["tasks"])
            return len(dispatched)

        wait_for(lambda: drain() == 3, "three dispatched tasks")
        before = node.call(lambda: node.node.core.limits.throttled["z"])
        assert api.post("/tasks", {"name": "job", "queue": "z", "args": [6]})[0] == 202   # wakes the dispatcher
        wait_for(lambda: node.call(lambda: node.node.core.limits.throttled["z"]) > before,
                 "the dispatcher to hold the queue back again")
        assert drain() == 3
        assert msgpack.unpackb(dispatched[0][3]) == [[0], {}]
        assert api.request("DELETE", "/queues/z/limits")[1] == {"queue": "z", "removed": True}
        wait_for(lambda: drain() == 7, "the rest, once the limit is gone")
    finally:
        sock.close(0)
        ctx.term()
        api.close()


def test_queue_command_sets_and_lists_limits(make_http_node, capsys):
    node = make_http_node()
    api = Http(node.url)
    try:
        assert cli_main(["queue", "--http", node.url, "limit", "mail", "--rate", "50", "--burst", "10",
                         "--max-concurrent", "4"]) == 0
        assert "t1: mail: rate=50/s burst=10 max_concurrent=4" in capsys.readouterr().out
        limits = api.get("/queues/mail/limits")[1]["limits"]
        assert (limits["rate"], limits["burst"], limits["max_concurrent"]) == (50.0, 10.0, 4)
        assert cli_main(["queue", "--http", node.url, "list"]) == 0
        listing = capsys.readouterr().out
        assert "mail" in listing and "rate=50/s" in listing
        assert cli_main(["queue", "--http", node.url, "limit", "mail", "--clear"]) == 0
        assert api.get("/queues/mail/limits")[1]["limits"] is None
        assert cli_main(["queue", "--http", node.url, "limit", "mail", "--burst", "3"]) == 2
        assert "give --rate" in capsys.readouterr().err
    finally:
        api.close()


def test_queue_command_takes_its_options_after_the_action_too(make_http_node, capsys):
    """Fault: a user writes --http after the action word (`miyaq queue limit q --rate 1 --http URL`)."""
    node = make_http_node()
    api = Http(node.url)
    try:
        assert cli_main(["queue", "limit", "mail", "--rate", "5", "--http", node.url]) == 0
        assert api.get("/queues/mail/limits")[1]["limits"]["rate"] == 5.0
        assert cli_main(["queue", "list", "--http", node.url, "--json"]) == 0
        assert '"mail"' in capsys.readouterr().out
        # Given before the action, it is not overwritten by the action's default.
        assert cli_main(["queue", "--http", node.url, "limit", "mail", "--clear"]) == 0
        assert api.get("/queues/mail/limits")[1]["limits"] is None
    finally:
        api.close()


def test_refill_timer_dispatches_without_other_traffic(make_http_node, make_web_worker):
    """Tasks 2..5 wait for tokens after the previous delivery has finished; only
    the refill timer then wakes the dispatcher."""
    worker = make_web_worker()
    node = make_http_node(queue_limits="trickle:rate=20,burst=1", webhook_allow_private=True)
    api = Http(node.url)
    try:
        for _ in range(5):
            api.post("/queue/trickle", {"url": f"{worker.url}/t"})
        wait_for(lambda: worker.count() == 5, "all five deliveries, one token at a time")
        assert node.call(lambda: node.node.core.limits.throttled["trickle"]) >= 1
    finally:
        api.close()
