"""How large a SUBMIT may be: the client's own batch bounds, and a node's
limits (:class:`Limits`, from its RING reply) applied to each task.

Pure functions and constants; :mod:`~.submits` applies them. A task a node
could never take -- a payload over its ``max_payload``, or a SUBMIT of it
alone over its ``max_message`` -- is refused in the client with
``InvalidField`` (field ``body``), naming the limit and the node: sent, it
would make libzmq drop the connection at every try until its deadline.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from ..errors import InvalidField

class Limits(NamedTuple):
    """What one node takes in a SUBMIT, from its RING reply's ``limits``: the
    largest message body (``max_message``), the largest task payload
    (``max_payload``) and the most tasks in one message (``max_batch``).
    A message over ``max_message`` + 4 KiB is not answered: libzmq drops the
    connection it came on (docs/protocol.md, "Size limits")."""

    max_message: int
    max_payload: int
    max_batch: int


def limits_from(value: Any) -> Limits | None:
    """A RING reply's ``limits``, or None when it has none (a node of before
    2026-12-04) or they make no sense (a buggy or hostile node: positive
    integers only, a message of at least 4 KiB): the client then keeps to
    its own bounds."""
    if not isinstance(value, dict):
        return None
    numbers = [value.get(name) for name in Limits._fields]
    ints = [n for n in numbers if type(n) is int and n >= 1]
    if len(ints) != len(numbers) or ints[0] < 4096:
        return None
    return Limits(*ints)


BATCH_BYTES = 1024 * 1024
"""Payload bytes per SUBMIT (one larger task goes alone), as a message
between nodes carries (``PEER_MESSAGE_BYTES``): a SUBMIT must arrive whole
within the node's wait for a ZMTP heartbeat's answer (30 s; libzmq hears
it only behind the message) and, to be acknowledged in time, within
``ack_timeout`` (5 s): 1 MiB needs 0.28 and 1.7 Mbit/s. Before 2026-12-07
it was 4 MiB: 34 s on a 1 Mbit/s link, the node dropped the connection and
the client sent the same 4 MiB again. Small tasks are not held back by it
(each counts its payload and ``ENVELOPE``: 512 tasks of up to 1,920 bytes
still go as one message)."""
TASK_FIELDS_ROOM = 16 * 1024
"""Bytes a task's fields but its payload and headers take in a SUBMIT at most
(a name, a key, a queue of at most 256 characters, a URL of 2,048, small
options): a task whose payload leaves this much room under a node's
``max_message`` fits without being encoded to find out."""
ASK_LIMITS_ABOVE = 64 * 1024
"""Payload bytes above which a submit is sent to a node only once its limits
are known: smaller ones fit in any node's message (a ``max_message`` far
below the default 16 MiB is not a setting a node serves clients with)."""
LIMITS_WAIT = 2.0
"""Seconds a large submit waits for its node's limits; then it is sent as if
the node had none (a node that does not answer a RING)."""
LIMITS_POLL = 0.05
"""Seconds between two looks while a large submit waits for limits (an answer
that brings them sends it at once)."""
ENVELOPE = 128
"""Bytes a task adds to a SUBMIT besides its payload, as :func:`payload_size` counts."""


WINDOW_BYTES = 256 * 1024 * 1024
"""The clients' default ``window_bytes``: what their unacknowledged submits
may hold, each counted as :func:`task_size` does (256 MiB: 256 tasks of the
nodes' default ``max_payload``, 1 MiB; the chaos producer's own bound
before the clients had one, and the nodes' default ``max_result_bytes``).
Small tasks never reach it before ``window`` (10,000 tasks of up to 26 KiB
each); before 2026-12-07 only ``window`` bounded them: 10,000 tasks of
1 MiB, 10 GB, were held before ``submit()`` blocked."""


def task_size(wire: dict[str, Any]) -> int:
    """What a submit counts for in a batch and in the window's bytes: its
    payload (``body``: args and kwargs as msgpack packed them, or a webhook's
    body) and :data:`ENVELOPE`. Once a submit (:class:`~.pending.Pending` keeps it)."""
    return len(wire.get("body") or b"") + ENVELOPE


def payload_size(p: Any) -> int:
    """What a pending submit counts for in a batch (its ``size``)."""
    return p.size


def surely_fits(limits: Limits) -> int:
    """The payload size up to which a task without headers fits a node with
    ``limits`` without being looked at further (once a batch, not a task)."""
    return min(limits.max_payload, limits.max_message - TASK_FIELDS_ROOM)


def refusal(wire: dict[str, Any], limits: Limits, endpoint: str) -> InvalidField | None:
    """Why the node at ``endpoint`` can never take the task ``wire``, as the
    error its submit fails with; None when it fits. Encodes the task to be
    sure: for a task past :func:`surely_fits` or with headers."""
    size = len(wire.get("body") or b"")
    if size > limits.max_payload:
        why = f"its max_payload is {limits.max_payload} bytes"
    elif len(msgpack.packb({"tasks": [wire]}, use_bin_type=True)) > limits.max_message:
        why = f"a SUBMIT of it alone would pass its max_message of {limits.max_message} bytes"
    else:
        return None
    return InvalidField(f"task {wire.get('id')} has a payload of {size} bytes, more than {endpoint} takes: {why}",
                        field="body")
