"""The core's greenlets, and what runs after every burst of work.

* the service socket's reader (:meth:`ServiceEndpoint.serve`) -- critical;
* the timer loop: fires due timers (etas, leases, expiries) and dispatches --
  critical: a node whose timers stopped would hold tasks forever. A pass
  fires at most ``TIMER_BATCH`` timers; while more are due it lets the
  other greenlets run (one hub iteration, I/O included) before the next;
* housekeeping: long-poll deadlines, worker heartbeats and liveness (every
  ``heartbeat``), tombstone sweeps (every ``TOMBSTONE_SWEEP``), freeze
  detection -- restarted if it dies. A node passes only when one of those
  is due, so an idle one wakes about once a second, not ten times; a
  cluster node, which watches for freezes, passes at least every
  ``FREEZE_LOOK`` besides (:meth:`Clockwork._next_pass`).
  A long-poll due before its next pass wakes it then
  (:meth:`Clockwork.waiter_due`), so a RESULT or RECEIVE is answered at its
  deadline, not at the next pass.

After each burst on the service socket (and on :meth:`Clockwork.wake`, for
work that arrived another way) the dispatcher runs, then the role sends what
the burst produced (replication, events); the timer loop and housekeeping
flush the role after they dispatch too, so a task's STARTED event (which
tells the other holders who runs it) always leaves in the same pass that
leased it.
"""
from __future__ import annotations

import logging
import math

from miyaq.constants import HOUSEKEEPING_INTERVAL, STALL
from miyaq.constants import TOMBSTONE_SWEEP
from miyaq.core.core import Core
from miyaq.core.handles import NodeRole
from miyaq.runtime import CRITICAL, RESTART, Supervisor, green, monotonic, wall
from miyaq.runtime.heap import AllocatorTrim

logger = logging.getLogger(__name__)



FREEZE_LOOK = STALL / 2
"""A node that watches for freezes (a cluster node) passes at least this
often, whatever else is due: a gap of more than ``STALL`` between two
passes is how it knows it was frozen, and the dispatcher and ``/healthz``
take a last pass older than ``STALL`` for a freeze not noticed yet, so the
passes of a node merely idle must stay well within it. Half of ``STALL``
leaves a pass a second of lateness (a busy hub, a host short of CPU) before
it reads as a freeze; a freeze of more than ``STALL`` is always seen, and
one of between ``FREEZE_LOOK`` and ``STALL`` may be (a gap counts from the
last pass). Before 2026-12-07 a cluster node passed every
``HOUSEKEEPING_INTERVAL``, ten times a second idle."""

IDLE_TIMER_HORIZON = 2 * TOMBSTONE_SWEEP
"""A timer loop with no timer armed sleeps until one is armed that is due
within this many seconds: housekeeping passes at least every
``TOMBSTONE_SWEEP`` and looks (:meth:`Clockwork.after_burst`), so a timer due
later is found in time. A wake for every timer armed cost a lone task one
wake of the loop (its lease, armed and disarmed with it): confirmed submits
and ``call()`` 0.65x as many a second, 2026-12-06."""


class Clockwork:
    name = "core"

    def __init__(self, core: Core, role: NodeRole, supervisor: Supervisor) -> None:
        self.core = core
        self.role = role
        self.supervisor = supervisor
        self._timer_wake = green.Event()
        self._timer_at = 0.0
        self._housekeeping_wake = green.Event()
        self._housekeeping_at = 0.0       # monotonic: the next planned housekeeping pass
        self._pass_asked = False          # a pass now, whatever is due (recheck_housekeeping)
        self.passes = 0                   # housekeeping passes run (planned ones; not long-poll sweeps)
        self.timer_passes = 0             # passes of the timer loop
        # Gives the memory back once the store let go of a lot (swept
        # tombstones, a drained burst): miyaq.runtime.heap.
        self.allocator = AllocatorTrim()
        core.waiters.on_earliest = self.waiter_due
        core.endpoint.after_burst.append(self.after_burst)
        # Work from other nodes is acted on in the same way, at once: a copy a
        # REPLICATE made ready is leased to a waiting worker, the SUBMITTED
        # replies the replication answers complete leave, a timer due sooner
        # than the timer loop's next wake-up is seen. Before, all that waited
        # for the node's next client or worker message or its housekeeping
        # tick (docs/cluster.md, "Acting on a peer's message at once").
        role.after_peer_work(self._after_peer_work)

    # -- lifecycle ----------------------------------------------------------------
    def setup(self) -> None:
        """Nothing to prepare: the service socket is bound when the core is built."""

    def start(self) -> None:
        spawn = self.supervisor.spawn
        reader, timers, housekeeping = self.GREENLETS
        spawn(reader, self.core.endpoint.serve, policy=CRITICAL)
        spawn(timers, self._timer_loop, policy=CRITICAL)
        spawn(housekeeping, self._housekeeping, policy=RESTART)

    #: This part's greenlets (spawned by :meth:`start`, killed by :meth:`stop`).
    GREENLETS = ("service reader", "timer loop", "housekeeping")

    def stop(self) -> None:
        """Stop handling anything: the service socket is no longer read, timers
        no longer fire. The node drained first (:meth:`Core.drain`); this
        part stops before the log closes (parts stop in reverse order), so
        nothing answered from here on can miss the log. Before 2026-12-05 the
        reader went on until every part had stopped: a CANCEL, a worker's
        DONE, a dead-letter retry answered during the log's last fsync was
        acknowledged and never written, and a restart undid it."""
        for name in self.GREENLETS:
            self.supervisor.kill_part(name)

    def kill(self) -> None:
        try:
            self.core.endpoint.close()
        except Exception:
            logger.exception("closing the service socket failed")

    # -- after work ----------------------------------------------------------------
    def wake(self, now: float) -> None:
        """Work arrived outside the service socket (HTTP, timers): acknowledge,
        dispatch and replicate it now, and re-check the next timer."""
        self.core.endpoint.flush_acks()
        self.after_burst(now)

    def _after_peer_work(self) -> None:
        self.wake(wall())

    def recheck_timers(self) -> None:
        """Let the timer loop look at the clock now rather than at its next
        planned wake-up (the clock moved on: a test advanced it)."""
        self._timer_wake.set()

    def recheck_housekeeping(self) -> None:
        """Let housekeeping look at the clock now rather than at its next
        planned pass (a test advanced the clock): it passes if that made the
        pass due, and sleeps on otherwise. A node that watches for freezes
        passes now whatever is due: the jump counts in the gap to its next
        pass, which would read as a freeze after a few more."""
        if self.role.freeze_sensitive:
            self._pass_asked = True
        self._housekeeping_wake.set()

    def waiter_due(self, deadline: float) -> None:
        """A long-poll parked with the earliest deadline (``monotonic``): if
        that is before housekeeping's next pass, wake it then. Before
        2026-12-05 the deadline waited for the pass, up to 0.1 s later:
        ``call(timeout=0.01)`` took 101 ms, ``timeout=0.2`` up to 304 ms."""
        if deadline < self._housekeeping_at:
            self._housekeeping_at = deadline
            self._housekeeping_wake.set()

    def after_burst(self, now: float) -> None:
        core = self.core
        core.dispatcher.pump(now)
        self.role.flush()
        nxt = core.engine.timers.next_due()
        if nxt is not None and nxt < self._timer_at and (self._timer_at != math.inf or nxt <= now + IDLE_TIMER_HORIZON):
            self._timer_wake.set()

    # -- loops -------------------------------------------------------------------------
    def _timer_loop(self) -> None:
        engine, dispatcher = self.core.engine, self.core.dispatcher
        while True:
            now = wall()
            self.timer_passes += 1
            nxt = engine.fire_due(now)
            dispatcher.pump(now)
            self.role.flush()      # a STARTED event leaves with the lease (other holders learn who runs it)
            if nxt is None:
                # No timer armed: sleep until one is due within
                # IDLE_TIMER_HORIZON. Whoever arms one -- a burst, a wake,
                # housekeeping's pass, at least every TOMBSTONE_SWEEP -- then
                # wakes the loop (after_burst); a timer due later (a lease
                # armed and disarmed with each task one at a time) does not,
                # until a pass finds it within the horizon. Before 2026-12-06
                # the loop woke every second anyway, on an idle node too; a
                # timer armed is still looked at every second at least once
                # the loop has it (below), and a wall-clock step forward
                # makes it due at housekeeping's next pass.
                self._timer_at = math.inf
                self._timer_wake.clear()
                self._timer_wake.wait()
                continue
            self._timer_at = nxt
            self._timer_wake.clear()
            delay = min(max(0.0, self._timer_at - wall()), 1.0)
            if delay > 0:
                self._timer_wake.wait(delay)
            else:
                # More are due (a pass fires at most TIMER_BATCH): the readers,
                # heartbeats and housekeeping run before the next pass. Before
                # 2026-12-05 the passes ran back to back: 600,000 tasks due at
                # once held the node for seconds, past a worker's liveness and
                # past STALL (a cluster node took itself for frozen).
                green.let_others_run()

    def _next_pass(self, last: float, next_beat: float, next_sweep: float) -> float:
        """When housekeeping's next planned pass is due (``monotonic``), its
        last one having begun at ``last``: when the next of its own
        deadlines comes -- the workers' heartbeat tick or the tombstone
        sweep; long-poll deadlines wake it on their own (:meth:`waiter_due`)
        -- and never sooner than ``HOUSEKEEPING_INTERVAL`` after the last
        pass (a ``heartbeat`` below it is kept at it, as before). A node that
        watches for freezes (a cluster node) passes at least every
        ``FREEZE_LOOK`` besides: freeze detection counts a gap between
        passes longer than ``STALL`` as a freeze, and passes that came only
        when work was due would make an idle node's gaps look like one.
        Timers (etas, leases, expiries) are the timer loop's, not
        housekeeping's."""
        due = min(next_beat, next_sweep)
        if self.role.freeze_sensitive:
            due = min(due, last + FREEZE_LOOK)
        return max(last + HOUSEKEEPING_INTERVAL, due)

    def _housekeeping(self) -> None:
        core = self.core
        next_beat = next_sweep = 0.0        # both due at the first pass
        last = monotonic()
        wake = self._housekeeping_wake
        while True:
            planned = self._next_pass(last, next_beat, next_sweep)
            head = core.waiters.next_deadline()
            self._housekeeping_at = planned if head is None else min(planned, head)
            while True:
                wake.clear()
                if self._pass_asked:
                    self._pass_asked = False
                    planned = self._housekeeping_at = monotonic()
                until = self._housekeeping_at
                left = until - monotonic()
                if left > 0:
                    # Woken (a long-poll due sooner was parked, a test moved the
                    # clock), or the wait ended -- perhaps a little early by
                    # this clock: look again.
                    wake.wait(left)
                    continue
                if until >= planned:
                    break               # the planned pass
                # Long-polls due before the pass: answered at their deadline.
                core.waiters.sweep(monotonic())
                head = core.waiters.next_deadline()
                self._housekeeping_at = planned if head is None else min(planned, head)
            mono, now = monotonic(), wall()
            self.passes += 1
            if self.role.freeze_sensitive:
                if mono - last > STALL:
                    self.role.stalled(mono - last)
                core.dispatcher.alive_at = mono
            last = mono
            core.waiters.sweep(mono)
            if mono >= next_beat:
                next_beat = mono + self.core.config.heartbeat
                core.workers.tick(now)
            if mono >= next_sweep:
                next_sweep = mono + TOMBSTONE_SWEEP
                core.engine.table.sweep(now)
                core.engine.table.mind_the_collector()
                self.allocator.observe(core.engine.table.approximate_bytes(), mono)
                core.engine.compact_lanes()
            # Dispatch and flush, and wake the timer loop for a timer armed
            # outside a burst (a worker dropped above: its tasks' retries).
            self.after_burst(now)
