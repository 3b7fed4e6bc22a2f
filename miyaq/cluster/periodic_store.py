"""Periodic schedules in ZooKeeper: each schedule's last tick, and the specs.

Layout under ``/miyaq/<cluster>/``:

``periodic/<name>``
    Persistent; ``{"tick": ms, "epoch": int, "leader": node_id}``: the last
    tick the leader handled (fired, or skipped as the first tick of a new
    schedule). Written only by the leader, compare-and-set on the znode's
    version, and never over a record of a newer leader (a higher epoch):
    a deposed leader that still believes it leads cannot move it.
``periodic-specs/<name>``
    Persistent; ``{"spec": {...}, "declared": t, "seen": t, "owner": key}``:
    the schedule as a worker declared it (READY form, ``body`` in base64),
    when that content was first declared, when a worker declaring it was
    last connected to some node, and the key that owns it (absent without
    keys). Any node may write it (read, merge, CAS): a different spec
    replaces the stored one only if it was declared later ("newest spec per
    name wins") and, when the stored one has an owner, by the same key
    (the store settles ownership between nodes); an equal one only
    refreshes ``seen``.
    A new leader reads these, so it fires schedules before any worker
    connects to it.

Constraints: every call blocks the calling greenlet, bounded by
``timeout`` (``Unavailable`` past it, or on any ZooKeeper error); call from
one greenlet, never from a kazoo callback. Corrupt znodes are logged and
skipped, never fatal. It is the shared store of
:class:`miyaq.periodic.scheduler.PeriodicScheduler` in a ZooKeeper cluster.
"""
from __future__ import annotations

import base64
import functools
import logging
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError

from miyaq.cluster.zk_layout import Layout, dump_json, load_json
from miyaq.cluster.zk_store import ZnodeStore
from miyaq.constants import CAS_TRIES
from miyaq.errors import MiyaqError, Unavailable
from miyaq.protocol.periodic import MAX_SCHEDULES, Declared, check_name, schedule_from_wire

logger = logging.getLogger(__name__)


P = ParamSpec("P")
R = TypeVar("R")


def _zk_errors(fn: Callable[Concatenate["ZkPeriodicStore", P], R]) -> Callable[Concatenate["ZkPeriodicStore", P], R]:
    """Report any kazoo error as ``Unavailable``: callers handle MiyaqError only."""
    @functools.wraps(fn)
    def guarded(self: ZkPeriodicStore, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(self, *args, **kwargs)
        except KazooException as exc:
            raise Unavailable(f"ZooKeeper at {self.hosts}: {type(exc).__name__}: {exc}", hosts=self.hosts) from None
    return guarded


class ZkPeriodicStore:
    def __init__(self, zk: KazooClient, cluster: str, hosts: str, timeout: float = 5.0) -> None:
        layout = Layout(cluster)
        self.hosts = hosts
        self.store = ZnodeStore(zk, layout, hosts, timeout)
        self.zk = zk
        self.ticks = f"{layout.base}/periodic"
        self.specs = f"{layout.base}/periodic-specs"
        self._known: dict[str, tuple[int, int | None]] = {}   # name -> (stored epoch, znode version)
        # name -> ((czxid, mzxid) of the znode read, what it decoded to): the
        # leader reads the specs every SPEC_RELOAD; only changed ones are fetched.
        self._read: dict[str, tuple[tuple[int, int], Declared | None]] = {}

    # -- last ticks (leader only) ------------------------------------------------------
    @_zk_errors
    def load_last(self, name: str) -> int | None:
        """The stored last tick of ``name`` (None: never handled). Remembers the version."""
        tick, epoch, version = self._read_tick(name)
        self._known[name] = (epoch, version)
        return tick

    @_zk_errors
    def save_last(self, name: str, tick: int, epoch: int, leader: str) -> bool:
        """Store ``tick`` as handled, fenced by ``epoch``. False when a leader
        of a newer epoch owns the record: the caller is no longer leader."""
        payload = dump_json({"tick": tick, "epoch": epoch, "leader": leader})
        path = f"{self.ticks}/{check_name(name)}"
        for _ in range(CAS_TRIES):
            if name not in self._known:
                self.load_last(name)
            stored_epoch, version = self._known[name]
            if stored_epoch > epoch:
                return False
            try:
                if version is None:
                    self.store.call(self.zk.create_async(path, payload, makepath=True))
                    self._known[name] = (epoch, 0)
                else:
                    stat = self.store.call(self.zk.set_async(path, payload, version=version))
                    self._known[name] = (epoch, stat.version)
                return True
            except (BadVersionError, NodeExistsError, NoNodeError):
                stored, stored_epoch, version = self._read_tick(name)
                self._known[name] = (stored_epoch, version)
                if stored_epoch <= epoch and stored is not None and stored >= tick:
                    return True
        raise MiyaqError(f"could not store the last tick of schedule {name}: too many concurrent writers")

    def _read_tick(self, name: str) -> tuple[int | None, int, int | None]:
        """(tick, epoch, version) of ``name``'s record; (None, 0, None) when absent."""
        try:
            data, stat = self.store.call(self.zk.get_async(f"{self.ticks}/{check_name(name)}"))
        except NoNodeError:
            return None, 0, None
        try:
            raw = load_json(data, f"periodic tick znode {name}")
            tick, epoch = raw["tick"], raw["epoch"]
            if not (isinstance(tick, int) and isinstance(epoch, int)):
                raise TypeError("tick and epoch must be integers")
        except (MiyaqError, KeyError, TypeError) as exc:
            logger.warning("periodic tick znode of %s is corrupt (%s); it will be overwritten", name, exc)
            return None, 0, stat.version
        return tick, epoch, stat.version

    # -- specs (any node) ----------------------------------------------------------------
    @_zk_errors
    def read_specs(self) -> dict[str, Declared]:
        """Every stored spec (at most MAX_SCHEDULES, newest declared first).

        Asks each znode's stat first and fetches only the specs created or
        changed since this store last read them (by ``czxid``/``mzxid``):
        the leader reads every ``SPEC_RELOAD`` seconds, and at the limits
        (1,000 schedules with arguments of ``max_payload``) fetching and
        decoding all of them each time moved about 87 MB a read. A corrupt
        znode is logged when it is read, not again until it changes."""
        try:
            names = self.store.call(self.zk.get_children_async(self.specs))
        except NoNodeError:
            self._read.clear()
            return {}
        stats = [(n, self.zk.exists_async(f"{self.specs}/{n}")) for n in names]
        known: dict[str, tuple[tuple[int, int], Declared | None]] = {}
        changed: list[str] = []
        for name, result in stats:
            stat = self.store.call(result)
            if stat is None:
                continue        # deleted since the listing
            cached = self._read.get(name)
            if cached is not None and cached[0] == (stat.czxid, stat.mzxid):
                known[name] = cached
            else:
                changed.append(name)
        for name, result in [(n, self.zk.get_async(f"{self.specs}/{n}")) for n in changed]:
            try:
                data, stat = self.store.call(result)
            except NoNodeError:
                continue
            known[name] = ((stat.czxid, stat.mzxid), self._decode_spec(name, data))
        self._read = known      # only the names listed now: bounded by what is stored
        out = {name: found for name, (_, found) in known.items() if found is not None}
        if len(out) > MAX_SCHEDULES:
            logger.warning("%d periodic specs stored; keeping the %d declared last", len(out), MAX_SCHEDULES)
            keep = sorted(out.values(), key=lambda d: d.declared, reverse=True)[:MAX_SCHEDULES]
            out = {d.schedule.name: d for d in keep}
        return out

    @_zk_errors
    def publish_spec(self, ours: Declared, refresh: float) -> Declared:
        """Merge ``ours`` into the stored spec (see the module docstring) and
        return what is stored now. ``seen`` is rewritten only when ours is
        ``refresh`` seconds newer, so an unchanged schedule costs few writes."""
        name = ours.schedule.name
        path = f"{self.specs}/{check_name(name)}"
        for _ in range(CAS_TRIES):
            try:
                data, stat = self.store.call(self.zk.get_async(path))
                stored = self._decode_spec(name, data)
            except NoNodeError:
                stat, stored = None, None
            if stored is None:
                target = ours
            elif stored.schedule == ours.schedule:
                if ours.seen - stored.seen < refresh and (stored.owner or not ours.owner):
                    return stored
                target = stored._replace(seen=max(ours.seen, stored.seen), owner=stored.owner or ours.owner)
            elif stored.owner not in (None, ours.owner):
                logger.warning("periodic schedule %s belongs to key %s; a change declared with key %s is not "
                               "stored", name, stored.owner, ours.owner)
                return stored
            elif ours.declared > stored.declared:
                target = ours._replace(seen=max(ours.seen, stored.seen))
            else:
                return stored
            try:
                if stat is None:
                    self.store.call(self.zk.create_async(path, _encode_spec(target), makepath=True))
                else:
                    self.store.call(self.zk.set_async(path, _encode_spec(target), version=stat.version))
                return target
            except (BadVersionError, NodeExistsError, NoNodeError):
                continue
        raise MiyaqError(f"could not store schedule {name}: too many concurrent writers")

    @_zk_errors
    def forget(self, name: str) -> None:
        """Delete a schedule's spec and last tick (a schedule no worker declares any more)."""
        for path in (f"{self.specs}/{check_name(name)}", f"{self.ticks}/{name}"):
            try:
                self.store.call(self.zk.delete_async(path))
            except NoNodeError:
                pass
        self._known.pop(name, None)

    def _decode_spec(self, name: str, data: bytes) -> Declared | None:
        try:
            raw = load_json(data, f"periodic spec znode {name}")
            spec = dict(raw["spec"])
            spec["body"] = base64.b64decode(spec.get("body", ""), validate=True)
            schedule = schedule_from_wire(spec)
            declared, seen = float(raw["declared"]), float(raw["seen"])
            owner = raw.get("owner")
            if owner is not None and not isinstance(owner, str):
                raise TypeError("owner must be a string")
        except (MiyaqError, KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring periodic spec znode %s: %s", name, getattr(exc, "message", exc))
            return None
        if schedule.name != name:
            logger.warning("ignoring periodic spec znode %s: it describes %s", name, schedule.name)
            return None
        return Declared(schedule, declared, seen, owner)


def _encode_spec(d: Declared) -> bytes:
    spec: dict[str, Any] = d.schedule.to_wire()
    spec["body"] = base64.b64encode(d.schedule.body).decode("ascii")
    record: dict[str, Any] = {"spec": spec, "declared": d.declared, "seen": d.seen}
    if d.owner is not None:
        record["owner"] = d.owner
    return dump_json(record)
