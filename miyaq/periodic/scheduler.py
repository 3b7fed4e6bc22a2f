"""Periodic (cron) schedules: declared by workers, fired by the leader only.

How it works (docs/periodic.md has the user's view):

* **Declared by workers.** ``@app.periodic(...)`` registers a handler and a
  schedule; the worker sends its schedules in READY (``periodic``), the node
  validates them (a bad one refuses the READY with INVALID_FIELD naming the
  schedule) and keeps them (:mod:`miyaq.periodic.specs`): at most
  ``MAX_SCHEDULES`` names, the newest declaration of a name wins. In a
  cluster every node also writes them to
  ZooKeeper (:mod:`miyaq.cluster.periodic_store`), so a new leader that no
  worker has reached yet still fires them.
* **Fired by the leader.** Only while ``role.is_leader`` holds (checked
  before every action, so firing stops at once when leadership is lost);
  each term is fenced by the epoch its leader listener gave. A standalone
  node is always its own leader.
* **Once per tick.** The task of a tick has the id
  ``periodic-<name>-<tick>``: two leaders firing one tick make one task
  (submits are idempotent by id). The task goes through an intake of our
  own (``role.new_intake``) — in a cluster it is replicated to its holders
  like any submit — whose acknowledgements come back here; a rejected tick
  is submitted again (same id) after ``TICK_RETRY``.
* **Ticks may expire.** A schedule's ``ttl`` is its ticks' (the SUBMIT
  map of :meth:`Schedule.task_wire`): a tick no worker started within it
  expires as any task does, so ticks do not pile up while no worker serves
  the queue. Without one they wait however long.
* **Resumed by a new leader.** The last tick handled is stored once the tick
  is accepted (cluster: a znode written compare-and-set with the leader's
  epoch; standalone: memory). A new leader starts from it. **No catch-up
  storms**: of the ticks missed while no leader fired, only the most recent
  fires. A schedule never handled before starts with its next tick.
* **Forgotten when undeclared.** A schedule no connected worker has
  declared for ``SPEC_TTL`` seconds stops firing and is deleted.

Constraints: one greenlet (``_loop``, restarted if it dies) does all I/O
(shared-store calls block it for at most their timeout and raise MiyaqError
when the store is unreachable); :meth:`declare` and the listeners never block.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from miyaq.config import NodeConfig
from miyaq.constants import NO_NEXT_TICK_MS, SCHEDULER_WAKE, SPEC_HOUSEKEEPING, SPEC_RELOAD, TICK_RETRY
from miyaq.core.engine import Engine
from miyaq.core.handles import Intake, NodeRole
from miyaq.core.workers import WorkerRegistry
from miyaq.errors import MiyaqError
from miyaq.logs import LogLimiter
from miyaq.constants import SPEC_TTL
from miyaq.periodic.specs import ScheduleTable, SpecPublisher
from miyaq.protocol.commands import ACCEPTED, DUPLICATE
from miyaq.protocol.periodic import MAX_SCHEDULES, Declared, KnownSchedule, Schedule, tick_label
from miyaq.protocol.taskspec import task_from_wire
from miyaq.runtime import RESTART, Supervisor, green, wall

logger = logging.getLogger(__name__)

#: Lines a minute saying a tick was held back, for all schedules (the rest counted).
_held_log = LogLimiter(logger, burst=5)
IDENTITY = b"\x00periodic"   # the "client" of internal submits; its acks come back to _acked


class TickStore(Protocol):
    """Where the leader keeps each schedule's last handled tick."""

    def load_last(self, name: str) -> int | None: ...
    def save_last(self, name: str, tick: int, epoch: int, leader: str) -> bool: ...
    def forget(self, name: str) -> None: ...


class SharedStore(TickStore, SpecPublisher, Protocol):
    """Ticks and declarations shared by every node of a cluster
    (:class:`miyaq.cluster.periodic_store.ZkPeriodicStore`)."""

    def read_specs(self) -> dict[str, Declared]: ...


#: Gives the shared store once it can be reached (None until then).
SharedSource = Callable[[], SharedStore | None]


class MemoryTicks:
    """A standalone node's last ticks: memory only (a restart starts afresh)."""

    def __init__(self) -> None:
        self.ticks: dict[str, int] = {}

    def load_last(self, name: str) -> int | None:
        return self.ticks.get(name)

    def save_last(self, name: str, tick: int, epoch: int, leader: str) -> bool:
        self.ticks[name] = tick
        return True

    def forget(self, name: str) -> None:
        self.ticks.pop(name, None)


class PeriodicScheduler:
    """A part of the node. ``shared`` gives the cluster's shared store (None:
    ticks live in memory and declarations stay on this node)."""

    name = "periodic"

    def __init__(self, config: NodeConfig, engine: Engine, workers: WorkerRegistry, role: NodeRole,
                 supervisor: Supervisor, *, shared: SharedSource | None = None,
                 spec_ttl: float = SPEC_TTL, max_schedules: int = MAX_SCHEDULES,
                 wake: Callable[[float], None] | None = None) -> None:
        self.config = config
        self.engine = engine
        self.workers = workers
        self.role = role
        self.supervisor = supervisor
        self.specs = ScheduleTable(spec_ttl, max_schedules)
        self.ticks: TickStore = MemoryTicks()
        self._shared_source = shared
        self.shared: SharedStore | None = None    # once the cluster's store is reachable
        self.epoch: int | None = None             # our term's epoch while leader, else None
        self._new_term = False
        self.last: dict[str, int] = {}            # last tick handled, per schedule (this term)
        self.sent: dict[str, int] = {}            # last tick submitted, per schedule (this term)
        self.next_at: dict[str, int] = {}         # when to look at a schedule again (ms)
        self.pending: dict[str, tuple[str, int]] = {}   # task id -> (schedule, tick)
        self.confirmed: list[tuple[str, int]] = []
        self.fired = self.already = self.rejected = self.missed = self.held_back = 0
        self._intake: Intake = role.new_intake(self._acked)
        # The node's after-burst step (Clockwork.wake), run once a step that
        # submitted something: a tick's task, ready on a standalone node
        # once stored, is leased now, not at the node's next pass.
        self._wake_node = wake
        self.submits = 0                           # tick tasks submitted (each try)
        self._wake = green.Event()
        self._last_reload = self._last_housekeeping = 0.0
        self._now = 0.0                            # the clock of the current (or last) step

    def declare(self, schedules: list[Schedule], wid: str, now: float, owner: str | None = None) -> None:
        """A worker's READY declares ``schedules`` with key ``owner`` (None
        without keys; see ScheduleTable.declare). Never blocks."""
        for name in self.specs.declare(schedules, wid, now, owner):
            self.next_at.pop(name, None)
        if schedules:
            self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Before the role starts, so the first leadership notice is heard."""
        self.role.add_leader_listener(self._on_leadership)

    def start(self) -> None:
        self.supervisor.spawn("periodic scheduler", self._loop, policy=RESTART)

    def stop(self) -> None:
        self.epoch = None

    def kill(self) -> None:
        self.epoch = None

    def _on_leadership(self, is_leader: bool, epoch: int) -> None:
        """Coordinator listener: must not block."""
        self.epoch, self._new_term = (epoch, True) if is_leader else (None, False)
        self._wake.set()

    def leading(self) -> bool:
        if self.epoch is None or not self.engine.accepting:
            return False
        return self.role.is_leader

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        delay: float | None = SCHEDULER_WAKE
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            try:
                submits = self.submits
                self._step(wall())
                if self.submits != submits and self._wake_node is not None:
                    self._wake_node(wall())
                delay = self._delay(wall())
            except MiyaqError as exc:   # the shared store is unavailable or contended
                logger.warning("periodic schedules: %s; retrying", getattr(exc, "message", exc) or exc)
                delay = TICK_RETRY

    def _step(self, now: float) -> None:
        if now < self._now:
            self._clock_set_back(now)
        self._now = now
        self._intake.sweep()
        if self.shared is None and self._shared_source is not None:
            self._connect_store()
        if now - self._last_housekeeping >= SPEC_HOUSEKEEPING:
            self._housekeeping(now)
        if self.leading():
            if self._new_term:
                self._begin_term(now)
            elif self.shared is not None and now - self._last_reload >= SPEC_RELOAD:
                self._reload(now)
            self._save_confirmed()
            for name, entry in list(self.specs.entries.items()):
                if not self.leading():
                    break
                self._consider(name, entry.schedule, entry.declared, now)
        if self.shared is not None:
            self.specs.publish(self.shared)

    def _clock_set_back(self, now: float) -> None:
        """The wall clock went back (an NTP step, an operator's fix): when to
        look at each schedule again, and when housekeeping and the reload are
        due, were computed from the later time -- look at them all now."""
        logger.warning("periodic: the clock went back %.1fs; looking at every schedule again", self._now - now)
        self.next_at.clear()
        self._last_housekeeping = self._last_reload = 0.0

    def _delay(self, now: float) -> float | None:
        """Seconds until the loop looks again; None: only when woken -- a
        standalone node with no schedule and no tick in flight has nothing
        to look at until a worker declares one (:meth:`declare` wakes the
        loop). Before 2026-12-06 such a node woke every ``SCHEDULER_WAKE``
        for nothing."""
        if self._shared_source is None and not self.specs.entries and not self.pending and not self.confirmed:
            return None
        if not self.leading() or not self.next_at:
            return SCHEDULER_WAKE
        soonest = min(self.next_at.values()) / 1000 - now
        return min(max(soonest, 0.005), SCHEDULER_WAKE)

    # -- the leader ----------------------------------------------------------------------------
    def _begin_term(self, now: float) -> None:
        self._new_term = False
        self.last.clear()
        self.sent.clear()
        self.next_at.clear()
        if self.shared is not None:
            self._reload(now)
        logger.info("periodic: firing %d schedule(s) as leader (epoch %s)", len(self.specs), self.epoch)

    def _consider(self, name: str, s: Schedule, declared: float, now: float) -> None:
        """Fire the schedule's latest due tick unless it was handled or is in
        flight, or is at or before ``declared`` (when this version of the
        schedule was first declared: a changed schedule starts with its next
        tick, as a new one does -- the last tick handled may be the older
        version's, and before 2026-12-05 the new version's tick just past
        fired at once, and a shorter period counted as missed ticks)."""
        now_ms = int(now * 1000)
        if self.next_at.get(name, 0) > now_ms:
            return
        if name not in self.last:
            stored = self.ticks.load_last(name)
            if stored is None:   # a new schedule starts with its next tick
                stored = s.latest_tick(now)
                if stored is None:
                    self.next_at[name] = now_ms + NO_NEXT_TICK_MS
                    return
                if not self._save(name, stored):
                    return
            self.last[name] = stored
        done = max(self.last[name], self.sent.get(name, -1))
        if declared <= now:           # (a declaration from a clock since set back sets no floor)
            floor = s.latest_tick(declared)
            if floor is not None and floor > done:
                done = floor
        due = s.latest_tick(now)
        if due is not None and _tick_between(s, due, done):
            # The tick handled last is more than a period ahead of our clock: it
            # was fired while a clock (ours, or a former leader's) ran ahead, since
            # set back. Waiting for it would stop the schedule until real time
            # reaches it (a day, a year): carry on from now instead.
            logger.warning("periodic schedule %s: its last tick %s is ahead of the clock (%s); firing from the "
                           "next tick after now", name, tick_label(done), tick_label(due))
            self.last[name] = done = due
            self.sent.pop(name, None)
        if due is not None and due > done:
            if self.workers.task_names.runs_nowhere(s.queue, s.task):
                self._hold_back(s, due, now)
                return
            following = s.next_tick(done)
            if following is not None and following < due:
                self.missed += 1
                logger.warning("periodic schedule %s: ticks after %s were missed (no leader fired them); "
                               "firing only the latest, %s", name, tick_label(done), tick_label(due))
            self._fire(s, due, now)
            return
        nxt = s.next_tick(done)
        self.next_at[name] = nxt if nxt is not None else now_ms + NO_NEXT_TICK_MS

    def _fire(self, s: Schedule, tick: int, now: float) -> None:
        """Submit the tick's task; look again at the next tick (or, if it is refused, sooner)."""
        nxt = s.next_tick(tick)
        self.next_at[s.name] = nxt if nxt is not None else int(now * 1000) + NO_NEXT_TICK_MS
        try:
            task = task_from_wire(s.task_wire(tick), now, self.config)
        except MiyaqError as err:
            logger.error("periodic schedule %s cannot make its task: %s", s.name, err.message)
            return
        self.pending[task.id] = (s.name, tick)
        self.sent[s.name] = tick
        self.submits += 1
        self._intake.submit(task, now, IDENTITY)
        self._intake.flush()

    def _hold_back(self, s: Schedule, tick: int, now: float) -> None:
        """Do not fire ``tick``: the workers of the schedule's queue all run
        other tasks (the schedule's own workers gone, another app's serving
        the queue), so its task would fail ``UnknownTask`` at every attempt
        and be dead-lettered -- a dead letter a tick for the hour a schedule
        outlives its workers (before 2026-12-07). Counted ``held_back``;
        the next tick fires if a worker that runs the task is back, and a
        queue with no worker at all still gets its ticks (they wait there)."""
        self.held_back += 1
        self.sent[s.name] = tick
        nxt = s.next_tick(tick)
        self.next_at[s.name] = nxt if nxt is not None else int(now * 1000) + NO_NEXT_TICK_MS
        _held_log.warning("held back", "periodic schedule %s: tick %s not fired: the workers of queue "
                          "%s do not run task %s (it would be dead-lettered UnknownTask); its next tick fires "
                          "once a worker that runs it is registered", s.name, tick_label(tick), s.queue, s.task)

    def _acked(self, identity: bytes, result: list[Any]) -> None:
        """The intake's answer for one of our submits (never blocks)."""
        task_id, status, detail = result
        found = self.pending.pop(task_id, None)
        if found is None:
            return
        name, tick = found
        if status in (ACCEPTED, DUPLICATE):
            if status == ACCEPTED:
                self.fired += 1
            else:
                self.already += 1   # another leader (or an earlier try) fired this tick
            self.confirmed.append(found)
            self._wake.set()
            return
        self.rejected += 1
        message = detail.get("message") if isinstance(detail, dict) else detail
        logger.warning("periodic schedule %s: tick %s not accepted (%s); trying again",
                       name, tick_label(tick), message)
        if self.sent.get(name) == tick:
            del self.sent[name]
        self.next_at[name] = int((self._now + TICK_RETRY) * 1000)

    def _save_confirmed(self) -> None:
        confirmed, self.confirmed = self.confirmed, []
        for name, tick in confirmed:
            if name in self.last and tick > self.last[name]:
                if not self._save(name, tick):
                    return
                self.last[name] = tick

    def _save(self, name: str, tick: int) -> bool:
        assert self.epoch is not None
        if self.ticks.save_last(name, tick, self.epoch, self.config.id):
            return True
        logger.warning("periodic: a newer leader stores the ticks of %s; not firing until elected again", name)
        self.epoch = None
        return False

    # -- declarations: liveness and ZooKeeper ---------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        self._last_housekeeping = now
        for name in self.specs.sweep(now, self.workers.by_wid):
            for table in (self.last, self.sent, self.next_at):
                table.pop(name, None)
            if self.leading():
                self.ticks.forget(name)

    def _connect_store(self) -> None:
        assert self._shared_source is not None
        store = self._shared_source()
        if store is not None:
            self.shared = self.ticks = store

    def _reload(self, now: float) -> None:
        """Merge the specs in the shared store (newest declaration wins; ``seen`` is the latest)."""
        assert self.shared is not None
        self._last_reload = now
        for name in self.specs.merge(self.shared.read_specs()):
            self.next_at.pop(name, None)

    # -- views ----------------------------------------------------------------------------------
    def known(self) -> list[KnownSchedule]:
        """Every schedule this node knows, by name, with the last tick it handled as leader."""
        return [KnownSchedule(e.schedule, e.declared, e.seen, len(e.wids), self.last.get(name))
                for name, e in sorted(self.specs.entries.items())]

    def stats(self) -> dict[str, Any]:
        return {"schedules": len(self.specs), "leading": self.leading(), "epoch": self.epoch, "fired": self.fired,
                "already_fired": self.already, "rejected": self.rejected, "missed": self.missed,
                "held_back": self.held_back}


def _tick_between(s: Schedule, earlier: int, later: int) -> bool:
    """True when a tick of ``s`` lies strictly between ``earlier`` and ``later`` (ms)."""
    following = s.next_tick(earlier)
    return following is not None and following < later
