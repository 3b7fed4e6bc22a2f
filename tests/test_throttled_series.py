"""``miyaq_queue_throttled_total`` is bounded like the other per-queue series:
a queue the engine forgets (empty, on a node that saw more than 100 queues)
takes its throttled count and series with it (docs/http.md, "Metrics")."""
from __future__ import annotations

from gateway_harness import FIXTURES, Http
from test_metrics import scrape

from miyaq.core.limits import Limit

http_node, api, make_http_node, make_web_worker = FIXTURES

QUEUES = [f"tenant-{i:04d}" for i in range(150)]
THROTTLED = "miyaq_queue_throttled_total"


def throttled_queues(samples: dict) -> set[str]:
    return {dict(labels)["queue"] for name, labels in samples if name == THROTTLED}


def test_a_forgotten_queue_takes_its_throttled_series_with_it(make_http_node):
    """Fault: 150 made-up queues, each limited to rate 0 and held back once;
    then their tasks cancelled and limits cleared. The engine forgot the
    empty queues and their other series went, but the limits kept a
    throttled count for every queue ever throttled, so /metrics kept 150
    ``miyaq_queue_throttled_total`` series (one per name a producer makes
    up, without bound). Now the forgotten queues' series are gone."""
    node = make_http_node()
    core = node.node.core
    api = Http(node.url)
    try:
        ids = {}
        for queue in QUEUES:
            assert api.request("PUT", f"/queues/{queue}/limits", {"rate": 0})[0] == 200
            ids[queue] = api.post("/tasks", {"name": "job", "queue": queue})[1]["id"]
            assert api.post("/receive", {"queues": [queue]})[1]["task"] is None     # held back: throttled
        assert throttled_queues(scrape(api)) == set(QUEUES)
        for queue in QUEUES:
            assert api.request("DELETE", f"/tasks/{ids[queue]}")[1]["cancelled"] is True
            assert api.request("DELETE", f"/queues/{queue}/limits")[0] == 200
        node.call(core.engine.compact_lanes)       # the housekeeping's, every second: forgets empty queues
        assert node.call(lambda: set(core.engine.counts) & set(QUEUES)) == set()
        assert throttled_queues(scrape(api)) == set()
        assert node.call(lambda: dict(core.limits.throttled)) == {}
    finally:
        api.close()


def test_forgetting_a_queue_keeps_its_limits_and_pause(make_http_node):
    """Only the count goes: a queue forgotten while it still has limits or is
    paused keeps them (they are bounded by MAX_LIMITED and MAX_PAUSED)."""
    node = make_http_node()
    limits = node.node.core.limits

    def forget() -> tuple:
        limits.set("kept", Limit(rate=1.0), 0.0)
        limits.pause("kept", 0.0)
        limits.throttled["kept"] += 3
        limits.queue_forgotten("kept")
        limits.queue_forgotten("never-throttled")
        return "kept" in limits.throttled, limits.get("kept"), "kept" in limits.paused

    assert node.call(forget) == (False, Limit(rate=1.0), True)
