"""Blocking reads and writes of one cluster's znodes, each with a deadline,
through a client made by :mod:`miyaq.cluster.zk_client`.

Constraints:

* Every call is bounded by the store's ``timeout``: a connection problem or a
  missed deadline becomes ``Unavailable`` naming the hosts. ZooKeeper's own
  answers (NoNode, BadVersion, NodeExists) pass through as kazoo errors, for
  the caller to decide.
* Calls block only the calling greenlet (kazoo's ``*_async`` with a
  ``SequentialGeventHandler``); never call them from a kazoo callback.
* ``desired`` is changed only by :meth:`ZnodeStore.update_desired`, a
  compare-and-set loop, so concurrent operators and nodes never lose an
  update.
* ACLs (:mod:`miyaq.cluster.zk_auth`): a client made with credentials
  (:func:`~miyaq.cluster.zk_client.new_client`) creates every znode with
  its ``default_acl``; :meth:`ZnodeStore.protect` puts that ACL on znodes
  made before (an open cluster being protected).
  ZooKeeper refusing an operation for its ACL (NoAuth) becomes ``Forbidden``
  saying which credentials to give.
"""
from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionDropped,
    ConnectionLoss,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.security import make_acl

from miyaq.cluster.ring_view import Member
from miyaq.cluster.zk_auth import same_acl
from miyaq.cluster.zk_layout import (
    CLUSTER_KEY_FIELD,
    ROOT,
    Intent,
    Layout,
    PublishedKey,
    RingRecord,
    dump_desired,
    dump_json,
    load_json,
    parse_desired,
)
from miyaq.errors import ConfigError, Forbidden, Unavailable
from miyaq.runtime import green, monotonic

logger = logging.getLogger(__name__)

_CONTENDER = re.compile(r"__lock__(-?\d{10})$")
"""The name of a kazoo ``Election`` contender znode; the group is its sequence number."""

TRANSIENT = (ConnectionLoss, SessionExpiredError, OperationTimeoutError, ConnectionDropped)
"""kazoo errors that mean "ZooKeeper could not answer", not "ZooKeeper said no"."""


class ZnodeStore:
    """Reads and writes of one cluster's znodes, each bounded by ``timeout`` seconds."""

    def __init__(self, zk: KazooClient, layout: Layout, hosts: str, timeout: float) -> None:
        self.zk = zk
        self.layout = layout
        self.hosts = hosts
        self.timeout = timeout

    def call(self, async_result: Any) -> Any:
        """Wait for a kazoo async result; its value, a kazoo error, or ``Unavailable``."""
        async_result.wait(self.timeout)
        if not async_result.ready():
            raise Unavailable(
                f"ZooKeeper at {self.hosts} did not answer within {self.timeout:g}s", hosts=self.hosts
            )
        try:
            return async_result.get(block=False)
        except TRANSIENT as exc:
            raise Unavailable(
                f"ZooKeeper at {self.hosts}: {type(exc).__name__}", hosts=self.hosts
            ) from None
        except NoAuthError:
            raise self.forbidden() from None

    def forbidden(self) -> Forbidden:
        """The error for ZooKeeper refusing an operation because of a znode's ACL (NoAuth)."""
        cluster = self.layout.cluster
        if self.zk.default_acl:
            return Forbidden(f"ZooKeeper at {self.hosts} refused these credentials for cluster {cluster} "
                             f"(NoAuth): its znodes belong to other credentials", hosts=self.hosts)
        return Forbidden(f"ZooKeeper at {self.hosts} refused access to cluster {cluster} (NoAuth): its znodes "
                         f"carry ACLs; give the cluster's credentials with --zk-auth or --zk-auth-file "
                         f"(MIYAQ_ZK_AUTH)", hosts=self.hosts)

    def root_acl(self) -> list[Any] | None:
        """The ACL ``/miyaq`` gets when miyaq creates it: with credentials, anyone
        may read it and add a cluster, only they may do more (:mod:`zk_auth`);
        None (the client's default, open) without."""
        acl = self.zk.default_acl
        return [make_acl("world", "anyone", read=True, create=True), *acl] if acl else None

    def ensure_paths(self, *folders: str) -> None:
        """Create ``/miyaq`` (with :meth:`root_acl`: anyone may add a cluster
        there), the cluster's znode and ``folders`` (default: ``members`` and
        ``election``), each only if missing. Nothing else may create them: a
        parent made by ``makepath`` gets the client's default ACL, and a
        digest-only ``/miyaq`` shuts every other cluster out."""
        self.ensure_base()
        for path in folders or (self.layout.members, self.layout.election):
            self._create_if_missing(path, None)

    def ensure_base(self) -> None:
        """Create ``/miyaq`` (with :meth:`root_acl`) and the cluster's znode if missing."""
        self._create_if_missing(ROOT, self.root_acl())
        self._create_if_missing(self.layout.base, None)

    def _create_if_missing(self, path: str, acl: list[Any] | None) -> None:
        try:
            self.call(self.zk.create_async(path, b"", acl=acl))
        except NodeExistsError:
            pass

    def read_contenders(self) -> list[str]:
        """The election's contenders (their identifiers), first in line first,
        read without creating anything: a missing ``election`` znode means none.
        (kazoo's ``Election.contenders()`` creates the path, with the client's
        default ACL: a read-only ``miyaq ring`` must leave no trace.)"""
        try:
            children = self.call(self.zk.get_children_async(self.layout.election))
        except NoNodeError:
            return []
        ordered = sorted((m.group(1), name) for name in children
                         if (m := _CONTENDER.search(name)) is not None)
        pending = [self.zk.get_async(f"{self.layout.election}/{name}") for _, name in ordered]
        out = []
        for result in pending:
            try:
                data, _ = self.call(result)
            except NoNodeError:
                continue      # that contender left meanwhile
            out.append(data.decode("utf-8", "replace") if data else "")
        return out

    def protect(self) -> int:
        """Give every znode of the cluster the client's ACL where it has another one
        (a cluster made without credentials); the number changed. ``Forbidden``
        when a znode belongs to other credentials."""
        acl = self.zk.default_acl
        if not acl:
            return 0
        changed = 0
        level = [self.layout.base]
        while level:
            children: list[str] = []
            acls = [(path, self.zk.get_acls_async(path), self.zk.get_children_async(path)) for path in level]
            for path, acl_result, children_result in acls:
                try:
                    current, stat = self.call(acl_result)
                    names = self.call(children_result)
                except NoNodeError:
                    continue          # gone meanwhile (an ephemeral member)
                if not same_acl(current, acl):
                    try:
                        self.call(self.zk.set_acls_async(path, acl, stat.aversion))
                        changed += 1
                    except (NoNodeError, BadVersionError):
                        pass          # gone, or changed by another node doing the same
                children += [f"{path}/{name}" for name in names]
            level = children
        if changed:
            logger.warning("put the credentials' ACL on %d znode(s) of cluster %s that had another one",
                           changed, self.layout.cluster)
        return changed

    def register(self, member: Member, wait: float, cluster_key: str | None = None) -> None:
        """Create ``member``'s ephemeral znode for this session, with the
        fingerprint of its cluster key (``cluster_key``, :data:`CLUSTER_KEY_FIELD`;
        None: none written, as a build before 2026-12-06 wrote none).

        A znode left by a previous incarnation (a session the server has not
        expired yet) is waited out for up to ``wait`` seconds; after that the
        id is taken to belong to another live node and ``ConfigError`` says so.
        """
        path = self.layout.member(member.node_id)
        record = member.to_dict()
        if cluster_key is not None:
            record[CLUSTER_KEY_FIELD] = cluster_key
        payload = dump_json(record)
        deadline = monotonic() + wait
        warned = False
        while True:
            try:
                self.call(self.zk.create_async(path, payload, ephemeral=True, makepath=True))
                return
            except NodeExistsError:
                pass
            try:
                stat = self.call(self.zk.exists_async(path))
            except NoNodeError:
                stat = None
            if stat is None:
                continue
            if stat.ephemeralOwner == self.zk.client_id[0]:
                return
            if monotonic() > deadline:
                raise ConfigError(
                    f"node id {member.node_id!r} is registered in cluster {self.layout.cluster} by "
                    f"another live session (0x{stat.ephemeralOwner:x}); node ids must be unique"
                )
            if not warned:
                warned = True
                logger.warning(
                    "%s is still registered by session 0x%x (a previous run?); waiting for it to expire",
                    member.node_id, stat.ephemeralOwner,
                )
            green.sleep(0.2)

    def read_registered(self) -> dict[str, Member]:
        """Every registered member; znodes that do not decode are logged and skipped."""
        return {name: member for name, member, _, _ in self._valid_members(log=True)}

    def read_cluster_keys(self) -> dict[str, PublishedKey]:
        """The cluster key fingerprint each registered member published
        (None: a member of a build that publishes none, or a value that is
        not a string), and when its znode was made (its ``czxid``: the
        order of registrations). Only the znodes :meth:`read_registered`
        takes for members (which logs the others), and only ephemeral
        ones: a live session's. Before 2026-12-06's review any child of
        ``members/`` that read as JSON counted, so one persistent stray
        znode -- an operator's leftover, or anyone's on a ZooKeeper without
        auth -- made every node refuse to start, same key or not, for good."""
        out: dict[str, PublishedKey] = {}
        for name, _, raw, stat in self._valid_members(log=False):
            if stat.ephemeralOwner:
                fingerprint = raw.get(CLUSTER_KEY_FIELD)
                out[name] = PublishedKey(fingerprint if isinstance(fingerprint, str) else None, stat.czxid)
        return out

    def _valid_members(self, log: bool) -> list[tuple[str, Member, Any, Any]]:
        """(name, member, decoded JSON, stat) of every member znode that
        describes a valid member of its own name; the others are skipped
        (and logged with ``log``)."""
        out = []
        for name, raw, stat in self._read_members():
            try:
                member = Member.from_dict(raw)
            except ConfigError as exc:
                if log:
                    logger.warning("ignoring member znode %s: %s", name, exc)
                continue
            if member.node_id != name:
                if log:
                    logger.warning("ignoring member znode %s: it describes %s", name, member.node_id)
                continue
            out.append((name, member, raw, stat))
        return out

    def _read_members(self) -> list[tuple[str, Any, Any]]:
        """(name, decoded JSON, stat) of every member znode that reads as
        JSON; those gone meanwhile are skipped, the others logged and skipped."""
        try:
            children = self.call(self.zk.get_children_async(self.layout.members))
        except NoNodeError:
            return []
        pending = []
        for name in children:
            try:
                pending.append((name, self.zk.get_async(self.layout.member(name))))
            except ConfigError:
                logger.warning("ignoring znode %s/%s: not a node id", self.layout.members, name)
        out: list[tuple[str, Any, Any]] = []
        for name, result in pending:
            try:
                data, stat = self.call(result)
            except NoNodeError:
                continue
            try:
                out.append((name, load_json(data, f"member znode {name}"), stat))
            except ConfigError as exc:
                logger.warning("ignoring member znode %s: %s", name, exc)
        return out

    def read_desired(self) -> tuple[dict[str, Intent], Any]:
        """The operator's intent and its stat ((``{}``, None) when absent);
        ``ConfigError`` when the znode cannot be decoded."""
        data, stat = self._read_desired_bytes()
        return parse_desired(data), stat

    def _read_desired_bytes(self) -> tuple[bytes | None, Any]:
        try:
            data, stat = self.call(self.zk.get_async(self.layout.desired))
        except NoNodeError:
            return None, None
        return data, stat

    def unreadable_desired(self, problem: str) -> str:
        """What an operator reads about a ``desired`` znode that does not decode, and how to recover."""
        return (f"the desired znode {self.layout.desired} is unreadable ({problem}): the leader keeps the ring "
                f"as published; the next `miyaq join`, `miyaq leave` or `miyaq ring weight` rebuilds it from "
                f"the published ring's members and weights (or delete the znode, then join each node)")

    def _rebuilt_desired(self, problem: str) -> dict[str, Intent]:
        """The intent an unreadable ``desired`` is rebuilt from: every member of
        the published ring, wanted in with its published weight -- never
        nothing (before 2026-12-05 the next change, or a node auto-joining,
        rewrote it as ``{}`` plus itself, and the leader took every other node
        out of the ring). ``ConfigError`` when no ring can be read either."""
        record, _ = self.read_ring()
        if record is None:
            raise ConfigError(f"the desired znode {self.layout.desired} is unreadable ({problem}) and no ring "
                              "is published to rebuild it from: fix or delete the znode, then join each node")
        return {node_id: Intent(True, record.weights[node_id]) for node_id in record.members}

    def update_desired(
        self, change: Callable[[dict[str, Intent]], dict[str, Intent]]
    ) -> tuple[dict[str, Intent], dict[str, Intent]]:
        """Compare-and-set loop on ``desired``; returns (before, after).

        An unreadable znode is rewritten from the published ring plus the
        change (:meth:`_rebuilt_desired`), and a warning says so. A missing
        one is created with its parents made by :meth:`ensure_base` (their
        ACLs), never by ``makepath``."""
        for _ in range(100):
            data, stat = self._read_desired_bytes()
            problem = None
            try:
                before = parse_desired(data)
            except ConfigError as exc:
                problem = exc.message
                before = self._rebuilt_desired(problem)
            after = change(dict(before))
            if after == before and problem is None:
                return before, after
            try:
                self._write_desired(dump_desired(after), stat)
            except (BadVersionError, NodeExistsError, NoNodeError):
                green.sleep(random.uniform(0, 0.02))
                continue
            if problem is not None:
                logger.warning("rewrote the unreadable %s (%s) from the published ring's %d member(s) "
                               "and their weights, plus this change", self.layout.desired, problem, len(before))
            return before, after
        raise Unavailable(f"could not update {self.layout.desired}: too many concurrent writers")

    def _write_desired(self, payload: bytes, stat: Any) -> None:
        """Set ``desired`` at ``stat``'s version, or create it (and its parents) when ``stat`` is None."""
        if stat is not None:
            self.call(self.zk.set_async(self.layout.desired, payload, version=stat.version))
            return
        self.ensure_base()
        self.call(self.zk.create_async(self.layout.desired, payload))

    def epoch_floor(self, stat: Any) -> int:
        """The least epoch the ring znode, which cannot be decoded, held: its
        ``epoch`` field if that is still a whole number, and never less than
        its version + 1 (every publish raised both by at least one). A new
        term publishes past it: epochs never go backwards, whatever another
        version or a hand edit left in the znode (before 2026-12-05 a full
        restart on such a znode began again at epoch 1, and the periodic
        ticks fenced by the old epoch stopped firing)."""
        floor = stat.version + 1 if stat is not None else 0
        try:
            data, _ = self.call(self.zk.get_async(self.layout.ring))
            raw = load_json(data, "ring znode")
        except (NoNodeError, ConfigError):
            return floor
        epoch = raw.get("epoch") if isinstance(raw, dict) else None
        if type(epoch) is int and epoch > floor:
            return epoch
        return floor

    def read_ring(self) -> tuple[RingRecord | None, Any]:
        """The ring record and its stat; (None, stat) when it is corrupt."""
        try:
            data, stat = self.call(self.zk.get_async(self.layout.ring))
        except NoNodeError:
            return None, None
        if not data:
            return None, stat
        try:
            return RingRecord.from_bytes(data), stat
        except ConfigError as exc:
            logger.warning("ring znode %s is corrupt: %s", self.layout.ring, exc)
            return None, stat
