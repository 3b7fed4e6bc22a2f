"""A periodic schedule: its wire form (READY's ``periodic`` list), its
validation and its ticks.

A schedule names a task handler and *either* ``every`` (seconds, float,
>= 0.1) *or* ``cron`` (a standard 5-field expression or a macro such as
``@hourly``, evaluated in UTC so every node computes the same ticks).

Ticks are integer milliseconds since the unix epoch:

* ``every``: the multiples of ``every`` since the epoch (``every=60`` fires
  at each whole UTC minute, ``every=86400`` at UTC midnight);
* ``cron``: the times the expression matches.

The task fired for a tick has the deterministic id
``periodic-<name>-<tick in unix seconds>`` (``.mmm`` appended for a
sub-second tick), so two nodes firing the same tick create one task:
submits are idempotent by id. Names are therefore short (1-40 characters
of ``A-Z a-z 0-9 _ . : -``, not starting with ``.``, ``:`` or ``-``) so the
id fits the 64-character id limit.

A schedule may give its ticks a ``ttl`` (seconds, 0.001 to 10 years, as
SUBMIT's ``ttl``): each tick's task is submitted with it, so a tick no
worker started within ``ttl`` of being fired expires instead of waiting.
Absent (None): no ttl, ticks wait for a worker however long. A node older
than this field ignores it (it reads named fields only).

Constraints: no I/O; validation raises :class:`~miyaq.errors.InvalidField`
naming the schedule, before anything is stored.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from croniter import croniter

from miyaq.errors import InvalidField
from miyaq.protocol import fields as f
from miyaq.protocol.taskspec import MAX_TTL, MIN_TTL, YEAR, queue_or_default

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,39}\Z")
MIN_EVERY = 0.1                 # seconds; sub-second schedules exist for tests
MAX_EVERY = YEAR
MAX_BODY = 64 * 1024            # a schedule's arguments (msgpack), kept small: specs live in ZooKeeper
MAX_SCHEDULES = 1000            # per READY, and per node
ID_PREFIX = "periodic-"
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


@dataclass(frozen=True)
class Schedule:
    """One validated schedule. Equal schedules are equal values."""

    name: str
    task: str
    every_ms: int | None = None
    cron: str | None = None
    queue: str = "default"
    priority: int = 0
    body: bytes = b""
    timeout: float | None = None
    max_retries: int | None = None
    ttl: float | None = None

    def latest_tick(self, now: float) -> int | None:
        """The last tick at or before ``now`` (ms); None if there is none."""
        if self.every_ms is not None:
            return (int(now * 1000) // self.every_ms) * self.every_ms
        try:
            # Cron ticks are whole seconds: T <= now  <=>  T <= floor(now) < floor(now) + 0.5.
            return round(croniter(self.cron, math.floor(now) + 0.5).get_prev(float) * 1000)
        except (ValueError, ArithmeticError):   # croniter's errors are ValueErrors
            return None

    def next_tick(self, after_ms: int) -> int | None:
        """The first tick strictly after ``after_ms`` (ms); None if there is none."""
        if self.every_ms is not None:
            return (after_ms // self.every_ms + 1) * self.every_ms
        try:
            return round(croniter(self.cron, after_ms / 1000).get_next(float) * 1000)
        except (ValueError, ArithmeticError):
            return None

    def task_id(self, tick_ms: int) -> str:
        return f"{ID_PREFIX}{self.name}-{tick_label(tick_ms)}"

    def task_wire(self, tick_ms: int) -> dict[str, Any]:
        """The SUBMIT map of the task fired for ``tick_ms``."""
        wire: dict[str, Any] = {"id": self.task_id(tick_ms), "name": self.task, "queue": self.queue,
                                "priority": self.priority, "body": self.body}
        if self.timeout is not None:
            wire["timeout"] = self.timeout
        if self.max_retries is not None:
            wire["max_retries"] = self.max_retries
        if self.ttl is not None:
            wire["ttl"] = self.ttl
        return wire

    def to_wire(self) -> dict[str, Any]:
        """The READY form (``every`` in seconds); :func:`schedule_from_wire` reads it back."""
        wire = {k: v for k, v in asdict(self).items() if v is not None and k != "every_ms"}
        if self.every_ms is not None:
            wire["every"] = self.every_ms / 1000
        return wire


def tick_label(tick_ms: int) -> str:
    """Unix seconds of a tick: ``1700000000``, or ``1700000000.500`` below a second."""
    seconds, ms = divmod(tick_ms, 1000)
    return f"{seconds}" if ms == 0 else f"{seconds}.{ms:03d}"


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidField(f"schedule name {value!r} must be 1-40 characters of A-Z a-z 0-9 _ . : - "
                           "(not starting with . : or -)", field="periodic")
    return value


_RANDOM_FIELD = re.compile(r"^[Rr](\(.*\))?(/\d+)?$")
"""A cron field element croniter fills with a random value: ``R``, ``R(0-29)``, ``R/5``."""


def check_cron(expr: Any) -> str:
    """A 5-field cron expression (or a macro) that croniter accepts and that matches some time."""
    if not isinstance(expr, str) or not expr.strip() or len(expr) > 256:
        raise InvalidField("field 'cron' must be a cron expression string", field="cron")
    expr = " ".join(expr.split())
    if expr.startswith("@"):
        if expr.lower() not in MACROS:
            raise InvalidField(f"cron macro {expr!r} is not one of {', '.join(MACROS)}", field="cron")
    elif len(expr.split()) != 5:
        raise InvalidField(f"cron expression {expr!r} must have 5 fields "
                           "(minute hour day-of-month month day-of-week)", field="cron")
    if any(_RANDOM_FIELD.match(part) for field in expr.split() for part in field.split(",")):
        # croniter picks a new random value each time it reads such a field:
        # every tick computed would differ (a daily schedule fired 25 times in
        # five days; the leaders would not agree on a tick's id).
        raise InvalidField(f"cron expression {expr!r}: random (R) fields are not supported", field="cron")
    if not croniter.is_valid(expr):
        raise InvalidField(f"cron expression {expr!r} is not valid", field="cron")
    try:
        croniter(expr, 0.0).get_next(float)
    except (ValueError, ArithmeticError):
        raise InvalidField(f"cron expression {expr!r} never matches", field="cron") from None
    return expr


def schedule_from_wire(d: Any, names: Iterable[str] | None = None) -> Schedule:
    """Validate one schedule map; ``names``, when given, are the handlers its task must be among."""
    if not isinstance(d, dict):
        raise InvalidField("each periodic schedule must be a map", field="periodic")
    name = check_name(d.get("name"))
    try:
        task = f.string(d, "task", max_len=256)
        if names is not None and task not in names:
            raise InvalidField(f"task {task!r} is not one of this worker's handlers", field="task")
        every, cron = d.get("every"), d.get("cron")
        if (every is None) == (cron is None):
            raise InvalidField("give exactly one of 'every' (seconds) or 'cron'", field="every")
        every_ms = None
        if every is not None:
            every_ms = round(f.number(d, "every", lo=MIN_EVERY, hi=MAX_EVERY) * 1000)
        return Schedule(
            name=name, task=task, every_ms=every_ms,
            cron=check_cron(cron) if cron is not None else None,
            queue=queue_or_default(d.get("queue")),
            priority=f.integer(d, "priority", 0),
            body=f.binary(d, "body", b"", max_len=MAX_BODY),
            timeout=f.number(d, "timeout", None, lo=0.01, hi=YEAR),
            max_retries=f.integer(d, "max_retries", None, lo=0, hi=10_000),
            ttl=f.number(d, "ttl", None, lo=MIN_TTL, hi=MAX_TTL),
        )
    except InvalidField as err:
        raise InvalidField(f"periodic schedule {name!r}: {err.message}", field="periodic") from None


def schedules_from_wire(value: Any, names: Iterable[str] | None = None) -> list[Schedule]:
    """READY's ``periodic`` list (absent: none). Names must be unique within it."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_SCHEDULES:
        raise InvalidField(f"field 'periodic' must be a list of at most {MAX_SCHEDULES} schedules",
                           field="periodic")
    known = set(names) if names is not None else None
    out = [schedule_from_wire(d, known) for d in value]
    if len({s.name for s in out}) != len(out):
        raise InvalidField("field 'periodic' names a schedule twice", field="periodic")
    return out


class Declared(NamedTuple):
    """A schedule with when it was declared, when a declaring worker was
    last seen, and the key that owns it (None: declared without keys). How
    nodes share declarations: :mod:`miyaq.periodic.specs`."""

    schedule: Schedule
    declared: float
    seen: float
    owner: str | None = None


class KnownSchedule(NamedTuple):
    """A schedule as one node knows it: who declared it and when, and the
    last tick this node handled as leader (ms; None if it did not lead)."""

    schedule: Schedule
    declared: float
    seen: float
    workers: int
    last: int | None
