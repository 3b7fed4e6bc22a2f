"""A cluster in one process and one gevent hub, for tests that set up the
interleavings that matter on purpose.

:class:`InProcessCluster` builds N nodes with
:func:`~miyaq.node.assemble.build_node`, each given a
:class:`~miyaq.testing.scripted.ScriptedCoordinator` (the test writes the
ring) and a :class:`~miyaq.testing.memtransport.MemoryTransport` (the test
controls every peer message and stream message, :attr:`InProcessCluster.net`).
No ZooKeeper and no sockets between nodes; each node's service ROUTER is
bound on loopback but the tests drive the nodes directly: submits go to a
node's intake as the HTTP gateway's do, and tasks are leased to
:class:`~miyaq.testing.consumer.InProcessWorker` consumers whose completions the test decides.

Everything runs in the caller's hub: a test calls the cluster's methods from
its own greenlet and waits with :meth:`InProcessCluster.wait_until`, which
yields to the nodes. :meth:`InProcessCluster.advance` moves the process's
clocks forward (:func:`miyaq.runtime.clock.advance`) in steps short enough
that no node takes the jump for a freeze. :meth:`InProcessCluster.close`
stops everything and resets the clocks; :meth:`InProcessCluster.crashes`
counts every greenlet failure the nodes and the network saw.

A writing guide is in docs/architecture.md ("Testing the cluster in-process").
"""
from __future__ import annotations

import itertools
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from miyaq.cluster.ring_view import Member
from miyaq.config import NodeConfig
from miyaq.constants import FROZEN_RESYNC_TIMEOUT, HOUSEKEEPING_INTERVAL, STALL, SUSPECT_AFTER_FREEZE
from miyaq.core.binding import port_in_use
from miyaq.errors import ConfigError, Timeout
from miyaq.node.assemble import build_node
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import clock, green, monotonic, wall
from miyaq.testing.harness import PORT_TRIES, free_port
from miyaq.testing.inprocess_handles import InProcessNode, Submission
from miyaq.testing.memnet import Network
from miyaq.testing.memtransport import MemoryTransport, endpoints
from miyaq.testing.scripted import RingScript
from miyaq.testing.consumer import InProcessWorker

#: How far :meth:`InProcessCluster.accepted` moves the clocks at a time while
#: a node that refused a submit ``unavailable`` still holds back.
SUSPECT_STEP = 0.5
#: At most this much clock time is moved on so (what a freeze holds back
#: for: ``SUSPECT_AFTER_FREEZE``, and a reconcile's ``FROZEN_RESYNC_TIMEOUT``);
#: past it the wait is in real time, so a node held back by anything else (a
#: fence) does not see thousands of seconds pass before the Timeout (review40).
SUSPECT_ADVANCE = SUSPECT_AFTER_FREEZE + FROZEN_RESYNC_TIMEOUT

logger = logging.getLogger(__name__)

# A node's handle and a submit's (miyaq.testing.inprocess_handles) are named here too.
__all__ = ["DEFAULTS", "InProcessCluster", "InProcessNode", "Submission"]

#: Settings every in-process node gets unless the test gives its own: short
#: offsets and timeouts so a scenario takes a fraction of a second.
DEFAULTS: dict[str, Any] = {
    "replicas": 3, "replica_offset": 0.5, "replication_timeout": 1.0, "default_timeout": 2.0,
    "default_backoff": 0.1, "heartbeat": 0.5, "shutdown_grace": 0.2, "reconcile_timeout": 3.0,
    "http_port": 0,
}


class InProcessCluster:
    """N clustered nodes in this hub (see the module's docstring).

    ``nodes``: how many (ids ``n1``, ``n2`` ...) or their ids; ``settings``:
    :class:`~miyaq.config.NodeConfig` fields for every node (over
    :data:`DEFAULTS`); a ``data_dir`` gives each node a log in its own
    subdirectory, so a node stopped and started again replays it. Use as a context manager, or call :meth:`start` and
    :meth:`close`.
    """

    def __init__(self, nodes: int | list[str] = 3, **settings: Any) -> None:
        self.ids = [f"n{i + 1}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
        self.settings = {**DEFAULTS, **settings}
        self.net = Network()
        self.script = RingScript()
        self.nodes: dict[str, InProcessNode] = {}
        self.stopped: list[InProcessNode] = []
        self._ports: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._submissions: deque[Submission] = deque(maxlen=10_000)   # the latest, for a timeout's message

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> InProcessCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self, ring: bool | list[str] = True) -> InProcessCluster:
        """Start every node; with ``ring``, publish a ring of all of them (or
        of the ids ``ring`` lists) and wait until each node holds it and hears
        every other member's stream."""
        for node_id in self.ids:
            self.start_node(node_id)
        if ring:
            self.publish(self.ids if ring is True else ring)
        return self

    def publish(self, members: list[str] | None = None, **options: Any) -> int:
        """Publish a ring (:meth:`RingScript.publish`: ``weights``, ``leader``,
        ``epoch``, ``to``, ``withhold``) and, when every running node gets it,
        wait until they hold it and hear each other. Returns its epoch."""
        view = self.script.publish(members, **options)
        if not options.get("to") and not options.get("withhold"):
            self.wait_until(lambda: self.settled(view.epoch), what=f"every node on epoch {view.epoch}")
        return view.epoch

    def start_node(self, node_id: str, **settings: Any) -> InProcessNode:
        """Build and start ``node_id`` (again, after :meth:`stop_node`: a restart,
        from its log if ``data_dir`` is set). It sees the current ring at once.
        Its service port is picked at its first start, and picked again if
        another process takes it before the node binds it (up to
        ``PORT_TRIES`` starts, as :mod:`miyaq.testing.harness` does); a
        restart keeps it."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} is running")
        first = node_id not in self._ports      # its port is picked now (a restart keeps it)
        for attempt in range(1, PORT_TRIES + 1):
            port = self._ports.setdefault(node_id, free_port())
            merged = {**self.settings, **settings, "node_id": node_id, "port": port}
            if merged.get("data_dir"):
                merged["data_dir"] = os.path.join(merged["data_dir"], node_id)   # one log per node
            config = NodeConfig(**merged)
            peer, pub = endpoints(node_id)
            member = Member(node_id, service=f"tcp://127.0.0.1:{port}", peer=peer, pub=pub, weight=config.weight)
            transport = MemoryTransport(self.net, node_id, config.max_message)
            try:
                node = build_node(config, coordinator=self.script.coordinator(member), transport=transport)
                break
            except ConfigError as exc:
                transport.close()
                taken = port_in_use(exc.message)
                if not first or taken is None or taken[0] != port or attempt == PORT_TRIES:
                    raise
                logger.warning("in-process node %s: port %d was taken before it bound it; starting it again on a "
                               "fresh port (start %d of %d)", node_id, port, attempt + 1, PORT_TRIES)
                del self._ports[node_id]
        node.start()
        handle = self.nodes[node_id] = InProcessNode(node_id, config, transport, node)
        return handle

    def stop_node(self, node_id: str, grace: float = 0.0) -> InProcessNode:
        """Stop ``node_id`` (its tasks in memory are gone unless ``data_dir`` is set)."""
        handle = self.nodes.pop(node_id)
        handle.node.stop(grace)
        self.stopped.append(handle)
        return handle

    def close(self) -> None:
        """Stop every node and the network; put the clocks back. Never raises."""
        for node_id in list(self.nodes):
            try:
                self.stop_node(node_id)
            except Exception:
                logger.exception("stopping in-process node %s failed", node_id)
        self.net.close()
        clock.reset()

    def __getitem__(self, node_id: str) -> InProcessNode:
        return self.nodes[node_id]

    # -- state ---------------------------------------------------------------------------------
    def settled(self, epoch: int) -> bool:
        """Every running node holds ``epoch``, and every member of that ring
        hears every other member's stream (a node outside the ring hears none)."""
        return all(n.role.view.epoch == epoch and (n.id not in n.role.view.members or n.role.streams_ready())
                   for n in self.nodes.values())

    def holders(self, task_id: str, replicas: int | None = None, key: str | None = None) -> list[str]:
        """A task's holders by the last published ring, rank 0 first."""
        n = replicas or self.settings["replicas"]
        return [m.node_id for m in self.script.current.holders(key or task_id, n)]

    def crashes(self) -> Counter[str]:
        """Greenlet failures (name -> count) of every node, stopped ones too, and of the network."""
        total: Counter[str] = Counter()
        for handle in [*self.nodes.values(), *self.stopped]:
            total.update(handle.node.supervisor.crashes)
            total.update(handle.transport.supervisor.crashes)
        total.update(self.net.supervisor.crashes)
        return total

    def describe(self, task_ids: Iterable[str] = (), messages: int = 40) -> str:
        """For a failing test: each node's epoch and copies of ``task_ids``, and the last messages."""
        lines = []
        if not task_ids:    # the tasks any node holds or held, up to 20
            known = {t for h in self.nodes.values() for t in [*h.engine.table.live, *h.engine.table.dead,
                                                               *h.engine.table.tombstones]}
            task_ids = sorted(known)[:20]
        for node_id, handle in sorted(self.nodes.items()):
            copies = {t: handle.state(t) for t in task_ids}
            lines.append(f"{node_id}: epoch {handle.role.view.epoch}, gate {handle.node.core.gate.held()}, "
                         f"{len(handle.engine.table.live)} live; {copies}")
        lines += [repr(m) for m in list(self.net.log)[-messages:]]
        return "\n".join(lines)

    def submissions(self) -> list[Submission]:
        """The submits made through :meth:`submit` (those sent again too), the
        latest 10,000, oldest first: for a test to see which were refused."""
        return list(self._submissions)

    # -- driving -------------------------------------------------------------------------------
    def task_id(self) -> str:
        return f"t{next(self._ids)}"

    def task_led_by(self, node_id: str, replicas: int | None = None) -> str:
        """A fresh task id whose first holder, by the last published ring, is ``node_id``."""
        while True:
            tid = self.task_id()
            if self.holders(tid, replicas)[0] == node_id:
                return tid

    def submit(self, via: str, task_id: str | None = None, **fields: Any) -> Submission:
        """Submit one task to ``via``'s intake, as the HTTP gateway does
        (``fields``: the wire form's: ``name``, ``countdown``, ``key``, ``replicas`` ...)."""
        handle = self.nodes[via]
        now = wall()
        wire = {"id": task_id or self.task_id(), "name": "job", **fields}
        task = task_from_wire(wire, now, handle.config)
        sub = Submission(task.id, via, fields)
        self._submissions.append(sub)
        handle.role.intake.submit(task, now, sub._acked)
        handle.wake()
        return sub

    def submit_accepted(self, via: str, task_id: str | None = None, *, wait: float = 30.0,
                        **fields: Any) -> Submission:
        """Submit as :meth:`submit` does and wait until it is accepted
        (:meth:`accepted`: a refusal ``unavailable`` is sent again), at most
        ``wait`` real seconds. ``fields`` are the task's, ``timeout`` (its
        lease) among them."""
        return self.accepted([self.submit(via, task_id, **fields)], wait)[0]

    def accepted(self, subs: list[Submission], timeout: float = 30.0) -> list[Submission]:
        """Wait for every answer to ``subs`` (made by :meth:`submit`), sending
        again each submit refused ``unavailable`` once its node coordinates
        again -- as a client resends such a refusal (nothing was stored).
        For a test whose fault is not the submit: a node refuses to
        coordinate for ``SUSPECT_AFTER_FREEZE`` after a freeze, and under a
        loaded machine the whole test process can stall past ``STALL`` (a
        full suite run with ``-n 4`` on 2 cores, 2026-12-07: "node n1 was
        frozen for 2.7s", 40 submits refused and never run). Returns the
        submissions in order, each accepted (or ``duplicate``): the ones sent
        again replace the refused. AssertionError on any other answer,
        Timeout after ``timeout`` real seconds in all."""
        final = self.answered(subs, timeout)
        wrong = [s.result for s in final if s.status not in ("accepted", "duplicate")]
        if wrong:
            raise AssertionError(f"{len(wrong)} submit(s) answered otherwise: {wrong[:5]}")
        return final

    def answered(self, subs: list[Submission], timeout: float = 30.0) -> list[Submission]:
        """As :meth:`accepted` (a refusal ``unavailable`` is sent again once
        its node coordinates), but any other answer stands: for a test that
        holds a copy back on purpose, so that its submit is answered
        ``rejected``/``not_enough_replicas`` with the task stored on the
        holders it reached. Returns the submissions in order, none of them
        refused ``unavailable``; Timeout after ``timeout`` real seconds in all."""
        deadline = monotonic() + timeout
        final = list(subs)
        while True:
            self.wait_until(lambda: all(s.status for s in final), timeout=max(deadline - monotonic(), 0.0),
                            what=f"the answers to {len(final)} submit(s)")
            refused = [i for i, s in enumerate(final) if s.error_code == "unavailable"]
            if not refused:
                break
            for i in refused:
                sub = final[i]
                self._until_coordinating(sub.via, deadline)
                final[i] = self.submit(sub.via, sub.task_id, **sub.fields)
        return final

    def _until_coordinating(self, node_id: str, deadline: float) -> None:
        """Until ``node_id`` coordinates submits again (Timeout at
        ``deadline``, monotonic). What holds it back after a freeze lasts on
        the clock (``SUSPECT_AFTER_FREEZE``; a reconcile's timeout), so the
        clock is advanced in short steps rather than waited out: the same
        time passes for the nodes, and a test whose process stalled waits
        milliseconds, not 5 s (7 such tests took 36 s of a suite run)."""
        role = self[node_id].role
        advanced = 0.0
        while role.not_coordinating() or role.reconcile.refusing():
            if monotonic() >= deadline:
                raise Timeout(f"{node_id} to coordinate submits again not reached in time{self._refused_note()}")
            if advanced < SUSPECT_ADVANCE:
                self.advance(SUSPECT_STEP)
                advanced += SUSPECT_STEP
            else:       # held back by something else (a fence, a reconcile waiting on messages): real time
                green.sleep(0.005)

    def worker(self, node_id: str, queues: list[str] | None = None, capacity: int = 100) -> InProcessWorker:
        """A consumer on ``node_id`` that takes tasks and finishes them when told."""
        handle = self.nodes[node_id]
        return InProcessWorker(handle.node, queues or ["default"], capacity)

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        """Yield to the nodes until ``predicate()`` is truthy; Timeout (naming
        ``what``) after ``timeout`` real seconds. A greenlet crash in a node or
        the network fails the wait at once."""
        deadline = monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            fatal = self._fatal()
            if fatal:
                raise AssertionError(f"while waiting for {what}: {fatal}")
            if monotonic() >= deadline:
                raise Timeout(f"{what} not reached within {timeout:g}s{self._refused_note()}")
            green.sleep(0.005)

    def _refused_note(self) -> str:
        """For a timeout's message: the submits refused ``unavailable``
        (nothing stored; after a freeze -- the whole test process stalled
        past ``STALL`` on a loaded machine -- or while reconciling) and not
        accepted since, which a test waiting for their tasks waits for in vain."""
        taken = {s.task_id for s in self._submissions if s.status in ("accepted", "duplicate")}
        refused = [s.task_id for s in self._submissions if s.error_code == "unavailable" and s.task_id not in taken]
        if not refused:
            return ""
        return (f" ({len(refused)} submit(s) refused unavailable, nothing stored: {refused[:10]}; "
                f"submit_accepted sends again)")

    def _fatal(self) -> str:
        for handle in [*self.nodes.values(), *self.stopped]:
            if handle.node.crashed is not None:
                return f"node {handle.id} stopped: {handle.node.crashed!r}"
        if self.net.supervisor.fatal is not None:
            name, exc = self.net.supervisor.fatal
            return f"the in-memory network's {name} died: {exc!r}"
        return ""

    def settle(self, seconds: float = 0.05) -> None:
        """Let the nodes run for ``seconds`` of real time (for a check that
        something does *not* happen, after the condition that would cause it)."""
        green.sleep(seconds)

    def advance(self, seconds: float, step: float = STALL * 0.8) -> None:
        """Let ``seconds`` pass on the process's clocks at once: in jumps of at
        most ``step`` (shorter than a freeze, ``STALL``), each followed by one
        pass of every node's housekeeping and of its cluster ticker (so none
        takes the jump for a freeze) and a look at its timers. Housekeeping
        is woken for that pass, its planned one now due by the clock: left
        to its next wake-up in real time (``HOUSEKEEPING_INTERVAL``), each
        jump waited up to 0.1 s for it (a test advancing five minutes a
        second at a time waited 30 s); so is the ticker, for its round (an
        idle one sleeps until its next stream heartbeat)."""
        step = min(step, STALL * 0.8)
        self._pass_now("every node's housekeeping before the first jump")
        left = seconds
        while left > 0:
            jump = min(step, left)
            clock.advance(jump)
            left -= jump
            self._pass_now("every node's housekeeping after a jump")

    def _pass_now(self, what: str) -> None:
        """Have every node's housekeeping and ticker pass now, and wait for
        it. Before the first jump too: an idle cluster node passes only every
        ``FREEZE_LOOK``, so its last pass may be a second old, and that
        second and a jump together read as a freeze (a full suite run,
        2026-12-07: "node n2 was frozen for 2.0s", its resend refused)."""
        after = monotonic()
        for handle in self.nodes.values():
            handle.node.clockwork.recheck_timers()
            handle.node.clockwork.recheck_housekeeping()
            handle.role.ticker.recheck()
        self.wait_until(lambda: all(h.node.core.dispatcher.alive_at >= after
                                    and (h.role.ticker.ticked >= after or h.role.stopped)
                                    for h in self.nodes.values()),
                        timeout=10 * HOUSEKEEPING_INTERVAL + 5, what=what)
