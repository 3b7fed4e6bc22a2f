"""Task events between holders: what one holder did, told to the others.

:class:`EventPublisher` is an engine listener on every node of a cluster:
when a task with other holders starts, is touched, retried, dead-lettered,
revived, purged or finished here, it queues an event for each other holder
and :meth:`flush` publishes them on the replication stream, batched per
destination. A change made *because* another holder said so (its events, a
resync, a standby check's answer) is not announced again: such code runs
inside :meth:`EventPublisher.applying_remote`, the one owner of that state.

:func:`apply_events` is the receiving side: it checks each event
(:func:`miyaq.protocol.eventspec.check_event`: a bad one is refused,
counted and skipped) and moves the local copy the same way — a standby copy
pushes its timer out past the runner's lease, a finished task leaves a
tombstone (even for an id this node does not know, so a late copy cannot
come back: counted apart from ``max_tombstones`` and refused past its
bound, :mod:`miyaq.cluster.ends_ahead`). A STARTED or DEAD event for a
task whose copy has not arrived yet (it overtook the REPLICATE, or the
handoff after a ring change) is
kept, bounded, and applied when the copy is installed
(:func:`apply_early_event`): the standby then knows the lease and who holds
it, or that the task was dead-lettered -- a copy handed off by another old
holder before the task failed for good must not come back live and run it
again. Kept at most ``MAX_EARLY_EVENTS`` of them, ``MAX_EARLY_EVENT_BYTES``
in all (a DEAD event's error text counts) and ``EARLY_EVENT_TTL`` each (the
expired are dropped as each new one is kept, and every
``STREAM_HEARTBEAT`` by the cluster ticker); none for a task this node
has a tombstone of, as no copy of it will be installed here (an
at-most-once task that started elsewhere: its DEAD event, when it fails,
finds the ``started-elsewhere`` tombstone). Before 2026-12-05 they were
bounded by count only and kept past their 60 s until 10,000 newer ones
came: 2,000 failing at-most-once tasks left 38.9 MiB of error text on
each other holder for good, and a peer's 1,000 DEAD events for unknown
ids 251 MiB.

Events (arrays): ``["S", id, attempt, lease_end, at_most_once, lessee]``
started (``lessee``: who the attempt was leased to, so that worker may report
it to this holder if the runner's node dies; older nodes send five elements),
``["T", id, lease_end]`` touched, ``["F", id, state, result, error, key?]``
finished (also forwarded by a coordinator that learnt it from a holder's
answer to REPLICATE: :meth:`EventPublisher.forward_finished`),
``["R", id, attempt, eta, error]`` waiting for the next attempt (eta 0: at once),
``["D", id, attempt, error, record?]`` dead, ``["V", id, revivals?]`` revived (how many
times in all: :func:`~miyaq.store.task.revivals`), ``["P", id]`` purged. The
items marked ``?`` came on 2026-12-05 (``record``: 2026-12-08); older nodes
neither send nor read them. A ``D`` event's ``record`` is that of a dead
letter whose arguments were lost (:func:`~miyaq.cluster.lost_args.lost_record`): an at-most-once
task's other holders have only a ``started-elsewhere`` placeholder, which
becomes that dead letter (:mod:`miyaq.cluster.lost_args`).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from miyaq.cluster.ends_ahead import finish_unknown
from miyaq.cluster.sizes import EVENT_ALLOWANCE, event_size, peer_chunks
from miyaq.logs import LogLimiter
from miyaq.cluster.transport import StreamPublisher
from miyaq.constants import (
    EARLY_EVENT_BYTES, EARLY_EVENT_TTL, MAX_EARLY_EVENT_BYTES, MAX_EARLY_EVENTS, MAX_STREAM_EVENTS,
)
from miyaq.core.attempts import note_lessee
from miyaq.cluster.lost_args import dead_without_args, lost_record
from miyaq.core.listener import EngineListener
from miyaq.errors import InvalidField
from miyaq.protocol.eventspec import check_event
from miyaq.protocol.recordspec import Outcome
from miyaq.runtime import monotonic, wall
from miyaq.store.records import latest_lessee
from miyaq.store.table import Tombstone, error_bytes
from miyaq.store.task import NO_EXTRA, READY, RETRYING, RUNNING, SCHEDULED, Task, args_lost, revivals

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a partition can end in many duplicates at once (all counted)



class EventPublisher(EngineListener):
    def __init__(self, node_id: str, stream: StreamPublisher, max_message: int) -> None:
        self.me = node_id
        self.stream = stream
        self.max_message = max_message    # each stream message stays under it
        self.outbox: dict[str, list[list[Any]]] = {}
        self.duplicates = 0
        self._remote = 0      # > 0 while applying what another holder did
        self.early: OrderedDict[str, tuple[str, list[Any], float]] = OrderedDict()   # id -> (src, S/D event, when)
        self.early_bytes = 0      # what the early events hold (_early_size), against MAX_EARLY_EVENT_BYTES

    @contextmanager
    def applying_remote(self) -> Iterator[None]:
        """Changes made inside are another holder's doing: they are not announced."""
        self._remote += 1
        try:
            yield
        finally:
            self._remote -= 1

    def _emit(self, task: Task, event: list[Any]) -> None:
        if self._remote or len(task.holders) < 2:
            return
        self._queue(event, task.holders)

    def _queue(self, event: list[Any], dests: Iterable[str]) -> None:
        for dest in dests:
            if dest != self.me:
                box = self.outbox.get(dest)
                if box is None:
                    box = self.outbox[dest] = []
                box.append(event)

    def forward_finished(self, task_id: str, outcome: Outcome, to: Iterable[str]) -> None:
        """Tell the nodes ``to`` that ``task_id`` finished with ``outcome``
        (checked by the caller), as an ``F`` event published with this node's
        other events. For what another holder reported (its answer to a
        REPLICATE): this node may hold no copy, and may be applying a remote
        change, yet the others must hear it -- each keeps a tombstone."""
        self._queue(["F", task_id, *outcome], to)

    def forward_dead(self, task_id: str, attempt: int, error: dict[str, Any] | None, to: Iterable[str]) -> None:
        """Tell the nodes ``to`` that ``task_id`` was dead-lettered (attempt and
        error checked by the caller) as a ``D`` event: what another holder's
        answer to a REPLICATE said, as :meth:`forward_finished` does for an end."""
        self._queue(["D", task_id, attempt, error], to)

    def task_started(self, task: Task) -> None:
        lease = latest_lessee(task)
        lessee = lease[1] if lease is not None else None
        self._emit(task, ["S", task.id, task.attempt, task.lease_end, task.at_most_once, lessee])

    def task_touched(self, task: Task) -> None:
        self._emit(task, ["T", task.id, task.lease_end])

    def task_finished(self, task: Task, stone: Tombstone) -> None:
        if self._remote:
            return      # another holder's end (its F event, most often): nothing to build
        event = ["F", task.id, stone.state, stone.result, stone.error]
        if stone.key is not None:
            event.append(stone.key)     # a holder with no copy keeps the key's dedup too
        self._emit(task, event)

    def task_retrying(self, task: Task, reason: str) -> None:
        self._emit(task, ["R", task.id, task.attempt, task.eta if task.state == RETRYING else 0.0, task.error])

    def task_given_back(self, task: Task) -> None:
        # The attempt the S event announced did not run: the standby copies
        # take the attempt back as a put-back's (eta 0). Before review40 they
        # kept it, and a take-over after the holder was lost dead-lettered a
        # given-back last attempt `Lost`, never run.
        self._emit(task, ["R", task.id, task.attempt, 0.0, task.error])

    def task_dead(self, task: Task) -> None:
        event = ["D", task.id, task.attempt, task.error]
        if args_lost(task) is not None:
            event.append(lost_record(task))     # the other holders have only a placeholder
        self._emit(task, event)

    def task_revived(self, task: Task) -> None:
        self._emit(task, ["V", task.id, revivals(task)])

    def task_purged(self, task: Task) -> None:
        self._emit(task, ["P", task.id])

    def duplicate_run(self, task: Task, info: dict[str, Any]) -> None:
        self.duplicates += 1
        _log.warning("duplicate", "task %s ran more than once (%s)", task.id, info)

    def hold_early(self, src: str, event: list[Any]) -> None:
        """Keep a STARTED or DEAD event for a task not held here yet (the
        latest per task). Those older than ``EARLY_EVENT_TTL`` are dropped
        first, then the oldest while more than ``MAX_EARLY_EVENTS`` or
        ``MAX_EARLY_EVENT_BYTES`` are kept."""
        now = monotonic()
        early = self.early
        old = early.pop(event[1], None)
        if old is not None:
            self.early_bytes -= _early_size(old[1])
        self._drop_expired(now)
        early[event[1]] = (src, event, now)
        self.early_bytes += _early_size(event)
        while len(early) > MAX_EARLY_EVENTS or (self.early_bytes > MAX_EARLY_EVENT_BYTES and len(early) > 1):
            self.early_bytes -= _early_size(early.popitem(last=False)[1][1])

    def drop_given_back(self, src: str, task_id: str, attempt: int) -> None:
        """An ``R`` event of ``attempt`` from ``src`` for a task not held
        here yet: if an ``S`` event of a later attempt from ``src`` is kept
        for it, that attempt was given back unstarted (``task_given_back``:
        the attempt one less), and the copy must not take it when it comes
        (review41: a ``max_retries`` 0 task's take-over dead-lettered it
        ``Lost``, never run). A put-back names the attempt that ran, and
        another holder's event tells of its own run: the ``S`` event stays."""
        found = self.early.get(task_id) if self.early else None
        if found is not None and found[0] == src and found[1][0] == "S" and found[1][2] > attempt:
            self.take_early(task_id)

    def drop_expired_early(self, now: float) -> None:
        """Drop the early events older than ``EARLY_EVENT_TTL`` (``now``:
        monotonic): the cluster ticker's call; each one kept does the same."""
        if self.early:
            self._drop_expired(now)

    def _drop_expired(self, now: float) -> None:
        """Drop the early events older than ``EARLY_EVENT_TTL`` (they are kept
        in the order they came: the oldest first)."""
        early = self.early
        while early:
            task_id, (_, event, when) = next(iter(early.items()))
            if now - when <= EARLY_EVENT_TTL:
                return
            del early[task_id]
            self.early_bytes -= _early_size(event)

    def take_early(self, task_id: str) -> tuple[str, list[Any]] | None:
        found = self.early.pop(task_id, None) if self.early else None
        if found is None:
            return None
        self.early_bytes -= _early_size(found[1])
        if monotonic() - found[2] > EARLY_EVENT_TTL:
            return None
        return found[0], found[1]

    def flush(self) -> None:
        if not self.outbox:
            return
        outbox, self.outbox = self.outbox, {}
        send = self.stream.send
        for dest, events in outbox.items():
            for chunk in peer_chunks(events, MAX_STREAM_EVENTS, self.max_message, event_size, EVENT_ALLOWANCE):
                send(dest, chunk)


def _early_size(event: list[Any]) -> int:
    """What an early event counts against ``MAX_EARLY_EVENT_BYTES``."""
    return EARLY_EVENT_BYTES + (error_bytes(event[3]) if event[0] == "D" else 0)


def apply_events(role: ClusterRole, src: str, events: list[Any]) -> None:
    """Apply another holder's events to the local copies."""
    engine = role.engine
    table = engine.table
    now = wall()
    config = role.config
    with role.events.applying_remote():
        for ev in events if isinstance(events, list) else ():
            try:
                check_event(ev, config)
            except InvalidField as err:
                role.refusals.refuse("stream", src, err)
                continue
            op, task_id = ev[0], ev[1]
            if op == "F":
                key = ev[5] if len(ev) > 5 else None
                if task_id in table.live or task_id in table.tombstones or task_id in table.dead:
                    engine.finish_copy(task_id, ev[2], ev[3], ev[4], now, key=key)
                else:       # ahead of its copy: counted apart, refused past the bound (cluster.ends_ahead)
                    finish_unknown(engine, task_id, ev[2], ev[3], ev[4], now, key)
                continue
            task = table.live.get(task_id) or table.dead.get(task_id)
            if task is None:
                if op == "D" and len(ev) > 4 and ev[4] is not None and task_id in table.tombstones:
                    dead_without_args(role, src, ev, now)     # its placeholder here: the lost node's failure
                elif op == "S" and len(ev) > 4 and ev[4] and task_id in table.tombstones:
                    # An at-most-once placeholder's runner leased the attempt again (given back unstarted)
                    engine.lease_placeholder_again(task_id, ev[2], ev[5] if len(ev) > 5 else None)
                elif ((op == "S" and len(ev) >= 4) or op == "D") and task_id not in table.tombstones:
                    # Its copy is on its way (REPLICATE, handoff). With a tombstone
                    # here none will be installed: nothing would take the event.
                    # (a D event's record left out: the copy that comes has its arguments)
                    role.events.hold_early(src, ev[:4] if op == "D" else ev)
                elif op == "V":
                    role.events.take_early(task_id)     # revived: an earlier D no longer holds
                elif op == "R":
                    role.events.drop_given_back(src, task_id, ev[2])
                continue
            if op == "S":
                _started_elsewhere(role, src, task, ev, now)
            elif op == "T":
                if task.standby:
                    engine.defer(task, ev[2] + role.offset_for(task))
            elif op == "R":
                engine.retry_copy(task, ev[2], ev[4], ev[3], (ev[3] or now) + role.offset_for(task))
            elif op == "D":
                _dead_elsewhere(role, task, ev)
            elif op == "V":
                engine.revive_copy(task_id, now + role.offset_for(task), revived=ev[2] if len(ev) > 2 else None)
            elif op == "P":
                engine.dead_purge(None, [task_id])


def apply_early_event(role: ClusterRole, task: Task) -> None:
    """A copy was just installed: apply the STARTED or DEAD event that overtook it, if any."""
    found = role.events.take_early(task.id)
    if found is None:
        return
    src, ev = found
    with role.events.applying_remote():
        if ev[0] == "S":
            _started_elsewhere(role, src, task, ev, wall())
        else:
            _dead_elsewhere(role, task, ev)


def _dead_elsewhere(role: ClusterRole, task: Task, ev: list[Any]) -> None:
    """Another holder dead-lettered the task (a ``D`` event): so is this copy."""
    task.attempt = ev[2]
    role.engine.kill_copy(task, ev[3])


def counts_duplicate(me: str, other: str, holders: Sequence[str]) -> bool:
    """Whether this node (``me``) counts a run of a task on holder ``other``
    that it heard of while its own run of the task goes on: the one of the
    two ranked first in the task's ``holders`` does (a node not listed ranks
    after those listed; on a tie, the node id that sorts first). Both
    compute it from the same list, so when each hears of the other's run
    (each started before the other's STARTED event came) only one counts.
    When one alone hears, it is most often the first-ranked (the runner,
    whose STARTED the standby that took over never got): the duplicate is
    missed only when the second-ranked alone hears, i.e. the first-ranked
    started after it and never got its STARTED event."""
    def rank(node_id: str) -> tuple[int, str]:
        return (holders.index(node_id) if node_id in holders else len(holders)), node_id
    return rank(me) < rank(other)


def _running_twice(role: ClusterRole, src: str, task: Task, attempt: Any) -> None:
    """Another holder started ``task`` while it runs here: a duplicate run.
    Counted once in the cluster (:func:`counts_duplicate`): here, by every
    engine listener (STATUS ``cluster.duplicates``, and
    ``miyaq_duplicate_runs_total`` when the node has metrics), as the engine
    counts an attempt's DONE taken while another attempt runs; else only
    logged. Before 2026-12-06 it was counted in STATUS alone, by each holder
    that heard of the other run: never in ``/metrics``, and twice when both
    did."""
    info = {"also_started_on": src, "attempt": attempt}
    if counts_duplicate(role.node_id, src, task.holders):
        for listener in role.engine.listeners:
            listener.duplicate_run(task, info)
    else:
        _log.warning("duplicate", "task %s ran more than once (%s); counted by %s", task.id, info, src)


def _started_elsewhere(role: ClusterRole, src: str, task: Task, ev: list[Any], now: float) -> None:
    """Another holder started ``task`` (an ``S`` event, checked by
    :func:`~miyaq.protocol.eventspec.check_event`: its attempt an int, its
    lessee None or a name): this copy becomes a standby that waits past the
    runner's lease. Every copy of every task takes one, so it reads the
    copy's extras directly (a copy always has some: its holders); its wait
    past the runner's lease is :meth:`ClusterRole.offset_for`'s, its rank
    times the task's replica offset."""
    n = len(ev)
    attempt = ev[2]
    state = task.state
    if state == RUNNING:
        _running_twice(role, src, task, attempt)
        return
    if n > 4 and ev[4]:     # at most once: a placeholder, which takes the lessee's DONE if the runner dies
        role.engine.start_elsewhere(task, attempt, ev[5] if n > 5 else None, now, src)
        return
    if attempt > task.attempt:
        task.attempt = attempt
    if n > 5 and ev[5] is not None:
        note_lessee(task, attempt, ev[5])     # its worker may report it here if the runner's node dies
    extra = task.extra
    if extra is NO_EXTRA:
        task.standby = True
        rank = 0
    else:
        extra.standby = True
        rank = extra.rank
    if state == READY or state == SCHEDULED or state == RETRYING:
        role.engine.defer(task, ev[3] + rank * role.replica_offset(task), SCHEDULED)
