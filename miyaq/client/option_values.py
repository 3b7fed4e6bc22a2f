"""Task option values the node would refuse, refused in the producer.

A submit's options (``queue``, ``countdown``, ``priority`` ...) are checked
here, in the caller, before anything is sent: a value the node would refuse
(:mod:`miyaq.protocol.taskspec`, which still checks every submit) raises
:class:`~miyaq.errors.InvalidField` naming the option at ``submit()``,
``call()`` and their asyncio forms, and at ``@app.task`` (as ConfigError).
Before 2026-12-07 ``submit()`` returned a handle and the node's refusal was
seen only at ``wait_accepted()`` -- for a submit nobody waits for (a web
handler's), at the next ``flush()`` or at exit: the task was lost.

Only the options given are looked at: a submit with none pays nothing, one
with a queue a regular expression match. Bounds that are the node's own
settings (``max_payload``, the upper bound of an ``eta``: ten years from the
node's clock) stay the node's to check.
"""
from __future__ import annotations

from typing import Any

from ..config import MAX_REPLICAS, MAX_RETRIES, YEAR
from ..errors import InvalidField
from ..protocol import fields as f
from ..protocol.task_names import MAX_TTL, MIN_TTL, check_queue

#: The range of each numeric task option, as the node checks it
#: (miyaq.protocol.taskspec); ``eta`` is a unix time (a datetime is made one first).
NUMBERS: dict[str, tuple[float, float]] = {
    "eta": (0.0, 1e12), "countdown": (0.0, 10 * YEAR), "ttl": (MIN_TTL, MAX_TTL), "backoff": (0.0, YEAR),
    "backoff_max": (0.0, YEAR), "timeout": (0.01, YEAR), "offset": (0.0, YEAR)}
INTEGERS: dict[str, tuple[int, int]] = {
    "priority": (-(2**31), 2**31 - 1), "max_retries": (0, MAX_RETRIES), "replicas": (1, MAX_REPLICAS)}
MAX_KEY_CHARS = 256


def check_option_values(wire: dict[str, Any]) -> None:
    """InvalidField naming the option unless each value of ``wire`` (task
    options as SUBMIT fields: None left out, ``eta`` a unix time) is one the
    node takes: ``queue`` 1-128 characters of ``A-Z a-z 0-9 _ . : -`` (an
    empty one is the node's ``default``, as it always was), ``key`` a string
    of 1 to 256 characters UTF-8 can encode, the numbers within the node's
    ranges, ``at_most_once`` a bool, not both ``eta`` and ``countdown``.
    Other fields (a webhook's url, method, headers) are the node's to check.
    A value of the usual type within its range is passed by a comparison,
    and a queue name seen before by a set lookup (:data:`_QUEUES_SEEN`); the
    readers of :mod:`miyaq.protocol.fields` run only to word a refusal."""
    for name, value in wire.items():
        kind = type(value)
        bounds = NUMBERS.get(name)
        if bounds is not None:
            if not ((kind is float or kind is int) and bounds[0] <= value <= bounds[1]):
                _refuse(f.number, wire, name, bounds)
        elif name in INTEGERS:
            bounds = INTEGERS[name]
            if not (kind is int and bounds[0] <= value <= bounds[1]):
                _refuse(f.integer, wire, name, bounds)
        elif name == "queue":
            if not (kind is str and (value in _QUEUES_SEEN or value == "")):
                _refuse(_queue, wire, name, None)
        elif name == "key":
            _refuse(_key, wire, name, None)
        elif name == "at_most_once" and kind is not bool:
            _refuse(f.boolean, wire, name, None)
    if "eta" in wire and "countdown" in wire:
        raise InvalidField("option 'eta' cannot be given with 'countdown': give either, not both", field="eta")


_QUEUES_SEEN: set[str] = set()
"""Queue names found good (at most :data:`MAX_QUEUES_SEEN`; emptied when full)."""
MAX_QUEUES_SEEN = 1024


def _queue(wire: dict[str, Any], name: str) -> None:
    value = check_queue(wire[name])
    if len(_QUEUES_SEEN) >= MAX_QUEUES_SEEN:
        _QUEUES_SEEN.clear()
    _QUEUES_SEEN.add(value)


def _key(wire: dict[str, Any], name: str) -> None:
    encodable_text(f.string(wire, name, max_len=MAX_KEY_CHARS), name)


def _refuse(read: Any, wire: dict[str, Any], name: str, bounds: tuple[Any, Any] | None) -> None:
    """Run the reader of option ``name`` (within ``bounds``): nothing if the
    value is good after all (a queue name not seen before, a key), else
    InvalidField worded for a producer ("option 'countdown' must be ...")."""
    try:
        if bounds is None:
            read(wire, name)
        else:
            read(wire, name, None, lo=bounds[0], hi=bounds[1])
    except InvalidField as err:
        if err.message.startswith("field "):
            raise InvalidField("option " + err.message[len("field "):], **err.details) from None
        raise


def encodable_text(value: str, option: str) -> None:
    """InvalidField if ``value`` has a lone surrogate (UTF-8 cannot encode it)."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidField(f"field {option!r} holds {value[exc.start:exc.end]!r}, a lone surrogate UTF-8 "
                               "cannot encode (as os.fsdecode() makes of bytes that are not UTF-8)",
                               field=option) from None
