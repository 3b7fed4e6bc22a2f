"""The periodic schedules a node knows: who declared them, when, and what
ZooKeeper was told.

Rules (docs/periodic.md):

* a worker's READY declares schedules; a name not yet known counts against
  ``max_schedules`` (a READY past it is refused whole, nothing kept);
* the newest declaration of a name wins: a different spec replaces the one
  held (``declared`` is when that content was first declared) -- but with
  keys a schedule **belongs to the key that first declared it**: another
  key may declare the same spec (it keeps the schedule alive) but a READY
  that declares a different one is refused ``forbidden``, nothing kept, and
  one key owns at most ``MAX_SCHEDULES_PER_KEY`` schedules. Ownership ends
  when the schedule is forgotten. Without keys (owner None) there is no
  owner: nothing proves who a worker is, so any READY may change it;
* ``seen`` is refreshed while a declaring worker is connected -- one that
  declared an older version of the name counts too; a schedule not seen for
  ``spec_ttl`` seconds is forgotten;
* a version starts with its next tick: no tick at or before the moment its
  content was first declared (``declared``) is fired
  (:meth:`~miyaq.periodic.scheduler.PeriodicScheduler._consider`);
* in a cluster every node writes its declarations to ZooKeeper (new or
  changed at once, ``seen`` at most every ``SPEC_REFRESH`` s) and the
  leader merges the stored ones in (:meth:`ScheduleTable.merge`).

Constraints: :meth:`ScheduleTable.declare` never blocks (the READY handler
calls it); :meth:`ScheduleTable.publish` does ZooKeeper I/O and belongs to
the scheduler's greenlet.
"""
from __future__ import annotations

import logging

from collections.abc import Container
from typing import Protocol

from miyaq.constants import MAX_DECLARERS, MAX_SCHEDULES_PER_KEY, SPEC_REFRESH, SPEC_TTL
from miyaq.errors import Forbidden, InvalidField
from miyaq.protocol.periodic import MAX_SCHEDULES, Declared, Schedule

logger = logging.getLogger(__name__)



class SpecPublisher(Protocol):
    """Where declarations are shared with the other nodes (ZooKeeper in a cluster)."""

    def publish_spec(self, ours: Declared, refresh: float) -> Declared: ...


class Declaration:
    __slots__ = ("declared", "owner", "schedule", "seen", "synced", "wids")

    def __init__(self, schedule: Schedule, declared: float, seen: float, owner: str | None = None) -> None:
        self.schedule = schedule
        self.owner = owner                # the key that declared it (None: declared without keys)
        self.declared = declared          # when this content was first declared
        self.seen = seen                  # when a declaring worker was last connected
        self.wids: dict[str, None] = {}   # declaring workers (insertion-ordered, bounded)
        self.synced: tuple[Schedule, float] | None = None   # what ZooKeeper was last told


class ScheduleTable:
    def __init__(self, spec_ttl: float = SPEC_TTL, max_schedules: int = MAX_SCHEDULES,
                 max_per_owner: int = MAX_SCHEDULES_PER_KEY) -> None:
        self.spec_ttl = spec_ttl
        self.max_schedules = max_schedules
        self.max_per_owner = max_per_owner
        self.entries: dict[str, Declaration] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def declare(self, schedules: list[Schedule], wid: str, now: float, owner: str | None = None) -> list[str]:
        """Keep a worker's schedules (``owner``: the key it sent READY with);
        the names whose spec is new or changed. Nothing is kept when it
        raises: Forbidden when one changes a schedule another key owns,
        InvalidField when the new names pass the node's or the key's limit."""
        self._check(schedules, owner)
        changed = []
        for s in schedules:
            entry = self.entries.get(s.name)
            if entry is None or entry.schedule != s:
                replaced = entry
                entry = self.entries[s.name] = Declaration(s, now, now, owner)
                if replaced is not None:
                    logger.info("periodic schedule %s changed (declared by worker %s)", s.name, wid)
                    # The workers of the older version still declare the name: they
                    # keep it alive (before 2026-12-05 they were dropped, and a
                    # rollback's schedule was forgotten an hour after its newer
                    # version's workers stopped, its own still connected).
                    entry.wids = replaced.wids
                changed.append(s.name)
            elif entry.owner is None:
                entry.owner = owner       # declared before keys were on: the first key claims it
            entry.seen = now
            entry.wids.pop(wid, None)
            entry.wids[wid] = None
            if len(entry.wids) > MAX_DECLARERS:
                del entry.wids[next(iter(entry.wids))]
        return changed

    def _check(self, schedules: list[Schedule], owner: str | None) -> None:
        for s in schedules:
            entry = self.entries.get(s.name)
            if entry is not None and entry.schedule != s and entry.owner not in (None, owner):
                raise Forbidden(f"periodic schedule {s.name!r} belongs to key {entry.owner!r}: only its "
                                "workers may change it (this READY may declare it unchanged, or under another "
                                "name)", field="periodic")
        new = sum(1 for s in schedules if s.name not in self.entries)
        if not new:
            return
        if len(self.entries) + new > self.max_schedules:
            raise InvalidField(f"node holds {len(self.entries)} periodic schedules; the limit is "
                               f"{self.max_schedules}", field="periodic")
        if owner is not None:
            held = sum(1 for e in self.entries.values() if e.owner == owner)
            if held + new > self.max_per_owner:
                raise InvalidField(f"key {owner!r} owns {held} periodic schedules on this node; one key may "
                                   f"own at most {self.max_per_owner}", field="periodic")

    def sweep(self, now: float, connected: Container[str]) -> list[str]:
        """Refresh ``seen`` of schedules a connected worker (a wid in
        ``connected``) declares; forget and return the expired ones."""
        expired = []
        for name, entry in list(self.entries.items()):
            for wid in [w for w in entry.wids if w not in connected]:
                del entry.wids[wid]
            if entry.wids or entry.seen > now:   # later than now: seen by a clock since set back
                entry.seen = now
            elif now - entry.seen > self.spec_ttl:
                logger.info("periodic schedule %s: no worker declared it for %.0fs; forgotten",
                            name, now - entry.seen)
                del self.entries[name]
                expired.append(name)
        return expired

    def merge(self, stored: dict[str, Declared]) -> list[str]:
        """Merge specs read from the shared store (name -> Declared); the names whose spec changed."""
        changed = []
        for name, d in stored.items():
            entry = self.entries.get(name)
            if entry is None:
                if len(self.entries) >= self.max_schedules:
                    continue
                entry = self.entries[name] = Declaration(d.schedule, d.declared, d.seen, d.owner)
            elif entry.schedule == d.schedule:
                entry.seen = max(entry.seen, d.seen)
                entry.owner = entry.owner or d.owner
                continue
            elif d.declared > entry.declared or d.owner not in (None, entry.owner):
                # The shared store settles ownership (publish_spec refuses another key's change).
                entry.schedule, entry.declared, entry.seen = d.schedule, d.declared, max(entry.seen, d.seen)
                entry.owner = d.owner
            else:
                continue
            entry.synced = (d.schedule, d.seen)
            changed.append(name)
        return changed

    def publish(self, shared: SpecPublisher) -> None:
        """Tell the shared store of new, changed or long-unrefreshed declarations."""
        for entry in list(self.entries.values()):
            synced = entry.synced
            if synced is None or synced[0] != entry.schedule or entry.seen - synced[1] >= SPEC_REFRESH:
                shared.publish_spec(Declared(entry.schedule, entry.declared, entry.seen, entry.owner),
                                    SPEC_REFRESH)
                entry.synced = (entry.schedule, entry.seen)
