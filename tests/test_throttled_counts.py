"""``miyaq_queue_throttled_total`` counts the times a queue's limits held it
back (docs/http.md, "Metrics"): once when the dispatcher finds the queue at
its limit, and again only after a task of it started or became ready --
not once per dispatcher pass. The dispatcher runs with an injected clock,
as in tests/test_limits.py."""
from __future__ import annotations

from test_limits import Collector, pump, submit

from miyaq.config import NodeConfig
from miyaq.core.dispatcher import Dispatcher
from miyaq.core.engine import Engine
from miyaq.core.gate import Gate
from miyaq.core.limits import QueueLimits, parse_limits
from miyaq.runtime import Supervisor


def setup(spec: str, *queues: str) -> tuple[Engine, QueueLimits, Dispatcher, Collector]:
    """As a node wires them: the limits hear the engine too."""
    engine = Engine(NodeConfig(queue_limits=spec))
    limits = QueueLimits(engine, Supervisor("test"), parse_limits(spec))
    dispatcher = Dispatcher(engine, 1024, Gate(), limits)
    engine.listeners += [dispatcher, limits]
    consumer = Collector(list(queues))
    dispatcher.grant(consumer, 0)
    return engine, limits, dispatcher, consumer


def test_a_capped_queue_is_counted_once_per_hold_back_not_once_per_dispatch_pass():
    """Fault: a queue capped at ``max_concurrent`` 1 with 3 tasks waiting
    was counted at every check of the dispatcher -- each take of each
    consumer in each pump: +0 while the node sat idle, +403 while a worker
    of both queues ran 400 tasks of another, unlimited queue. Now it is
    counted when it is held back, and again once a task of it started (the
    next one waits) or a new one became ready."""
    engine, limits, dispatcher, consumer = setup("hang:max_concurrent=1", "hang", "ok")
    submit(engine, "hang", 4, 0.0)
    pump(dispatcher, 0.0, times=20)
    assert [t.queue for t in consumer.got] == ["hang"]
    assert limits.throttled["hang"] == 1

    submit(engine, "ok", 400, 1.0)
    pump(dispatcher, 1.0, times=20)
    assert len(consumer.got) == 401
    assert limits.throttled["hang"] == 1

    first = consumer.got[0]
    assert engine.complete(first.id, first.attempt, b"ok", 2.0)
    pump(dispatcher, 2.0, times=20)
    assert [t.queue for t in consumer.got].count("hang") == 2
    assert limits.throttled["hang"] == 2          # the third task waits now

    submit(engine, "hang", 1, 3.0)
    pump(dispatcher, 3.0, times=20)
    assert limits.throttled["hang"] == 3          # and so does the new one
    limits.close()


def test_a_queue_out_of_tokens_is_counted_once_until_a_task_of_it_changes():
    """The same for a rate limit: no tokens left, 20 pumps count one
    hold-back; a task that becomes ready counts one more; cleared limits
    forget the hold-back (nothing kept per queue without a limit)."""
    engine, limits, dispatcher, consumer = setup("q:rate=0,burst=2", "q")
    submit(engine, "q", 5, 0.0)
    pump(dispatcher, 0.0, times=20)
    assert len(consumer.got) == 2 and limits.throttled["q"] == 1
    submit(engine, "q", 1, 1.0)
    pump(dispatcher, 1.0, times=20)
    assert limits.throttled["q"] == 2
    assert limits.clear("q")
    assert not limits._held
    limits.close()
