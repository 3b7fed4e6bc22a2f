"""Two or more submits of one id unacknowledged at once in one client (a
retry with the same id made before the first was answered, two web
requests carrying the same order id): copies of the id in flight
(:class:`IdCopies`, one a :class:`~miyaq.client.submits.SubmitPipeline`).

The first copy sent is ``pending[id]``; one sent while it is unacknowledged
joins it (:meth:`Pending.join <miyaq.client.pending.Pending.join>`), keeping
its own node, deadline and waiter. An answer that the id is stored
(``accepted``, or ``duplicate`` of that id) resolves every copy: a submit
of a stored id is a duplicate, which counts as accepted (docs/semantics.md).
Anything else is the answer to one copy -- the one sent to the node that
answered (:meth:`Pending.copy_from <miyaq.client.pending.Pending.copy_from>`)
-- and only that copy's: a refusal, a retry, a ``key`` duplicate, its
deadline, its connection lost. When the first copy leaves so, the next
takes its place (:meth:`IdCopies.pop_head`), and a copy retried joins
whichever is first when it is sent again.

Before 2026-12-07 the first answer resolved every copy: one refused for its
own content, or one past its deadline, failed the others although another's
copy was stored; and the answer to a later copy that came while the first
waited for a retry was dropped. Before that, the later replaced the earlier
in ``pending``: the earlier was never resolved and kept its window slot.

Like the pipeline, this touches no socket and no clock, and is called only
by whoever holds the client's core.
"""
from __future__ import annotations

from .capped_submits import CappedSubmits
from .pending import Pending


class IdCopies:
    """The copies in flight of each id in ``pending`` (the pipeline's
    unacknowledged submits by id, the same dict for its life)."""

    def __init__(self, pending: dict[str, Pending], capped: CappedSubmits, ack_timeout: float) -> None:
        self._pending = pending
        self._capped = capped
        self._ack_timeout = ack_timeout

    def pop_head(self, task_id: str) -> Pending:
        """Take the first copy of ``task_id`` out of ``pending`` without an
        answer that the id is stored (to retry it, or to fail it alone): the
        oldest copy joined to it, if any, takes its place, its answer still
        to come. Its place is at the end of ``pending``: its acknowledgement
        is seen overdue once those before it are (at most ``ack_timeout``
        late)."""
        p = self._pending.pop(task_id)
        joined = p.joined
        if joined:
            p.joined = None
            head = joined.pop(0)
            head.joined = joined or None
            self._pending[task_id] = head
            if head.deadline < head.sent + self._ack_timeout:
                self._capped.add(head)
        return p

    def take(self, copy: Pending, head: Pending) -> None:
        """Take ``copy`` out of its id's copies in flight (``head``: the first)."""
        if copy is head:
            self.pop_head(head.wire["id"])
            return
        joined = head.joined
        assert joined is not None
        joined.remove(copy)
        if not joined:
            head.joined = None

    def on_node(self, node: int) -> list[Pending]:
        """The joined copies sent to ``node``, taken out of their ids' copies
        in flight (the first copies, in ``pending``, are the caller's)."""
        copies: list[Pending] = []
        for head in self._pending.values():
            if head.joined:
                on_node = [q for q in head.joined if q.node == node]
                for q in on_node:
                    self.take(q, head)
                copies.extend(on_node)
        return copies
