"""Cancels kept ahead of their copy: the tombstone a task's first holder
keeps when a peer's CANCEL reaches it before the task's copy does (the
asker's REPLICATE, or a handoff, still on its way; docs/cluster.md,
"Cancelling at any holder").

The tombstone says ``cancelled`` and holds the task's key when the CANCEL
carried one, so the copy is not stored when it comes and the key stays
taken for the dedup window, as a cancel of the copy would. It is told to
the engine's listeners (:meth:`EngineListener.tombstone_kept
<miyaq.core.listener.EngineListener.tombstone_kept>`), so the node's log
holds it as it holds any other end (an ``F`` record) and a restart keeps
it: before 2026-12-06 it was in memory only, and a first holder restarted
before the copy came stored the copy and ran the task the caller had been
told was cancelled.

These tombstones are bounded apart from those of finished tasks
(:attr:`TaskTable.ahead <miyaq.store.table.TaskTable.ahead>`, at most
``max_ahead``: ``max_tombstones``, up to 20,000), so they never push a
finished task's tombstone out -- its result, its dedup key. Before
2026-12-06 they shared ``max_tombstones``: a peer (without ``--secure``,
anyone who claims to be a member; with it, a buggy member) that sent
CANCELs of ids nobody had pushed out every finished task's tombstone,
and a second submit of a finished task's key ran it again. Once the
bound is reached, a new cancel ahead is refused (``Busy``, nothing kept):
the asker answers from its own copy, ``unconfirmed``, as for a first
holder that did not answer. The kept ones stay: each was answered
``cancelled`` to a caller, and dropping one whose copy is still on its
way would let the task run. The refusals are counted
(:attr:`CancelsAhead.refused`) and logged at most once a minute, with
the count.

Their records are marked ``"kept_ahead": true`` (:data:`KEPT_AHEAD`, in
the log and in a compaction's snapshot while the table counts them), so a
replay counts them apart again. A log of a build before the mark holds
it on none; such a record replays as a finished task's tombstone, but
for one marked ``"ahead"`` (below), which is one kept ahead. A build
before the mark ignores the field.

A tombstone kept without a key (the asker is of a build whose CANCEL
carried none) is the only kind that may take a key later, the copy's
(:meth:`CancelsAhead.take_key`): such ids are remembered here, at most
``MAX_KEYLESS_AHEAD``, the oldest forgotten first, and their records are
marked ``"ahead": true`` (in the log and in a compaction's snapshot while
they are remembered), so a replay remembers them again
(:meth:`CancelsAhead.restored`). A build without this module reads the
marked record as an ordinary cancelled tombstone.
"""
from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from miyaq.errors import Busy
from miyaq.logs import LogLimiter
from miyaq.store.table import MAX_AHEAD, Tombstone
from miyaq.store.task import CANCELLED, Task

if TYPE_CHECKING:
    from miyaq.core.engine import Engine

MAX_KEYLESS_AHEAD = 10_000
"""Cancels kept ahead of their copy without a key remembered at once, at
most: only their tombstones may take a key later."""
AHEAD = "ahead"
"""The field of an ``F`` record that marks a tombstone kept ahead of its copy
without a key (``True``; absent otherwise)."""
KEPT_AHEAD = "kept_ahead"
"""The field of an ``F`` record that marks a tombstone kept ahead of its
copy, with a key or without (``True``; absent otherwise): counted apart
from ``max_tombstones`` (since 2026-12-06, a later build than ``ahead``)."""
END_AHEAD = "end_ahead"
"""The field of an ``F`` record, in a compaction's snapshot, that marks a
tombstone made on a peer's word for a task the node had no trace of
(``True``; absent otherwise): counted apart from ``max_tombstones``
(:mod:`miyaq.cluster.ends_ahead`; since 2026-12-06, a later build than
``kept_ahead``)."""

logger = logging.getLogger(__name__)
_log = LogLimiter(logger, burst=1, per=60.0)    # a flood of refusals: one line a minute, with the count


class CancelsAhead:
    """The cancels an engine keeps ahead of their copies (module doc)."""

    def __init__(self, engine: Engine) -> None:
        # A weak reference: the engine holds this object, and a cycle through
        # the engine would outlive its last reference until a collection --
        # and the tasks its table holds in containers the collector does not
        # see (miyaq.store.task) until a second one.
        self.engine: Engine = weakref.proxy(engine)
        #: Ids of the tombstones kept ahead without a key, oldest first (at
        #: most MAX_KEYLESS_AHEAD): the only ones a key may be given later.
        self.keyless: OrderedDict[str, None] = OrderedDict()
        #: Cancels ahead refused because the table held ``max_ahead`` of them.
        self.refused = 0

    def keep(self, task_id: str, key: str | None, now: float) -> Tombstone:
        """Keep a cancel of ``task_id``, which this node does not know (no
        live or dead task, no tombstone), as a ``cancelled`` tombstone
        holding ``key`` (None: the task has none, or the asker did not
        say), counted apart from the finished tasks' (module doc), and
        tell the listeners (the log writes it). Returns the tombstone.
        ``ValueError``, nothing changed, for a task this node knows;
        ``Busy`` (``reason: "cancels_ahead"``), nothing changed, when the
        table holds ``max_ahead`` of them already (counted, logged at a
        bounded rate)."""
        engine = self.engine
        table = engine.table
        if task_id in table.live or task_id in table.dead or task_id in table.tombstones:
            raise ValueError(f"task {task_id} is known here: a cancel is kept ahead only of a copy not come yet")
        if len(table.ahead) >= table.max_ahead:
            self.refused += 1
            _log.warning("full", "%d cancel(s) ahead of their copy refused so far: %d are kept, the most "
                         "(max_tombstones, up to %d); the askers answer unconfirmed. A peer that cancels "
                         "tasks that never come here?", self.refused, len(table.ahead), MAX_AHEAD)
            raise Busy(f"{len(table.ahead)} cancels ahead of their copy are kept here, the most it keeps: "
                       f"the cancel of task {task_id} is not kept", reason="cancels_ahead")
        table.hold_ahead(task_id)        # first: its tombstone does not push a finished task's out
        engine.finish_copy(task_id, CANCELLED, None, None, now, key=key)
        stone = table.tombstone(task_id)
        if stone is None:                # (finish_copy always makes one for an unknown id)
            table.release_ahead(task_id)
            raise ValueError(f"task {task_id}: no tombstone was made")
        if key is None:
            self._remember(task_id)
        for listener in engine.listeners:
            listener.tombstone_kept(stone, key is None)
        return stone

    def take_key(self, task_id: str, key: str) -> bool:
        """The tombstone of a cancel kept here without a key (:attr:`keyless`)
        takes ``key`` -- its copy's, or a later CANCEL's -- for what is left
        of the dedup window, as the task's own end would, unless another
        task holds the key here (live, dead, or ended since); the new
        tombstone is told to the listeners (the log writes it). Any other
        tombstone is left as it is (docs/cluster.md: a peer could otherwise
        make a finished task's tombstone hold an unrelated key). Returns
        whether the tombstone took the key."""
        if task_id not in self.keyless:
            return False
        del self.keyless[task_id]
        table = self.engine.table
        if task_id not in table.ahead:      # forgotten (age, pushed out) and made again since
            return False
        stone = table.tombstone(task_id)
        if stone is None or stone.key is not None or stone.state != CANCELLED or table.keys.get(key) is not None:
            return False
        ghost = Task(task_id, stone.queue, None, b"", key=key)
        ghost.error, ghost.attempt = stone.error, stone.attempt
        kept = table.bury(ghost, stone.state, stone.result, stone.finished)
        table.key_finished(key, task_id)
        for listener in self.engine.listeners:
            listener.tombstone_kept(kept, False)
        return True

    def restoring(self, record: dict[str, Any]) -> None:
        """The log's ``record``, an ``F`` record, is about to be replayed: its
        tombstone is counted among the cancels kept ahead if the record
        says it is one (:data:`KEPT_AHEAD`, or :data:`AHEAD` from a build
        before that mark), or among the ends heard ahead of their copy if
        it says so (:data:`END_AHEAD`). All of them, past their bound too
        (a lower ``max_tombstones`` since): each cancel was answered
        ``cancelled``, each end is a task's outcome; new ones are refused
        until they are fewer."""
        if record.get(KEPT_AHEAD) is True or record.get(AHEAD) is True:
            self.engine.table.hold_ahead(record["id"])
        elif record.get(END_AHEAD) is True:      # an end heard ahead of its copy (miyaq.cluster.ends_ahead)
            self.engine.table.hold_end_ahead(record["id"])

    def restored(self, record: dict[str, Any], stone: Tombstone) -> None:
        """``stone`` was rebuilt from the log's ``record``: remembered again
        if the record marks a cancel kept ahead without a key (``ahead``)
        and the tombstone still has none and says ``cancelled``; forgotten
        otherwise (a later record of the id: the key it took, :meth:`take_key`).
        The replay calls this as it reads each record, so the latest decides."""
        if record.get(AHEAD) is True and stone.key is None and stone.state == CANCELLED:
            self._remember(stone.id)
        elif self.keyless:
            self.keyless.pop(stone.id, None)

    def marked(self) -> tuple[frozenset[str], frozenset[str]]:
        """The ids whose records carry the ``ahead`` mark now, and those
        that carry the ``kept_ahead`` mark: copies, for a compaction's
        snapshot that is read while the node goes on."""
        return frozenset(self.keyless), frozenset(self.engine.table.ahead)

    def _remember(self, task_id: str) -> None:
        keyless = self.keyless
        keyless[task_id] = None
        keyless.move_to_end(task_id)
        while len(keyless) > MAX_KEYLESS_AHEAD:
            keyless.popitem(last=False)


def tombstones_apart(engine: Engine) -> dict[str, int]:
    """STATUS ``tombstones_apart``: the tombstones a node counts apart from
    ``max_tombstones``, their bounds and the refusals past them -- cancels
    kept ahead of their copy (this module), ends heard ahead of their
    copy (:mod:`miyaq.cluster.ends_ahead`) and the marks of dead letters
    purged (:class:`~miyaq.store.purge_marks.PurgeMarks`: at most
    ``max_tombstones``, the oldest forgotten past it)."""
    table = engine.table
    return {"cancels_ahead": len(table.ahead), "max_cancels_ahead": table.max_ahead,
            "cancels_ahead_refused": engine.cancels_ahead.refused, "ends_ahead": len(table.ends_ahead),
            "max_ends_ahead": table.max_ends_ahead, "ends_ahead_refused": table.ends_ahead_refused,
            "purged": len(table.purged), "max_purged": table.max_tombstones}
