"""Resync over the peer link: the snapshot half of the Clone pattern.

When a replication stream from node S shows a gap, goes silent, or comes
from a new incarnation of S, this node asks S for the state of every task
they both hold (SYNC, in chunks of at most ``RESYNC_CHUNK`` tasks,
``max_message`` bytes and ``PEER_MESSAGE_BYTES`` of payloads and results,
with a cursor) plus S's newest tombstones, and
reconciles its copies: tasks it lacks are installed, copies
S runs are pushed out past S's lease, and tasks S finished or dead-lettered
are finished or dead-lettered here. A task it lacks that no holder has
started (by S's record) is placed as its REPLICATE would place it -- the
answer may have overtaken that REPLICATE, on another connection -- so on
its first holder it is ready at once; one under way elsewhere becomes a
standby copy (:meth:`~miyaq.cluster.install.CopyInstaller.install`). Every record and tombstone of the answer
is checked like a SUBMIT first (:mod:`miyaq.protocol.recordspec`); a bad one
is refused, counted and skipped.
A copy S runs becomes a standby copy here whatever its rank: S took it
over while this node was silent.

S answers from a snapshot: at cursor 0 it lists the ids of the tasks it
shares with the asker, and later chunks walk that list (a cursor is a
position in it), skipping tasks finished or handed away meanwhile -- the
asker hears of those on the stream, as of tasks stored after the snapshot.
Before, each chunk filtered the whole table again and its cursor was an
offset into that fresh list: a task that finished between two chunks
shifted the rest, and the next chunk skipped as many tasks as had
finished; and a resync of a large table cost a pass over all of it per
chunk. A snapshot unused for four times an asker's wait for a page (20 s,
``SYNC_SNAPSHOT_TTL``, or four times ``peer_heartbeat_timeout`` when that is
longer) is dropped (looked for
at each SYNC and every second by the cluster ticker), and at most
``MAX_SYNC_SNAPSHOTS`` are kept (the least recently used goes); a chunk
asked for without one (expired, or this node restarted) is served from a
fresh list, as before.

The snapshot also holds the ids of the ``RESYNC_STONES`` newest tombstones
as of cursor 0; each answer carries the next of them, as many as fit half
the message and half of ``PEER_MESSAGE_BYTES`` of results, and the tasks
the rest; past the tasks' positions come pages of tombstones only (cursor
``len(ids)`` + the tombstones sent or skipped, at least one a page), so the
cursor always grows (the asker requires it) and an asker of an older build,
which applies the stones of every answer, gets them all. A tombstone gone
since the snapshot is skipped. Before 2026-12-06 they came on cursor 0
only, as many as half the message held: a node restarted empty got back 7
of 20 outcomes of 1 MiB and took the resends of the others for new tasks.

It holds the ids of the ``RESYNC_PURGED`` newest purge marks too (dead
letters purged here), sent in the pages past the tasks and applied by the
asker: :mod:`miyaq.cluster.sync_purges`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from miyaq.cluster.peer_clock import clock_shift
from miyaq.cluster.peer_requests import SYNC
from miyaq.cluster.sizes import (
    EVENT_ALLOWANCE, PEER_MESSAGE_BYTES, outcome_size, peer_chunks, RECORD_ALLOWANCE, record_size,
)
from miyaq.cluster.sync_purges import apply_purge_marks, page_marks
from miyaq.constants import RESYNC_CHUNK, RESYNC_PURGED, RESYNC_STONES, RESYNC_TIMEOUT
from miyaq.core.attempts import adopt_lessees
from miyaq.errors import InvalidField
from miyaq.protocol.recordspec import task_from_record
from miyaq.runtime import green, monotonic, wall
from miyaq.store.records import transfer_record
from miyaq.store.task import DEAD, RUNNING, revivals

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole


SYNC_SNAPSHOT_TTL = 4 * RESYNC_TIMEOUT
"""A resync's snapshot unused this long (seconds) is dropped: its asker gave
up -- or four times the node's ``peer_heartbeat_timeout`` when that is
longer, as the asker then waits that long for a page (:meth:`Resync.snapshot_ttl`)."""
MAX_SYNC_SNAPSHOTS = 64
"""Snapshots kept at once (one per asker; the least recently used goes)."""
SNAPSHOT_SLICE = 4096
"""Tasks looked at between two chances to yield the hub while a snapshot is
listed (:class:`~miyaq.runtime.green.FairShare`: it yields once the listing
has run ``HUB_SLICE`` seconds). A million tasks take about 150 ms to list;
the service loop, timers and heartbeats run meanwhile."""


class Resync:
    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.completed = 0
        self._snapshots: dict[str, _Snapshot] = {}       # asker -> what its cursor 0 saw

    def start(self, src: str, number: int = 0) -> None:
        """Fetch ``src``'s state (all of it, in chunks); ``number`` is the
        subscriber's, handed back when the resync ends. Nothing once the
        node stops: its log closes next."""
        if not self.role.stopped:
            self._ask(src, 0, number)

    def _ask(self, src: str, cursor: int, number: int) -> None:
        # A page is up to 1 MiB of payloads: it must arrive whole within the
        # wait, as any message between nodes within peer_heartbeat_timeout,
        # which an operator sizes for a slow link (docs/cluster.md, "Peer
        # protocol"). Before 2026-12-07 the wait was RESYNC_TIMEOUT alone: a
        # page slower than 5 s was dropped when it came, and the resync asked
        # for its first page again, behind the one still crossing.
        wait = max(RESYNC_TIMEOUT, self.role.config.peer_heartbeat_timeout)
        self.role.peer.request(src, SYNC, {"cursor": cursor}, wait,
                               lambda answer: self._apply(src, answer, cursor, number))

    def _holds(self, task_id: str, key: Any) -> bool:
        routing_key = key if isinstance(key, str) else task_id
        return self.role.node_id in self.role.holders(routing_key, self.role.config.replicas)

    def serve(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        cursor = body.get("cursor")
        if not isinstance(cursor, int) or cursor < 0:
            cursor = 0
        table = self.role.engine.table
        budget = self.role.config.max_message
        snapshot = self._snapshot(sender, cursor == 0)
        ids = snapshot.ids
        tasks_left = cursor < len(ids)
        stones, stones_end, size, payload = self._stones(snapshot, cursor, budget, alone=not tasks_left)
        answer: dict[str, Any] = {"stones": stones}
        marks_end = snapshot.marks_at.get(cursor, len(snapshot.marks))
        if not tasks_left:      # past the tasks: the purge marks, beside the tombstones
            answer["purged"], marks_end = page_marks(table.purged, snapshot.marks, snapshot.marks_at.get(cursor),
                                                     budget // 4, alone=not stones)
        following = len(ids)
        first: list[dict[str, Any]] = []
        if tasks_left:
            end = min(len(ids), cursor + RESYNC_CHUNK)
            picked: list[tuple[int, dict[str, Any]]] = []      # (position in the snapshot, record)
            for i in range(cursor, end):
                task = table.live.get(ids[i]) or table.dead.get(ids[i])
                if task is not None and sender in task.holders:     # else finished or handed away since
                    picked.append((i, transfer_record(task)))
            first = next(peer_chunks([r for _, r in picked], RESYNC_CHUNK, budget - size, record_size,
                                     RECORD_ALLOWANCE, PEER_MESSAGE_BYTES - payload), [])
            following = picked[len(first) - 1][0] + 1 if len(first) < len(picked) else end
        answer["tasks"] = first
        if following < len(ids):
            answer["next"] = following
        elif stones_end < len(snapshot.stones) or marks_end < len(snapshot.marks):
            # Past the tasks' positions: pages of tombstones and purge marks
            # only, each carrying at least one, so the cursor still grows.
            answer["next"] = len(ids) + stones_end + marks_end
        else:
            answer["next"] = None
        if answer["next"] is None:
            self._snapshots.pop(sender, None)
        else:
            snapshot.stones_at[answer["next"]] = stones_end
            snapshot.marks_at[answer["next"]] = marks_end
        return answer

    def _stones(self, snapshot: _Snapshot, cursor: int, budget: int,
                alone: bool) -> tuple[list[list[Any]], int, int, int]:
        """The tombstones of the answer at ``cursor``: from where the page
        before it stopped in the snapshot's list, as many as fit half of
        ``budget`` (``max_message``) and half of ``PEER_MESSAGE_BYTES`` of
        results -- at least one when ``alone`` (a page of tombstones only,
        past the tasks), so the cursor grows. A tombstone gone since the
        snapshot is skipped. Returns them (oldest of the page first), the
        position the next page starts from, and their size and bytes of
        results and errors."""
        start = snapshot.stones_at.get(cursor)
        if start is None:       # no snapshot kept (expired, or this node restarted): none
            return [], len(snapshot.stones), 0, 0
        table = self.role.engine.table
        room, results = budget // 2, PEER_MESSAGE_BYTES // 2
        size = payload = 0
        stones: list[list[Any]] = []
        position = start
        while position < len(snapshot.stones):
            stone = table.tombstone(snapshot.stones[position])
            if stone is not None:
                weight = outcome_size(stone.result, stone.error)
                carried = weight - EVENT_ALLOWANCE
                if (size + weight > room or payload + carried > results) and (stones or not alone):
                    break
                size, payload = size + weight, payload + carried
                stones.append([stone.id, stone.state, stone.result, stone.error, stone.key])
            position += 1
        stones.reverse()
        return stones, position, size, payload

    def snapshot_ttl(self) -> float:
        """Seconds a snapshot is kept unused: four times an asker's wait for
        a page (:meth:`_ask`, the same settings on every node), which covers
        the page's crossing and the question for the next one. Before
        2026-12-07 (review29) a fixed 20 s: with the wait lengthened to a
        ``peer_heartbeat_timeout`` of 30 s, a page that took 25 s to cross
        found its snapshot gone, and the rest came from a fresh list -- no
        tombstones, positions shifted by the tasks finished meanwhile."""
        return 4 * max(RESYNC_TIMEOUT, self.role.config.peer_heartbeat_timeout)

    def expire(self, now: float) -> None:
        """Drop the snapshots unused for :meth:`snapshot_ttl` (``now``:
        monotonic): at each SYNC served, and every second from the cluster
        ticker. Before 2026-12-05 only a SYNC did it: a snapshot whose asker
        never came back stayed until another peer asked for a resync."""
        if not self._snapshots:
            return
        ttl = self.snapshot_ttl()
        for asker, snapshot in list(self._snapshots.items()):
            if now - snapshot.used > ttl:
                del self._snapshots[asker]

    def _snapshot(self, sender: str, fresh: bool) -> _Snapshot:
        """The ids of the tasks this node shares with ``sender``: listed anew
        when ``fresh`` (its cursor 0) or when none is kept for it; with the
        ids of the ``RESYNC_STONES`` newest tombstones when ``fresh`` (a
        snapshot listed anew past cursor 0 has none: the pages that would
        have carried them are lost with the snapshot)."""
        now = monotonic()
        self.expire(now)
        kept = self._snapshots.pop(sender, None)     # its own, replaced either way: not evicted below
        if kept is not None and not fresh:
            snapshot = kept
        else:
            snapshot = _Snapshot(self._shared_with(sender))
            if fresh:
                snapshot.stones = [s.id for s in self.role.engine.table.tombstones.newest(RESYNC_STONES)]
                snapshot.stones_at[0] = 0
                snapshot.marks = self.role.engine.table.purged.newest(RESYNC_PURGED)
                snapshot.marks_at[0] = 0
            while len(self._snapshots) >= MAX_SYNC_SNAPSHOTS:
                del self._snapshots[min(self._snapshots, key=lambda a: self._snapshots[a].used)]
        snapshot.used = now
        self._snapshots[sender] = snapshot
        return snapshot

    def _shared_with(self, sender: str) -> list[str]:
        """The ids of the tasks this node shares with ``sender``, the table
        copied first and then looked at in slices of ``SNAPSHOT_SLICE``,
        yielding the hub between two once its share is used up. A task
        that finishes or moves meanwhile is looked at again when its chunk
        is served (:meth:`serve`); one stored meanwhile reaches the asker on
        the stream, as one stored after the snapshot."""
        table = self.role.engine.table
        tasks = [*table.live.values(), *table.dead.values()]
        share = green.FairShare()
        ids: list[str] = []
        for start in range(0, len(tasks), SNAPSHOT_SLICE):
            share.check()
            ids += [t.id for t in tasks[start:start + SNAPSHOT_SLICE] if sender in t.holders]
        return ids

    def _apply(self, src: str, answer: dict[str, Any] | None, cursor: int, number: int) -> None:
        role = self.role
        if role.stopped:
            return          # the node stops: its log closes next
        if answer is None:
            role.subscriber.resync_done(src, number, complete=False)    # asked again after a backoff
            return
        oversize = _oversize(answer)
        if oversize:        # a buggy or hostile peer: refused whole, asked again after a backoff
            role.refusals.refuse("sync", src, InvalidField(oversize, field=oversize.split()[0]))
            role.subscriber.resync_done(src, number, complete=False)
            return
        engine = role.engine
        table = engine.table
        now = wall()
        # A tombstone of a task we should hold but lost (e.g. restarted with an
        # empty data dir) is kept: status, result and dedup still answer here.
        role.copies.keep_outcomes(src, _items(answer.get("stones")), "sync", now, held=self._holds)
        shift = clock_shift(answer.get("clock"), now)      # S's clock against ours, for the copies it brings
        with role.events.applying_remote():
            for record in _items(answer.get("tasks")):
                try:
                    theirs = task_from_record(record, role.config)
                except InvalidField as err:
                    role.refusals.refuse("sync", src, err)
                    continue
                mine = table.live.get(theirs.id) or table.dead.get(theirs.id)
                if mine is None:
                    role.install(record, now, "sync", src, shift)
                    continue
                adopt_lessees(mine, theirs)     # a worker whose node died may report here
                if mine.state == DEAD and theirs.state != DEAD and revivals(theirs) > revivals(mine):
                    # S retried it from the dead letters since ours died, and its V
                    # event never reached us: ours comes back as a standby copy.
                    engine.revive_copy(mine.id, now + role.offset_for(mine, minimum=1), revived=revivals(theirs))
                if theirs.state == DEAD and mine.state != DEAD:
                    if revivals(theirs) >= revivals(mine):      # else S has not heard of our retry yet
                        engine.kill_copy(mine, theirs.error)
                elif revivals(theirs) == revivals(mine) and theirs.attempt > mine.attempt:
                    # S knows of a later start (its S event, in memory only here,
                    # was lost in a restart, or never came): ours counts from it.
                    engine.adopt_attempt(mine, theirs.attempt, theirs.error)
                if theirs.state == RUNNING and mine.state != RUNNING:
                    # S runs it (it took over while we were silent): whatever our
                    # rank, our copy waits past S's lease and then asks.
                    mine.standby = True
                    lease_end = theirs.lease_end + shift if theirs.lease_end else now    # onto our clock
                    engine.defer(mine, lease_end + role.offset_for(mine, minimum=1))
            self.apply_purge_marks(src, _items(answer.get("purged")), shift, now)
        following = answer.get("next")
        if type(following) is int and following > cursor:     # always forward: a resync ends
            self._ask(src, following, number)
        else:
            self.completed += 1
            role.subscriber.resync_done(src, number, complete=True)

    def apply_purge_marks(self, src: str, marks: list[Any], shift: float, now: float) -> None:
        """``src``'s purge marks applied here:
        :func:`~miyaq.cluster.sync_purges.apply_purge_marks`."""
        apply_purge_marks(self.role.engine, self.role.refusals, src, marks, shift, now)


class _Snapshot:
    """What a resync's cursor 0 saw: ``ids``, the tasks shared with the
    asker (a cursor below ``len(ids)`` is a position in it); ``stones``, the
    ids of the newest tombstones, newest first; ``stones_at``, for each
    cursor handed out, where in ``stones`` its answer starts; ``marks`` and
    ``marks_at``, the same for the newest purge marks."""
    __slots__ = ("ids", "stones", "stones_at", "marks", "marks_at", "used")

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.stones: list[str] = []
        self.stones_at: dict[int, int] = {}
        self.marks: list[str] = []
        self.marks_at: dict[int, int] = {}
        self.used = 0.0          # monotonic time last used


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


#: The most items a SYNC answer's list may hold: what :meth:`Resync.serve`
#: puts in one page at most (its snapshot holds no more tombstones or marks
#: in all).
ANSWER_LISTS = {"tasks": RESYNC_CHUNK, "stones": RESYNC_STONES, "purged": RESYNC_PURGED}


def _oversize(answer: dict[str, Any]) -> str:
    """Why a SYNC answer is refused whole ("" if it is not): a list longer
    than a page of :meth:`Resync.serve` ever holds (``ANSWER_LISTS``). Each
    item is checked and a bad one skipped as it is applied, but a peer
    that sent a message's worth of them (938,237 purge marks in 16 MiB,
    review39, 2026-12-07) held this node's hub 0.6-3.1 s applying them."""
    for name, most in ANSWER_LISTS.items():
        value = answer.get(name)
        if isinstance(value, list) and len(value) > most:
            return f"{name} holds {len(value):,} items, more than a SYNC page ever holds ({most:,})"
    return ""
