"""Storing one copy of a replicated task that another holder sent (a
REPLICATE's record, a handoff's, a SYNC answer's): :class:`CopyInstaller`.

A copy is placed by this node's own view of the ring, which may be older or
newer than the sender's: a node that is not a holder there refuses it (the
sender keeps its copy and asks again later). Installing is idempotent and
never brings back a finished task; a dead-lettered copy handed off to a
node whose copy waits there dead-letters it (the DEAD event may have gone to
the holders of an older ring).
"""
from __future__ import annotations

import logging
from collections.abc import Container
from typing import TYPE_CHECKING, Any

from miyaq.cluster.holder_events import apply_early_event
from miyaq.cluster.peer_clock import EXPIRED_AT_ONCE, moved
from miyaq.cluster.replicated_intake import is_resent
from miyaq.constants import MAX_QUERY
from miyaq.core.attempts import adopt_lessees
from miyaq.core.replicas import lost_key_error
from miyaq.errors import InvalidField
from miyaq.logs import LogLimiter
from miyaq.protocol.commands import DUPLICATE
from miyaq.protocol.recordrow import ROW_KEYS, task_from_row
from miyaq.protocol.recordspec import MAX_TIME, task_from_record
from miyaq.store.task import (
    CANCELLED, DEAD, NO_EXTRA, READY, RETRYING, RUNNING, SCHEDULED, Task, args_lost, revivals,
)

if TYPE_CHECKING:
    from miyaq.cluster.role import ClusterRole

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)      # a full node refuses whole batches: a few lines a minute


class CopyInstaller:
    """Installs copies into this node's engine, placed by its own view of the ring."""

    def __init__(self, role: ClusterRole) -> None:
        self.role = role
        self.engine = role.engine
        # Copies the REPLICATE being handled could not store because another
        # task holds their key here, the key's first holder (id -> that task).
        self.lost_keys: dict[str, str] = {}

    def install(self, record: Any, now: float, source: str, sender: str, shift: float = 0.0,
                rows: bool = False) -> bool:
        """Store (or update) this node's copy of a replicated or handed-off
        task, once it passed the checks a SUBMIT passes (``source`` and
        ``sender`` name where a refused one came from). Idempotent; never
        resurrects a finished task. ``rows``: ``record`` may be a row, a
        submit's copy in peer protocol 2 (:mod:`miyaq.protocol.recordrow`);
        without it, a record that is no map is refused.

        ``shift`` is how far this node's clock is ahead of the sender's
        (:func:`~miyaq.cluster.peer_clock.clock_shift`): a new copy's
        times move onto this node's clock by it (:func:`onto_this_clock`)."""
        role = self.role
        try:
            if rows and type(record) is list:
                task, fields = task_from_row(record, role.config), ROW_KEYS
            else:
                task, fields = task_from_record(record, role.config), record
            if not task.holders:
                raise InvalidField("a copy's record must list its holders", field="holders")
        except InvalidField as err:
            role.refusals.refuse(source, sender, err)
            return False
        holders = senders = list(task.holders)
        if role.view.members:
            # The sender's view of the ring may be older or newer than ours:
            # place the copy by our own view, and refuse it if we are not a
            # holder there (the sender keeps its copy and asks again later).
            replicas = task.replicas if "replicas" in fields else len(holders)
            holders = role.holders(task.key if task.key is not None else task.id, replicas)
        if role.node_id not in holders:
            return False
        engine = self.engine
        table = engine.table
        existing = table.live.get(task.id) or table.dead.get(task.id)
        if existing is not None:
            existing.holders = tuple(holders)
            existing.rank = holders.index(role.node_id)
            adopt_lessees(existing, task)     # a worker whose node died may report here
            if (task.state == DEAD and existing.state in (SCHEDULED, READY, RETRYING)
                    and revivals(task) >= revivals(existing)):
                # A holder hands off a copy it dead-lettered, and ours missed the
                # DEAD event (it went to the holders of an older ring): ours must
                # not run the task again. A copy running here reports for itself;
                # one retried here since (more revivals) is newer news than the sender's.
                with role.events.applying_remote():
                    existing.attempt = max(existing.attempt, task.attempt)
                    engine.kill_copy(existing, task.error)
            elif existing.state == DEAD and task.state != DEAD and revivals(task) > revivals(existing):
                # The sender retried it from the dead letters and our copy missed the V event.
                with role.events.applying_remote():
                    engine.revive_copy(existing.id, now + role.offset_for(existing, minimum=1),
                                       revived=revivals(task))
            elif task.state == RUNNING and task.lease_end and existing.state in (SCHEDULED, READY, RETRYING):
                self._wait_for_runner(existing, moved(task.lease_end, shift, EXPIRED_AT_ONCE))
            return True
        purged_at = table.purged.get(task.id) if task.state == DEAD else None
        if purged_at is not None and moved(task.created, shift) <= purged_at:
            # A dead letter purged here, and this copy is a stale one (a SYNC
            # answer served before its source heard of the purge, a handoff, a
            # late REPLICATE): not stored again (docs/cluster.md, "Purged dead
            # letters stay purged"). Only a dead copy made at or before the
            # purge, as a SYNC answer's purge marks rule (miyaq.cluster.sync):
            # a waiting one, or a dead one made after it, is a task submitted
            # again with the same id (until review39 such a dead one was
            # refused too, by a holder down while it was submitted). Before
            # 2026-12-07 a purge just after a holder's restart came back on
            # every holder from the resyncs.
            return True
        if task.id in table.tombstones:     # (no Tombstone built only to be dropped)
            if task.state == DEAD and args_lost(task) is not None:
                # Another holder dead-lettered an at-most-once task without its
                # arguments (its runner's node lost) and this node missed the D
                # event: its started-elsewhere placeholder becomes that dead
                # letter (any other tombstone stays: miyaq.core.placeholders).
                task.holders = tuple(holders)
                task.rank = holders.index(role.node_id)
                try:
                    with role.events.applying_remote():
                        engine.dead_without_args(task, task.error, now)
                except InvalidField as err:     # not at-most-once, or a new queue past MAX_QUEUES
                    role.refusals.refuse(source, sender, err)
                    return False
                return True
            # Over already: not stored. If this node heard the end first (no
            # copy then), the copy is counted now, as a stored one would be;
            # a tombstone made without the key (a cancel ahead of the copy
            # from a node whose CANCEL carried none) takes the copy's.
            if task.key is not None:
                role.cancels.take_key(task.id, task.key)
            engine.count_late_copy(task)
            table.release_end_ahead(task.id)    # its copy came: a finished task's tombstone now (cluster.ends_ahead)
            return True
        # A copy lists its holders (checked above): its extras are its own,
        # written directly rather than through the task's properties.
        extra = task.extra
        if extra is NO_EXTRA:
            extra = task.extra = NO_EXTRA.copy()
        extra.holders = tuple(holders)
        if shift:
            onto_this_clock(task, shift)
        state = task.state
        task.state = SCHEDULED
        rank = extra.rank = holders.index(role.node_id)
        # ``eta`` is the task's own, as every holder sends it: this copy's
        # extra wait is its ``copy_wait`` (Task.due), never added to ``eta``.
        # Before 2026-12-05 each holder added its wait to ``eta`` and sent
        # that on, and the next holder added its own again: a delayed task
        # started an offset later at each handoff. (A record from an older
        # node still carries its copy's wait in ``eta``: a one-time extra
        # wait, not one per hop -- docs/cluster.md, "Handoff".)
        not_started = (source == "sync" and _not_started(state, task, fields)
                       and task.created >= role.view_since + role.config.replica_offset)
        # A SYNC answer's copy of a task no holder has started, which this node
        # lacks (``not_started``): its REPLICATE is most likely still on its way
        # (the answer came on another connection and overtook it). It is placed
        # as that REPLICATE would place it -- ready at once on the first holder;
        # as a standby copy of a task under way elsewhere, it would wait an
        # offset, and a holder after it would take the task over one to three
        # offsets late (`miyaq bench --cluster 3` runs that started under a
        # resync). Only for a task made an offset or more after this node took
        # its view of the ring: one made earlier may have been placed by an
        # older ring, whose first holder may have started it already without
        # the sender knowing (a CI run of the rolling restart saw such a task
        # start on two nodes 7 ms apart, the ring changing).
        # This copy's wait past eta is its rank (at least 1 for a standby
        # copy) times the task's offset (ClusterRole.offset_for, read once).
        offset = role.replica_offset(task)
        if state == DEAD:
            # Stored as a waiting copy, then dead-lettered: both go to the log like
            # any copy's, so a restart keeps it (the sender drops its own once
            # every new holder confirmed).
            extra.standby = True
            due = max(task.eta, now)
        elif "state" in fields and not not_started:    # a handed-off copy of a task under way elsewhere
            extra.standby = True
            if rank == 0 and _not_started(state, task, fields):
                # The task's first holder now, and nobody started it yet by the
                # sender's record: it asks at the task's eta (only silence lets
                # it run), not an offset later -- the offset is the first
                # holder's time to announce a start, and that is this node now.
                due = max(task.eta, now)
            else:
                due = max(task.eta, task.lease_end, now) + max(rank, 1) * offset
        else:
            # Views that disagree (a ring change under way) can make two nodes
            # rank 0 of one task: a copy the sender placed differently waits an
            # offset (the views converge, handoff re-ranks it) and asks first.
            disagree = senders != holders
            # Just after a freeze a REPLICATE may have waited in the socket while
            # the sender's client resent the task and another holder ran it.
            standby = extra.standby = rank > 0 or is_resent(task) or disagree or role.catching_up()
            due = task.eta + max(rank, 1 if disagree else 0) * offset
            if standby:
                # A REPLICATE that arrives late (a link that stalled) must not make
                # its copy ask at once: the other holders may not have theirs yet.
                due = max(due, now + max(rank, 1) * offset)
            else:
                role.standby.key_checks.mark(task)    # new to its key here: asks about it at eta first
        extra.copy_wait = min(max(due - task.eta, 0.0), MAX_TIME)     # what the replay takes back
        try:
            status, holder = engine.submit(task, now, copy=True)
            if (status == DUPLICATE and holder != task.id and rank == 0 and "state" in fields
                    and role.standby.key_checks.yield_to(holder, task.id, now)):
                status, holder = engine.submit(task, now, copy=True)    # accepted before: the key check gave way
        except Exception as exc:   # Busy, ShuttingDown, too many queues: not stored
            _log.warning("copy", "could not store a copy of %s: %s", task.id, exc)
            return False
        if status == DUPLICATE and holder != task.id and task.rank == 0:
            self._lost_key(task, holder, now)
            return False
        if status == "accepted" and state == DEAD:
            with role.events.applying_remote():       # the sender's news, not this node's
                engine.kill_copy(task, task.error)
        elif status == "accepted" and role.events.early:
            apply_early_event(role, task)    # its runner's STARTED (or DEAD) event came first
        return status == "accepted" or task.id in table.live or task.id in table.dead


    def _wait_for_runner(self, task: Task, lease_end: float) -> None:
        """The runner's own record of ``task`` came (a node leaving the ring
        hands off what it runs, with its lease end) after another holder's
        copy of it, already here: this copy waits at least until that lease
        ends, as it would had the runner's record come first (docs/cluster.md,
        "Handoff": a copy of a task running elsewhere waits until its lease
        ends). Before 2026-12-05 it kept the earlier record's time: a node
        drained with ``miyaq leave`` while it ran a task had the task started
        again by a new holder one offset later, the first run still going."""
        role = self.role
        until = lease_end + role.offset_for(task, minimum=1)
        if task.timer_at is not None and task.timer_at >= until:
            return
        with role.events.applying_remote():
            task.standby = True
            role.engine.defer(task, until, SCHEDULED)

    def _lost_key(self, task: Task, holder: str, now: float) -> None:
        """This node, the first holder of ``task``'s key, refused its copy:
        another task with that key (``holder``) came first. Two submits of
        one key through two nodes at once reach the holders in different
        orders, and each keeps whichever came first; the first holder's order
        decides. Its tombstone says so -- cancelled, as a duplicate -- so the
        other holders' copies, which ask it before they run, end the same way
        instead of running the task a second time."""
        _log.log(logging.INFO, "lost key", "task %s: key %r is held by task %s here, the key's first holder: "
                 "ended as a duplicate", task.id, task.key, holder)
        error = lost_key_error(task.key, holder)
        with self.role.events.applying_remote():
            self.engine.finish_copy(task.id, CANCELLED, None, error, now)
        # The other holders drop theirs at once (and let go of the key), rather
        # than when their standby copies ask; the sender answers its client.
        self.role.events.forward_finished(task.id, (CANCELLED, None, error),
                                          [h for h in task.holders if h != self.role.node_id])
        if len(self.lost_keys) < MAX_QUERY:
            self.lost_keys[task.id] = holder


def onto_this_clock(task: Task, shift: float) -> None:
    """Move the times of a copy's record -- stamped on its sender's wall
    clock -- onto this node's, ``shift`` seconds ahead of the sender's:
    ``created``, ``eta``, ``expires`` and a running task's ``lease_end``.
    So a task accepted through a node whose clock is off is due, expires
    and is taken over when its accepting node meant, on every holder: a
    ready task is ready at once on its first holder, not ``-shift`` late or
    early, and a ``ttl`` is not eaten by the skew (before 2026-12-05 a task
    with a ttl shorter than the skew expired unrun on every holder whose
    clock was ahead of the accepting node's). ``expires`` 0.0 (never) stays
    0.0; one moved to or before the epoch is :data:`EXPIRED_AT_ONCE`, as is
    a lease end. Every time stays in the range a stored time has
    (:func:`~miyaq.cluster.peer_clock.moved`)."""
    if not shift:
        return
    task.created = moved(task.created, shift)
    task.eta = moved(task.eta, shift)
    if task.expires:
        task.expires = moved(task.expires, shift, EXPIRED_AT_ONCE)
    if task.lease_end:
        task.lease_end = moved(task.lease_end, shift, EXPIRED_AT_ONCE)


def _not_started(state: str, task: Task, record: Container[str]) -> bool:
    """True if a transferred copy's record says no holder started its task
    (as far as its sender knows): waiting or ready, no attempt, no lease."""
    return state in (SCHEDULED, READY) and not task.attempt and "lessee" not in record and "lease_end" not in record
