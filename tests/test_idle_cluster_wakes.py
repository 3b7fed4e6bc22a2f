"""An idle cluster node, and an idle worker, sleep until something is due
(docs/performance.md, "Idle"): the cluster's ticker until its next stream
heartbeat, housekeeping until its heartbeat tick or ``FREEZE_LOOK``, the
peer link's answer reader until a request's deadline, the stream port's
loop until a subscription comes; a worker's link wakes once for its own
heartbeat, not twice. What each of them does is still done on time.

The counts are of passes made over some real time with nothing to do: a
slow host makes fewer, never more, so no count depends on the host's
speed; every wait for an outcome is bounded by ``WAIT``, a guard against a
hang, never a timing assertion."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import zmq as plain_zmq
from test_stream_port_hostile import RawSubscriber, _frame

from miyaq.cluster.peer import PeerEndpoint
from miyaq.cluster.peer_requests import QUERY
from miyaq.cluster.stream import ZmqStreamPublisher
from miyaq.constants import CLUSTER_TICK, STALL
from miyaq.core import clockwork as clockwork_module
from miyaq.runtime import Supervisor, green, monotonic
from miyaq.runtime.hub_socket import HubSocket
from miyaq.runtime.sockets import SocketFactory
from miyaq.testing.harness import free_port

pytestmark = pytest.mark.timeout(120)

WAIT = 10.0   # a guard against a hang, never a timing assertion
IDLE = 0.6    # real seconds an idle loop is watched for


def until(predicate: Callable[[], Any], what: str) -> None:
    deadline = monotonic() + WAIT
    while not predicate():
        assert monotonic() < deadline, f"{what} did not happen within {WAIT:g}s"
        green.sleep(0.005)


def _count_calls(obj: Any, name: str) -> list[int]:
    """Count the calls of ``obj.name`` (wrapped on the instance)."""
    calls = [0]
    real = getattr(obj, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)
    setattr(obj, name, counted)
    return calls


def _idle_cluster(inproc: Callable[..., Any], **settings: Any) -> Any:
    """Three nodes, past the minute of handoff sweeps after their ring came,
    with nothing in flight."""
    cluster = inproc(nodes=3, **settings)
    cluster.advance(61.0)
    until(lambda: all(not h.role.handoff.busy and not h.role.reconciling for h in cluster.nodes.values()),
          "the handoffs and reconciles of the ring's start")
    green.sleep(0.1)
    return cluster


# -- the cluster's ticker ---------------------------------------------------------------------
def test_an_idle_cluster_nodes_ticker_sleeps_until_its_next_stream_heartbeat(inproc: Callable[..., Any]) -> None:
    """Fault: the cluster ticker ran a round every ``CLUSTER_TICK`` (0.05 s)
    with nothing in flight: 20 wake-ups a second of an idle node, 12 in
    0.6 s. Now an idle node's ticker plans its next round at its next
    stream heartbeat (``STREAM_HEARTBEAT``, 1 s): at most one in 0.6 s, and
    the heartbeats still go to every peer."""
    cluster = _idle_cluster(inproc)
    rounds = {n: _count_calls(h.role.reconcile, "tick") for n, h in cluster.nodes.items()}
    beats = {n: _count_calls(h.role.publisher, "heartbeat") for n, h in cluster.nodes.items()}
    green.sleep(IDLE)
    assert {n: c[0] for n, c in rounds.items()} == {n: min(c[0], 1) for n, c in rounds.items()}, \
        "an idle ticker ran more than its heartbeat's round"
    until(lambda: all(c[0] >= 1 for c in beats.values()), "each node's next stream heartbeat")


def test_a_lone_submit_costs_an_idle_ticker_no_round_and_its_deadline_is_kept(inproc: Callable[..., Any]) -> None:
    """A submit waiting for its copies (held on the wire) does not wake the
    sleeping ticker: its ``replication_timeout`` is seconds away, and the
    round planned at the next heartbeat (or at that deadline, if sooner)
    comes in time -- one call() at a time would otherwise cost a round each.
    Once the deadline passed the submit is rejected at the next round, with
    no message to the node to bring it."""
    cluster = _idle_cluster(inproc, min_acks=3)
    via = next(iter(cluster.nodes))
    role = cluster.nodes[via].role
    ticker = role.ticker
    rounds = _count_calls(role.reconcile, "tick")
    cluster.net.hold(kind="REPLICATE")
    sub = cluster.submit(via, "held", name="job", replicas=3)
    until(lambda: role.intake.pending, "the submit waiting for its copies")
    deadline = next(iter(role.intake.pending.values())).deadline
    assert ticker.next_round(ticker.ticked) <= deadline
    before = rounds[0]
    green.sleep(IDLE)
    assert rounds[0] - before <= 1, "the submit brought rounds before its deadline"
    cluster.advance(role.intake.timeout + 0.1)
    until(lambda: sub.result is not None, "the submit's rejection at its deadline")
    assert sub.status == "rejected"


def test_copies_that_could_not_be_sent_bring_the_ticker_back_to_every_cluster_tick(
        inproc: Callable[..., Any]) -> None:
    """Copies a holder could not be sent (its link refused them) are sent
    again at every round: the submit that left them wakes the sleeping
    ticker, which runs a round every ``CLUSTER_TICK`` until they are gone.
    When the refusal ends the copies go and the submit is accepted, with no
    message to the node and no jump of the clocks to bring a round; then
    the ticker sleeps again."""
    cluster = _idle_cluster(inproc, min_acks=3)
    via = next(iter(cluster.nodes))
    role = cluster.nodes[via].role
    ticker = role.ticker
    rule = cluster.net.refuse(kind="REPLICATE", src=via)
    sub = cluster.submit(via, "late", name="job", replicas=3)
    until(lambda: role.intake.unsent, "copies that could not be sent")
    assert ticker.in_flight()
    assert ticker.next_round(ticker.ticked) == ticker.ticked + CLUSTER_TICK
    rule.remove()
    until(lambda: sub.result is not None, "the submit's answer once its copies could go")
    assert sub.status == "accepted"
    until(lambda: ticker.next_round(ticker.ticked) > ticker.ticked + CLUSTER_TICK, "the ticker asleep again")


# -- housekeeping ------------------------------------------------------------------------------
def test_an_idle_cluster_nodes_housekeeping_passes_at_its_tick_or_freeze_look(inproc: Callable[..., Any]) -> None:
    """Fault: a cluster node's housekeeping passed every
    ``HOUSEKEEPING_INTERVAL`` (0.1 s) whatever was due: 10 wake-ups a second
    idle. It now plans its next pass at the next of its heartbeat tick, its
    tombstone sweep and ``FREEZE_LOOK`` (half of ``STALL``) after its last
    pass, so a gap of more than ``STALL`` still means a freeze; idle, at most
    one pass in 0.6 s (the tick and the sweep share it)."""
    cluster = inproc(nodes=1)
    clockwork = next(iter(cluster.nodes.values())).node.clockwork
    last = monotonic()
    assert clockwork._next_pass(last, last + 30.0, last + 30.0) == last + clockwork_module.FREEZE_LOOK
    assert clockwork._next_pass(last, last + 0.4, last + 30.0) == last + 0.4
    assert clockwork_module.FREEZE_LOOK <= STALL / 2
    green.sleep(0.2)
    before = clockwork.passes
    green.sleep(IDLE)
    assert clockwork.passes - before <= 1


def test_a_freeze_longer_than_stall_is_still_seen_by_an_idle_cluster_node(inproc: Callable[..., Any]) -> None:
    """Passing at most every ``FREEZE_LOOK`` loses no freeze: the clocks
    moved ``STALL`` and a half on with no pass between (a frozen process)
    make the next pass find the gap, and the node takes itself for frozen
    (resyncs, coordinates no submit for a while), as before."""
    cluster = inproc(nodes=1)
    handle = next(iter(cluster.nodes.values()))
    stalls: list[float] = []
    real = handle.role.stalled
    handle.role.stalled = lambda seconds: (stalls.append(seconds), real(seconds))[1]  # type: ignore[method-assign]
    from miyaq.runtime import clock
    clock.advance(STALL + 0.5)
    handle.node.clockwork.recheck_housekeeping()
    until(lambda: stalls, "the freeze seen")
    assert stalls[0] > STALL
    assert handle.role.catching_up()        # it coordinates no submit for a while


# -- the peer link's answer reader -------------------------------------------------------------
@pytest.fixture
def peer_pair() -> Any:
    """A node's peer link linked to a silent member: a ROUTER the test binds
    and never answers from."""
    sockets = SocketFactory(green=True)
    supervisor = Supervisor("test")
    port, silent_port = free_port(), free_port()
    link = PeerEndpoint(sockets, supervisor, "n0", f"tcp://127.0.0.1:{port}")
    ctx = plain_zmq.Context()
    silent = ctx.socket(plain_zmq.ROUTER)
    silent.setsockopt(plain_zmq.LINGER, 0)
    silent.bind(f"tcp://127.0.0.1:{silent_port}")
    link.start()
    link.connect({"n0": f"tcp://127.0.0.1:{port}", "n1": f"tcp://127.0.0.1:{silent_port}"})
    try:
        yield link, silent
    finally:
        link.close()
        supervisor.kill()
        ctx.destroy(linger=0)
        sockets.close()


def test_an_idle_peer_links_answer_reader_waits_for_a_deadline_not_a_poll(peer_pair: Any) -> None:
    """Fault: the answer reader polled every 0.1 s to expire requests, ten
    wake-ups a second with none pending (6 in 0.6 s). Now it waits for an
    answer or the next request's deadline: no pass at all while idle, and a
    request to a silent member still ends in silence at its deadline --
    sent while the reader waited with no deadline, the request wakes it."""
    link, silent = peer_pair
    passes = [0]
    link.after_burst.append(lambda: passes.__setitem__(0, passes[0] + 1))
    green.sleep(0.2)        # the links' first connection events
    before = passes[0]
    green.sleep(IDLE)
    assert passes[0] - before == 0, "the answer reader woke with nothing to do"
    answers: list[Any] = []
    until(lambda: link.request("n1", QUERY, {"ids": ["t"]}, 0.3, answers.append), "a request sent to n1")
    until(lambda: answers, "the silent member's request ended at its deadline")
    assert answers == [None]


# -- the stream port ---------------------------------------------------------------------------
def test_the_stream_ports_loop_waits_for_a_subscription_not_a_poll() -> None:
    """Fault: the stream port's loop looked every 0.1 s for subscriptions
    (a send may take its descriptor's edge): 10 wake-ups a second idle.
    Now it waits for one, and the first send after a read plans a look
    ``SUBSCRIPTION_LOOK`` later: a bad subscription that arrives while the
    node publishes all the time is still dropped without a heartbeat's
    read, and an idle port's loop makes no pass."""
    sockets = SocketFactory(green=False)
    supervisor = Supervisor("test")
    port = free_port()
    publisher = ZmqStreamPublisher(sockets, "a", f"tcp://127.0.0.1:{port}", heartbeat_ms=(10_000, 30_000),
                                   supervisor=supervisor)
    reads = _count_calls(publisher.guard, "read")
    publisher.start()
    raw = None
    try:
        green.sleep(0.2)
        before = reads[0]
        green.sleep(IDLE)
        assert reads[0] - before == 0, "the port's loop woke with nothing to read"
        raw = RawSubscriber(port)
        raw.send(_frame(b"\x01"))        # a subscription to everything: dropped when read
        bursts = 0
        while not raw.closed():
            # Sends without a yield, 20 ms of them: one takes the edge of the
            # subscription's coming, and only the look a send planned wakes
            # the loop. Without it the subscription waited 3.5-9.5 s (170
            # bursts and more) for something else to wake the loop.
            assert bursts < 50, "the bad subscription was not dropped while the port published"
            bursts += 1
            burst = monotonic() + 0.02
            while monotonic() < burst:
                publisher.send("b", [["busy"]])
            green.sleep(0.001)
    finally:
        if raw is not None:
            raw.close()
        publisher.close()
        supervisor.kill()
        sockets.close()


# -- a worker's link ---------------------------------------------------------------------------
def test_a_timed_receive_that_times_out_waits_once() -> None:
    """Fault: a wait's timer is armed 1 ms early, and ``HubSocket.recv``
    waited out that millisecond with a second wait: each timed-out receive
    cost the hub two wake-ups (an idle worker's link woke 2.9 times a
    second, its own heartbeat's timer twice). It now returns None within
    ``EARLY_END`` of the timeout after one wait."""
    ctx = plain_zmq.Context()
    sock = ctx.socket(plain_zmq.DEALER)
    sock.setsockopt(plain_zmq.LINGER, 0)
    sock.bind("inproc://idle-recv")
    hub = HubSocket(sock)
    waits = _count_calls(hub._fd, "wait")
    try:
        for _ in range(5):
            before = waits[0]
            assert hub.recv(0.05) is None
            assert waits[0] - before == 1
    finally:
        hub.close()
        ctx.destroy(linger=0)


def test_an_idle_workers_hub_is_marked_by_its_watchdogs_look(node: Any, thread_worker: Any) -> None:
    """Fault: a greenlet of its own ("hub tick") marked every second that
    the worker's hub runs, for the heartbeat thread's watch, beside the
    watchdog's look every second: two wake-ups where one does. The
    watchdog's look now marks it; the worker runs no such greenlet, the
    mark stays fresh, and it is cleared when the watchdog ends."""
    from apps import basic
    w = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2)
    worker = w.worker
    until(lambda: worker.pulse.hub_seen is not None, "the hub marked as running")
    assert not [n for n in worker.supervisor.live() if "hub tick" in n]
    seen = worker.pulse.hub_seen
    until(lambda: worker.pulse.hub_seen != seen, "the watchdog's next look marking the hub")


def test_a_poller_woken_before_it_polls_is_not_left_waiting_for_ever() -> None:
    """Fault: the peer link retired a member's sockets (a member restarted)
    and woke its answer reader, which was not waiting at that moment (not
    started yet, or handling answers); the wake was lost, and the reader's
    next wait -- with no request pending, for ever -- left the retired
    sockets open until some answer came (a full suite run: the retired
    sockets never closed within 15 s). A wake with no poll waiting ends the
    next poll at once."""
    from miyaq.runtime.hub_socket import HubPoller
    ctx = plain_zmq.Context()
    sock = ctx.socket(plain_zmq.PULL)
    sock.linger = 0
    poller = HubPoller()
    poller.register(sock)
    try:
        poller.wake()
        with green.Timeout(5, False):
            assert poller.poll(None) == []
            return
        pytest.fail("the poll waited although it was woken")
    finally:
        sock.close(0)
        ctx.term()
