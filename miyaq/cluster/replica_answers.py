"""A holder's answer to a coordinator's REPLICATE, or its connection lost
before it answered: what that does to the submits waiting for their
replicas. :class:`ReplicaAnswers` is a base of
:class:`~miyaq.cluster.replicated_intake.ReplicatedIntake`, which keeps those
submits (``pending``), sends REPLICATE (``_send``, whose callbacks are
these) and acknowledges or rejects a submit (``_maybe_ack``, ``_reject``);
docs/cluster.md, "What a holder's trouble costs the submit".

A task the answer lists counts that holder once (however many answers say
so); one it leaves out was not stored there, and never will be from this
try (not a holder by its own view of the ring while it changes, or full),
nor was one whose connection closed first. Once too few holders are left
to reach ``min_acks`` the submit is rejected at once (the client resends
it) -- for a keyed task, once its key's first holder answered too, since
that answer may make it a duplicate (:mod:`~miyaq.cluster.key_verdicts`
reads which). Silence decides nothing here: the intake's deadline sweep
does. An answer's news of tasks that ended on that holder (``finished``,
``dead``) goes to the role's copies, whether or not the submit was
already answered.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from miyaq.cluster.key_verdicts import key_duplicates
from miyaq.logs import LogLimiter, clipped
from miyaq.protocol.commands import DUPLICATE
from miyaq.protocol.eventspec import confirmed_ids

if TYPE_CHECKING:
    from miyaq.cluster.replicated_intake import Outgoing, _Pending
    from miyaq.cluster.role import ClusterRole
    from miyaq.errors import MiyaqError, NotEnoughReplicas

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # a holder refusing every copy refuses every submit's: a few lines a minute

NOT_STORED = "not a holder by its view of the ring, or full"
"""Why a holder's answer left a copy out, when the answer does not say."""


def refusal(holder: str, answer: dict[str, Any]) -> str:
    """Why ``holder``'s REPLICATE answer stored nothing, as the answer says:
    ``busy: "storage"`` (since 2026-12-07) is a holder whose log cannot be
    written, ``message`` its cause in a few words (untrusted: clipped);
    else :data:`NOT_STORED`."""
    if answer.get("busy") != "storage":
        return NOT_STORED
    cause = answer.get("message")
    shown = clipped(cause, 200) if isinstance(cause, str) and cause else "no cause given"
    return f"{holder} cannot write its log: {shown}"


class ReplicaAnswers:
    """The holders' answers to REPLICATE, and their connections lost before
    an answer: the part of a cluster's intake that counts them."""

    if TYPE_CHECKING:   # what the intake provides
        role: ClusterRole
        pending: dict[str, _Pending]
        unsent: dict[str, list[Outgoing]]
        release: Callable[[], None]

        def _maybe_ack(self, task_id: str, entry: _Pending) -> None: ...

        def _answer(self, entry: _Pending, result: list[Any]) -> None: ...

        def _reject(self, task_id: str, entry: _Pending, message: str,
                    error: type[MiyaqError] = NotEnoughReplicas) -> None: ...

    def _callback(self, holder: str, sent: dict[str, list[str]]) -> Callable[[dict[str, Any] | None], None]:
        return lambda answer: self._replicated(holder, sent, answer)

    def _on_lost(self, holder: str, sent: dict[str, list[str]]) -> Callable[[], None]:
        return lambda: self._lost(holder, sent)

    def _lost(self, holder: str, sent: dict[str, list[str]]) -> None:
        """The connection to ``holder`` closed before it answered the
        REPLICATE of ``sent``: it may have read it and exited, and no answer
        will come. It counts as a holder that did not store them: a submit
        that can no longer reach ``min_acks`` is rejected now (the client
        resends it), not at ``replication_timeout``."""
        why = f"the connection to {holder} closed before it confirmed its copy"
        rejected = [task_id for task_id in sent if self._not_stored(holder, task_id, why)]
        if rejected:
            self.release()

    def _not_stored(self, holder: str, task_id: str, why: str) -> bool:
        """``holder`` did not store ``task_id`` (``why``); True if that
        made its submit hopeless, and it was rejected."""
        entry = self.pending.get(task_id)
        if entry is None or holder not in entry.asked or holder in entry.stored or holder in entry.failed:
            return False
        entry.failed.append(holder)
        if not entry.hopeless():
            return False
        judge = entry.judge
        if (judge is not None and holder != judge and judge not in entry.failed and judge not in entry.stored
                and judge not in self.unsent):
            # A keyed task, refused by a later holder -- maybe because another
            # task holds its key there -- before its key's first holder
            # answered (its copy sent: a holder out of reach is not waited
            # for): that answer decides (``duplicates``: the submit is a
            # duplicate; a refusal, or a copy stored that leaves too few,
            # rejects it then; silence, at the deadline). Before 2026-12-06
            # it was rejected at once, and the client's resend was answered
            # ``duplicate`` of its own id, ended meanwhile as a duplicate.
            return False
        self._reject(task_id, entry, f"task {task_id} stored on {entry.got} of the {entry.need} holders needed: "
                                     f"{', '.join(entry.failed)} did not store it ({why}); resubmit with the "
                                     "same id")
        return True

    def _replicated(self, holder: str, sent: dict[str, list[str]], answer: dict[str, Any] | None) -> None:
        """``holder`` answered the REPLICATE of the tasks ``sent`` (id ->
        the holders the record named). A task the answer does not list was
        not stored there (and never will be from this try): once too few
        holders are left to confirm it, it is rejected now."""
        if answer is None:
            return   # silence, an error, or not sent: the deadline sweep decides
        finished = answer.get("finished")
        if isinstance(finished, dict) and finished:
            # A resend of a task that ran while another holder was down; done
            # even when the submit was already answered.
            self.role.copies.finish_known(holder, finished, sent, answer.get("results_left_out"))
        dead = answer.get("dead")
        if isinstance(dead, dict) and dead:
            self.role.copies.dead_known(holder, dead, sent)
        stored = confirmed_ids(answer)
        self._lost_keys(holder, sent, answer)
        why = refusal(holder, answer)
        if why is not NOT_STORED:
            _log.warning("storage", "%s refused %d cop%s: %s; a submit that needs it fails at once until it "
                         "can write again", holder, len(sent), "y" if len(sent) == 1 else "ies", why)
        rejected = False
        for task_id in sent:
            if task_id in stored:
                entry = self.pending.get(task_id)
                if entry is not None and holder in entry.asked:
                    entry.stored.add(holder)
                    self._maybe_ack(task_id, entry)
                    if task_id in self.pending and entry.failed and entry.hopeless():
                        # The key's first holder stored it after a later holder's refusal waited for it.
                        self._reject(task_id, entry, f"task {task_id} stored on {entry.got} of the {entry.need} "
                                     f"holders needed: {', '.join(entry.failed)} did not store it; resubmit "
                                     "with the same id")
                        rejected = True
            elif self._not_stored(holder, task_id, why):
                rejected = True
        if rejected:
            self.release()

    def _lost_keys(self, holder: str, sent: dict[str, list[str]], answer: dict[str, Any]) -> None:
        """Answer ``duplicate`` the submits still waiting that ``holder``'s
        REPLICATE answer shows to be duplicates of the task holding their key
        (:func:`~miyaq.cluster.key_verdicts.key_duplicates`: whose word counts)."""
        ended = answer["finished"] if isinstance(answer.get("finished"), dict) else {}
        claimed: dict[str, tuple[str | None, str]] = {}
        for task_id, winner in key_duplicates(holder, sent, answer, self.role.view.epoch).items():
            entry = self.pending.get(task_id)
            if entry is not None and entry.key is not None:    # a keyless task is nobody's duplicate
                del self.pending[task_id]
                self._answer(entry, [task_id, DUPLICATE, winner])
                if task_id not in ended:      # the copies end so ('finished' ones already did)
                    claimed[task_id] = (entry.key, winner)
        if claimed:
            self.role.copies.end_as_duplicates(holder, claimed, sent)
