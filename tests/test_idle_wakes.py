"""An idle standalone node sleeps until something is due (docs/operations.md,
"An idle node"): its housekeeping passes when the workers' heartbeat tick
or the tombstone sweep comes, not every ``HOUSEKEEPING_INTERVAL``, and what
each of them does is still done on time.

The clocks are moved with :func:`miyaq.runtime.clock.advance` and
housekeeping woken after each jump (as the in-process cluster's
``advance()`` does), so the counts below do not depend on how fast the host
runs: every pass counted is one the node chose to make."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq.green as zmq

from miyaq.config import NodeConfig
from miyaq.core import clockwork as clockwork_module
from miyaq.node.assemble import build_node
from miyaq.node.node import Node
from miyaq.protocol import commands as c
from miyaq.runtime import clock, green, monotonic, wall
from miyaq.store.task import READY, SCHEDULED, Task
from miyaq.testing.harness import free_port

WAIT = 10.0   # a guard against a hang, never a timing assertion


@pytest.fixture
def idle_node(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Node]]:
    """Factory: a standalone node in this thread's hub whose tombstone sweep
    comes every 30 s (so in these tests only the heartbeat tick and the
    long-polls make housekeeping pass); stopped, and the clocks reset, at
    the end."""
    monkeypatch.setattr(clockwork_module, "TOMBSTONE_SWEEP", 30.0)
    nodes: list[Node] = []

    def make(**settings: Any) -> Node:
        port = free_port()
        node = build_node(NodeConfig(port=port, http_port=0, node_id=f"n{port}", shutdown_grace=0.0, **settings))
        nodes.append(node)
        node.start()
        until(lambda: node.clockwork.passes >= 1, "the first housekeeping pass")
        return node

    yield make
    for node in nodes:
        node.stop(0)
    clock.reset()


def until(predicate: Callable[[], Any], what: str) -> None:
    deadline = monotonic() + WAIT
    while not predicate():
        assert monotonic() < deadline, f"{what} did not happen within {WAIT:g}s"
        green.sleep(0.005)


def jump(node: Node, seconds: float) -> None:
    """Move the clocks ``seconds`` on, wake housekeeping, and let the node run
    until it either passed or went back to sleep."""
    clock.advance(seconds)
    node.clockwork.recheck_housekeeping()
    green.sleep(0.02)


def test_an_idle_standalone_node_passes_only_when_its_heartbeat_tick_is_due(
        idle_node: Callable[..., Node]) -> None:
    """Fault: an idle node's housekeeping woke every 0.1 s whatever was due:
    100 passes (and as many wake-ups of the process) over 10 s with nothing
    to do. Moved 9.5 s on in jumps of 0.5 s with a 5 s heartbeat, the node
    now passes only at its heartbeat ticks, at least 5 s apart, and each
    tick still sends the workers their heartbeat; jumped on, it passes at
    the next tick and at no other time.

    The clocks are real time plus the jumps: the real time the 19 jumps
    take counts too. Before 2026-12-08 the test asserted exactly one pass
    in them, and a loaded machine that took 0.5 s of real time for the
    first nine (70 ms a step) brought the 10 s tick inside them: two passes,
    both ticks, and the test failed. It now counts the passes that were
    not ticks: none."""
    node = idle_node(heartbeat=5.0)
    ticks: list[float] = []
    real_tick = node.core.workers.tick
    node.core.workers.tick = lambda now: (ticks.append(now), real_tick(now))[1]   # type: ignore[method-assign]
    before = node.clockwork.passes
    for _ in range(19):
        jump(node, 0.5)
    assert node.clockwork.passes - before == len(ticks) >= 1, (node.clockwork.passes - before, ticks)
    assert all(later - earlier >= 5.0 for earlier, later in zip(ticks, ticks[1:])), ticks
    seen = len(ticks)
    for _ in range(20):      # 10 s more at most: the next tick comes within them
        jump(node, 0.5)
        if len(ticks) > seen:
            break
    until(lambda: len(ticks) > seen, "the next heartbeat tick")
    assert node.clockwork.passes - before == len(ticks), (node.clockwork.passes - before, ticks)


def test_a_long_poll_of_an_idle_node_is_answered_at_its_deadline(idle_node: Callable[..., Node]) -> None:
    """An idle node sleeps until its next heartbeat tick (30 s here), but a
    RECEIVE parked meanwhile wakes it at its own deadline: answered (no
    task) well before the tick, with no planned pass run for it."""
    node = idle_node(heartbeat=30.0)
    before = node.clockwork.passes
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://127.0.0.1:{node.config.port}")
        sock.send_multipart([c.TAG, c.RECEIVE, msgpack.packb({"queues": ["empty"], "timeout": 0.05, "req": 1})])
        assert sock.poll(int(WAIT * 1000)), "the RECEIVE was not answered at its deadline"
        reply = msgpack.unpackb(sock.recv_multipart()[2])
    finally:
        ctx.destroy(linger=0)
    assert reply.get("req") == 1 and reply.get("task") is None
    assert node.clockwork.passes == before


def test_a_silent_worker_of_an_idle_node_is_still_lost_after_heartbeat_times_liveness(
        idle_node: Callable[..., Node]) -> None:
    """Sleeping between ticks does not delay liveness: a worker that
    registers and then says nothing is dropped at the tick that finds it
    silent for ``heartbeat × liveness`` (and through ``liveness`` ticks), and
    kept at the ticks before it."""
    node = idle_node(heartbeat=2.0, liveness=3)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://127.0.0.1:{node.config.port}")
        sock.send_multipart([c.TAG, c.READY, msgpack.packb({"worker": "quiet", "queues": ["q"], "capacity": 1})])
        until(lambda: "quiet" in node.core.workers.by_wid, "the worker's registration")
        for _ in range(3):           # three ticks, 2 s apart: silent 6 s at the third, not past it
            after = node.clockwork.passes
            jump(node, 2.0)
            until(lambda: node.clockwork.passes > after, "the heartbeat tick")
            assert "quiet" in node.core.workers.by_wid
        jump(node, 2.0)              # the fourth: silent 8 s, through 3 ticks
        until(lambda: "quiet" not in node.core.workers.by_wid, "the silent worker's drop")
        assert node.core.workers.lost_total == 1
    finally:
        ctx.destroy(linger=0)


def test_a_cluster_node_passes_at_each_jump_of_the_clocks(inproc: Callable[..., Any]) -> None:
    """A node that watches for freezes (a cluster node) passes when a test
    moves the clocks on and wakes its housekeeping, whatever is due: a gap
    of more than ``STALL`` between passes is how it knows it was frozen, and
    jumps with no pass between would add up to one. Moved 0.5 s on, each
    time it passes (tests/test_idle_cluster_wakes.py: idle, it passes at its
    heartbeat tick or every ``FREEZE_LOOK``)."""
    cluster = inproc(nodes=1)
    handle = next(iter(cluster.nodes.values()))
    clockwork = handle.node.clockwork
    before = clockwork.passes
    for _ in range(3):
        after = clockwork.passes
        jump(handle.node, 0.5)
        until(lambda: clockwork.passes > after, "a pass after the jump")
    assert clockwork.passes - before >= 3


def test_a_periodic_tick_on_an_idle_node_is_leased_when_it_fires(idle_node: Callable[..., Node]) -> None:
    """Fault: a periodic tick's task, stored by a standalone node's own
    intake, waited for the node's next housekeeping pass to be leased (no
    service burst or timer follows it): up to 0.1 s, and once an idle node
    passed only when something was due, until its next heartbeat tick. The
    scheduler now runs the node's after-burst step once it submitted: a
    worker that declared a schedule every 0.2 s is sent a tick's task while
    housekeeping (heartbeat 30 s) makes no pass."""
    node = idle_node(heartbeat=30.0)
    before = node.clockwork.passes
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://127.0.0.1:{node.config.port}")
        sock.send_multipart([c.TAG, c.READY, msgpack.packb({
            "worker": "cron", "queues": ["default"], "names": ["t"], "capacity": 1,
            "periodic": [{"name": "beat", "task": "t", "every": 0.2}]})])
        commands = []
        deadline = monotonic() + WAIT
        while c.DISPATCH not in commands:
            assert sock.poll(int(max(0.0, deadline - monotonic()) * 1000)), \
                f"no tick's task was sent (the node sent {commands})"
            commands.append(sock.recv_multipart()[1])
    finally:
        ctx.destroy(linger=0)
    assert node.clockwork.passes == before


def test_the_timer_loop_of_an_idle_node_sleeps_until_a_timer_is_armed(idle_node: Callable[..., Node]) -> None:
    """Fault: with no timer armed, the timer loop woke every second to fire
    nothing. It now sleeps (1.3 s of real time here: no pass) until a timer
    is armed; a delayed task stored outside a burst -- as a worker dropped by
    housekeeping retries its tasks -- is seen at housekeeping's next pass,
    which wakes the loop, and it fires at its eta."""
    node = idle_node(heartbeat=1.0)
    clockwork = node.clockwork
    green.sleep(0.1)
    before = clockwork.timer_passes
    green.sleep(1.3)
    assert clockwork.timer_passes == before
    now = wall()
    node.core.engine.submit(Task("later", "nobody", "job", b"", created=now, eta=now + 0.5), now)
    assert node.core.engine.table.live["later"].state == SCHEDULED
    jump(node, 1.0)              # the heartbeat tick is due: housekeeping passes, sees the timer
    until(lambda: node.core.engine.table.live["later"].state == READY, "the delayed task's eta")
    assert clockwork.timer_passes > before


def test_a_far_timer_armed_in_a_burst_does_not_wake_the_idle_timer_loop(idle_node: Callable[..., Node]) -> None:
    """Fault: the idle timer loop was woken by every timer armed, however
    far: a lone task's lease, armed and disarmed with it, woke the loop
    once a task (confirmed submits and call() one at a time 0.65x as many
    a second). A timer due past IDLE_TIMER_HORIZON does not wake it; one due
    within it does, and so does the far one once a housekeeping pass finds
    it within the horizon -- it still fires at its eta."""
    node = idle_node(heartbeat=1.0)
    clockwork = node.clockwork
    green.sleep(0.1)
    before = clockwork.timer_passes
    now = wall()
    far = now + clockwork_module.IDLE_TIMER_HORIZON + 5.0
    node.core.engine.submit(Task("far", "nobody", "job", b"", created=now, eta=far), now)
    clockwork.after_burst(now)
    green.sleep(0.1)
    assert clockwork.timer_passes == before
    node.core.engine.submit(Task("near", "nobody", "job", b"", created=now, eta=now + 0.3), now)
    clockwork.after_burst(now)
    until(lambda: node.core.engine.table.live["near"].state == READY, "the near task's eta")
    assert clockwork.timer_passes > before
    jump(node, clockwork_module.IDLE_TIMER_HORIZON + 6.0)
    until(lambda: node.core.engine.table.live["far"].state == READY, "the far task's eta")
