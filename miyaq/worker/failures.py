"""What a worker logs of an attempt that did not succeed (logger
``miyaq.worker.tasks``): a line naming the task -- id, name, attempt,
queue --, the error's type and message, and the handler's traceback, in
every pool (a processes-pool child's traceback comes back as the attempt's
error and is logged by the worker) and for ``async def`` handlers.

The level says what the worker knows of the task's fate. It does not know
whether another attempt follows: ``max_retries`` is the producer's, sent
to the node with the task, never to the worker. So:

- the handler raised (any exception, ``SystemExit`` too): WARNING, with the
  traceback -- the node runs it again unless its retries are spent, and
  then logs the dead letter itself;
- the attempt failed for good, whatever ``max_retries`` says (its result
  too large or not packable, a body that is not ``[args, kwargs]``): ERROR;
- ``Retry`` and ``Reject`` raised on purpose, and a cancel: INFO, without a
  traceback (the handler chose it);
- a timeout: nothing here, the watchdog's own WARNING said it;
- a name the worker's app has no handler for (``UnknownTask``: a typo in
  the producer, a worker deployed without the module that registers it):
  WARNING, with what the app has (:func:`log_unknown`) -- retried unless
  its retries are spent, as the node may find a worker that has it.

A poison task failing thousands of times a second must not flood the log:
each task name has at most :data:`LINES_PER_MINUTE` such lines a minute of
each kind (failures, retries, rejects, cancels), and the next line let
through says how many were left out (``miyaq.logs.LogLimiter``). Task
names are those of the worker's app, so the kinds are bounded; unknown
names, which a producer chooses freely, share one kind (``unknown task``). A task
that succeeds costs nothing here: only a FAILED report calls
:func:`log_outcome`. Before 2026-12-06 a worker logged none of this, even
at DEBUG: the error was the node's (``miyaq status ID``) and only its
dead letter was logged.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..logs import LogLimiter, escape_controls

if TYPE_CHECKING:
    from .jobs import Job

logger = logging.getLogger("miyaq.worker.tasks")
#: Lines a minute for each task name and kind of line; the rest are counted.
LINES_PER_MINUTE = 5
_log = LogLimiter(logger, burst=LINES_PER_MINUTE)

#: The ``extra`` key a record's traceback text travels in to :class:`TracebackText`.
TRACEBACK_KEY = "miyaq_traceback"
#: What every line of a logged traceback starts with: none starts at the margin.
TRACEBACK_INDENT = "    "


class TracebackText(logging.Filter):
    """Put the traceback text a record carries (the attempt's error, as
    formatted where the handler ran: a child process's too) where every
    formatter prints a traceback, after the message on lines of its own,
    each indented by :data:`TRACEBACK_INDENT`. Its control characters
    other than the line breaks are escaped, as in miyaq's messages
    (docs/configuration.md, "Every process: what goes to the log"). The
    indent is what keeps a line of the exception's message -- text a
    producer may have sent, ``ValueError("ok\\n2026-12-06 ... ERROR ...")``
    -- from starting at the margin, where it would read as a record of its
    own (review22: such a line stood at column 0 of the worker's log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.__dict__.pop(TRACEBACK_KEY, None)
        if isinstance(text, str) and text:
            record.exc_text = "\n".join(TRACEBACK_INDENT + escape_controls(line)
                                         for line in text.rstrip("\n").split("\n"))
        return True


if not any(isinstance(f, TracebackText) for f in logger.filters):
    logger.addFilter(TracebackText())

#: Error types of an interruption by the worker or the node, and what the line says of each.
_CANCELS = {"Aborted": "was cancelled", "Interrupted": "was interrupted by the worker"}


def log_outcome(wid: str, job: Job, error: dict[str, Any]) -> None:
    """Log one failed attempt of ``job`` (``error``: the map sent in its
    FAILED) at the level its kind has (see the module's docstring),
    bounded per task name and kind. Never raises for what ``error`` holds."""
    kind = error.get("type")
    message = error.get("message")
    where = (wid, job.task_id, job.name, job.attempt, job.queue)
    if kind == "Timeout":
        return      # the watchdog's line
    if kind == "Retry":
        delay = error.get("delay")
        _log.log(logging.INFO, f"{job.name} retry", "worker %s: task %s (%s) attempt %s on queue %s asked to be "
                 "retried (Retry: %s), %s", *where, message,
                 f"in {delay:g}s" if isinstance(delay, (int, float)) else "after its backoff")
    elif kind == "Reject":
        _log.log(logging.INFO, f"{job.name} reject", "worker %s: task %s (%s) attempt %s on queue %s rejected "
                 "itself (Reject: %s): not retried, the node dead-letters it", *where, message)
    elif kind in _CANCELS:
        _log.log(logging.INFO, f"{job.name} cancel", "worker %s: task %s (%s) attempt %s on queue %s %s",
                 *where, _CANCELS[kind])
    elif error.get("retry"):
        _log.log(logging.WARNING, f"{job.name} failure", "worker %s: task %s (%s) attempt %s on queue %s failed: "
                 "%s: %s (the node runs it again unless its retries are spent)", *where, kind, message,
                 extra={TRACEBACK_KEY: error.get("traceback")})
    else:
        _log.log(logging.ERROR, f"{job.name} failure", "worker %s: task %s (%s) attempt %s on queue %s failed for "
                 "good: %s: %s (not retried)", *where, kind, message, extra={TRACEBACK_KEY: error.get("traceback")})


def log_unknown(wid: str, task_id: str, name: object, attempt: object, queue: object, message: str) -> None:
    """Log one attempt of a task whose ``name`` the worker's app has no
    handler for, at WARNING with ``message`` (what the app has instead).
    Every such line is of one kind, bounded as the others are: the names
    are the producer's, not the app's, so a flood of new ones must not
    each have lines of their own. Before 2026-12-07 the worker said
    nothing of it (only the node's dead letter, attempts later)."""
    _log.log(logging.WARNING, "unknown task", "worker %s: task %s (%s) attempt %s on queue %s failed: "
             "UnknownTask: %s (the node runs it again unless its retries are spent; is the module that "
             "registers it imported by this worker's app?)", wid, task_id, name, attempt, queue, message)
