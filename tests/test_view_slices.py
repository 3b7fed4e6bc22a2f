"""Views of every queue are built and encoded a slice of queues at a time
(:mod:`miyaq.core.view_rows`), the loop's other greenlets running between
two slices, and the view lane charges a view its slices' time only.

Fault simulated throughout: a node with thousands of queues built every
queue's row for STATUS, ``GET /status`` and ``GET /queues`` -- and wrote
it as JSON or msgpack -- in one go in its one loop: 36-62 ms at 10,000
queues, every other client held meanwhile (the overload audit of
2026-12-06: under a 20/s poller the task path's p99 stayed at 34.5 ms with
the view lane, 1.6 without the poller)."""
from __future__ import annotations

import json
from typing import Any

import pytest
from gateway_harness import FIXTURES, wait_for

import miyaq
from miyaq.core import view_rows
from miyaq.core.view_lane import ViewLane
from miyaq.core.view_rows import FIRST_ROWS, at_once, in_slices, json_in_slices, msgpack_in_slices
from miyaq.gateway.request import json_response
from miyaq.protocol import codec
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import green, wall

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

QUEUES = 3000


def a_view(queues: int) -> dict[str, Any]:
    rows = {f"q-{k}-é": {"ready": k, "limits": None if k % 2 else {"rate": 1.5}, "paused": k % 3 == 0}
            for k in range(queues)}
    return {"node": "n1", "queues": rows, "list": [{"name": n} for n in rows], "empty": [], "few": [1, 2]}


@pytest.mark.parametrize("queues", [0, 5, FIRST_ROWS + 1, 2500])
def test_the_encoders_write_what_json_response_and_codec_pack_write(queues):
    view = a_view(queues)
    pauses: list[int] = []

    def slices(items):
        return in_slices(items, lambda: pauses.append(1))

    assert json_in_slices(view, slices) == json_response(view).body
    assert json.loads(json_in_slices(view, at_once)) == view
    view["req"] = 7
    assert msgpack_in_slices(view, slices) == codec.pack(view)
    assert bool(pauses) == (queues > FIRST_ROWS)


def test_slices_give_every_item_once_in_order_and_pause_after_each():
    items = list(range(5000))
    given: list[list[int]] = []
    pauses = []
    for chunk in in_slices(items, lambda: pauses.append(len(given))):
        given.append(list(chunk))
    assert [i for chunk in given for i in chunk] == items
    assert len(given[0]) == FIRST_ROWS and all(view_rows.FEWEST_ROWS <= len(c) <= view_rows.MOST_ROWS
                                               for c in given[:-1])
    assert pauses == list(range(1, len(given) + 1))
    assert list(in_slices(items[:FIRST_ROWS], lambda: pauses.append(-1))) == [items[:FIRST_ROWS]]
    assert -1 not in pauses      # one slice: built in one go, no pause


class CostClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_sliced_view_is_charged_its_slices_not_the_others_work_between_them():
    """Fault: the lane charged a view the CPU time of the loop's thread from
    its start to its end; a view that lets the others run between its
    slices would be charged their work too, and the next view's turn put
    off by ten times that. Each slice here costs 1 ms, the other greenlet
    1 s each time it runs: the view is charged its slices alone."""
    clock = CostClock()
    lane = ViewLane(share=0.1, cost_clock=clock)
    ran = []
    done = False

    def other() -> None:
        while not done:
            clock.now += 1.0
            ran.append(lane.building)
            green.let_others_run()

    def build() -> int:
        slices = 0
        for _ in lane.slices(list(range(10 * FIRST_ROWS))):
            clock.now += 0.001
            slices += 1
        return slices

    other_greenlet = green.Greenlet.spawn(other)
    try:
        green.let_others_run()
        slices = lane.timed(build, lane.turn(), sliced=True)
    finally:
        done = True
        other_greenlet.join(5)
    assert slices > 1 and ran.count(1) >= slices - 1       # the other ran between the slices
    assert lane.stats()["last_seconds"] == pytest.approx(slices * 0.001)
    assert lane.building == 0
    # Outside a sliced view (the service socket's reader, a test's call) the list is given at once.
    assert [len(c) for c in lane.slices(list(range(10 * FIRST_ROWS)))] == [10 * FIRST_ROWS]


def test_views_asked_together_while_one_is_built_in_slices_are_built_one_at_a_time():
    """Fault (a review audit: 100 ``GET /status`` asked together right after
    a node of 10,000 queues started were all built at once -- 3.4 s of the
    loop, holds of 277 ms, 461 MB): the first view's cost was not known
    while it was built in slices, so every request read meanwhile took a
    turn at once and built its view alongside. A turn taken while a view is
    being built waits for it (it counts as waiting, and the lane's bounds on
    waiting apply); the views are built one after the other."""
    lane = ViewLane(share=0.1)
    building_at_once: list[int] = []
    built: list[int] = []

    def build(k: int) -> int:
        for _ in lane.slices(list(range(4 * FIRST_ROWS))):
            building_at_once.append(lane.building)
        built.append(k)
        return k

    first = green.Greenlet.spawn(lane.run, lambda: build(0))
    green.let_others_run()                  # the first view is under way, between two slices
    assert lane.building == 1
    turns = [lane.turn("admin") for _ in range(5)]
    assert all(t.behind and not t.now for t in turns) and lane.waiting == 5

    def in_turn(k: int) -> int:
        lane.wait(turns[k - 1])
        return lane.timed(lambda: build(k), turns[k - 1], sliced=True)

    others = [green.Greenlet.spawn(in_turn, k) for k in range(1, 6)]
    green.joinall([first, *others], timeout=30)
    assert [g.value for g in (first, *others)] == list(range(6))
    assert max(building_at_once) == 1, "two views were built at once"
    assert sorted(built) == list(range(6)) and lane.waiting == 0 and lane.building == 0
    with pytest.raises(miyaq.Busy):         # the bound on waiting holds for turns behind a view
        first = green.Greenlet.spawn(lane.run, lambda: build(9))
        green.let_others_run()
        for _ in range(9):
            lane.turn("admin")
    first.join(30)


def test_a_view_granted_at_once_to_a_greenlet_not_yet_running_puts_the_next_turns_behind_it():
    """Fault (a review audit: 60 STATUS pipelined on one connection to a
    node of 5,000 queues right after start were all answered, back to back,
    none refused): the reader takes each STATUS's turn and spawns its build;
    the first turn was granted at once, but its greenlet had not begun the
    view when the next STATUS was read, so nothing was being built: every
    turn of the pass was granted at once, none waited, none was refused. A
    view expected (:meth:`ViewLane.expect`) puts later turns behind it as a
    view being built does; its end -- when it begins, or in a ``finally``
    for a greenlet killed before -- lets them go."""
    lane = ViewLane(share=0.1)
    first = lane.turn("open")
    assert first.now
    expected = lane.expect()
    behind = [lane.turn("open") for _ in range(8)]
    assert all(t.behind for t in behind) and lane.waiting == 8
    with pytest.raises(miyaq.Busy):          # the ninth of one role's: refused, as behind a view being built
        lane.turn("open")
    expected()                               # its greenlet was killed before it began
    expected()                               # idempotent
    done = [green.Greenlet.spawn(lane.wait, t) for t in behind]
    green.joinall(done, timeout=10)
    assert all(g.successful() for g in done) and lane.waiting == 0
    # Begun: the expectation ends as the view's building begins (no gap between the two).
    again = lane.expect()
    built = lane.timed(lambda: lane.building, lane.turn("open"), sliced=True, expected=again)
    assert built == 1 and lane.building == 0 and not lane.turn("open").behind


def fill(node: Any, queues: int) -> None:
    """One scheduled task in each of ``queues`` queues (in the node's loop)."""
    engine, config, now = node.core.engine, node.config, wall()
    for k in range(queues):
        wire = {"id": f"t{k:06d}", "queue": f"q{k:05d}", "name": "job", "countdown": 3600}
        engine.submit(task_from_wire(wire, now, config), now)


def test_views_of_thousands_of_queues_let_the_loop_run_between_their_slices(http_node, api):
    """A greenlet of the node's loop counts its turns while each view is
    built (from its start to its end in the lane): STATUS over ZeroMQ,
    ``GET /status`` and ``GET /queues`` each let it run several times, and
    every row is there, as before. Before the fix it never ran during a
    view (each was built and encoded in one go)."""
    node = http_node.node
    lane = node.core.views
    http_node.call(lambda: fill(node, QUEUES))
    turns: dict[str, Any] = {"building": False, "during": 0, "stop": False}
    timed = lane.timed

    def timed_watched(build: Any, turn: Any = None, **kw: Any) -> Any:
        turns["building"] = True
        try:
            return timed(build, turn, **kw)
        finally:
            turns["building"] = False

    def counter() -> None:
        while not turns["stop"]:
            if turns["building"]:
                turns["during"] += 1
            green.let_others_run()

    def start() -> None:
        lane.timed = timed_watched
        lane._next_turn = 0.0
        green.Greenlet.spawn(counter)

    def during() -> int:
        seen, turns["during"] = turns["during"], 0
        lane._next_turn = 0.0         # the next view's turn at once: this test is not about spacing
        return seen

    http_node.call(start)
    try:
        with miyaq.Client(f"tcp://127.0.0.1:{http_node.config.port}") as client:
            status = client.status()
        assert len(status["queues"]) == QUEUES and status["queues"]["q00042"]["scheduled"] == 1
        assert status["totals"]["live"] == QUEUES
        assert http_node.call(during) > 2

        code, body, _ = api.get("/status")
        assert code == 200 and len(body["queues"]) == QUEUES and body["queues"]["q02999"]["scheduled"] == 1
        assert http_node.call(during) > 2

        code, body, _ = api.get("/queues")
        assert code == 200 and [row["name"] for row in body["queues"]] == [f"q{k:05d}" for k in range(QUEUES)]
        assert body["queues"][7] == {"name": "q00007", "scheduled": 1, "ready": 0, "running": 0, "retrying": 0,
                                     "dead": 0, "workers": 0, "idle": 0, "webhooks_in_flight": 0,
                                     "limits": None, "paused": False}
        assert http_node.call(during) > 2
    finally:
        http_node.call(lambda: turns.update(stop=True))
        wait_for(lambda: http_node.call(lambda: True), "the node's loop")
