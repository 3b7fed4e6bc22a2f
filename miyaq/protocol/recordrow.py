"""A submit's copy as a row: the task record of peer protocol 2.

A new submit's copy of a named task -- no key, meta, url or
``at_most_once``, not moved yet -- is the record a REPLICATE carries most,
and a map spends most of its bytes and its decoding on the names of its
fields. In peer protocol 2 (docs/cluster.md, "Versions") a REPLICATE's
``tasks`` may carry such a copy as a *row*: a msgpack array of the values
of :data:`ROW_FIELDS`, in that order, every one present. Any other record
stays a map, in the same list. A node sends rows only to a peer it knows
reads version 2 (:mod:`miyaq.cluster.peer_versions`) and reads them only
in a request of version 2 or later.

A row is checked exactly as the map with the same values is
(:mod:`miyaq.protocol.recordspec`): the common checks in one pass
(:func:`~miyaq.protocol.recordspec.fast_task`), and a row they do not pass
is read as that map, whose checks name the field at fault. Only its
length is a row's own: other than ``len(ROW_FIELDS)`` values, it is
refused (``field`` ``record``).
"""
from __future__ import annotations

from typing import Any

from miyaq.config import NodeConfig
from miyaq.errors import InvalidField
from miyaq.protocol.recordspec import SUBMIT_LAYOUT, fast_task, task_from_record
from miyaq.store.task import Task

#: A row's values, in order: a submit's copy as its sender lays the map out
#: (:data:`~miyaq.protocol.recordspec.SUBMIT_LAYOUT`) less the ``o`` that
#: every such map starts with (a row is always a task, ``A``).
ROW_FIELDS: tuple[str, ...] = SUBMIT_LAYOUT[1:]
#: The names of a row's fields, for the questions asked of a map record
#: (``"state" in record``: never a row's).
ROW_KEYS = frozenset(ROW_FIELDS)
_ROW_LENGTH = len(ROW_FIELDS)
_NAMES = ", ".join(ROW_FIELDS)


def copy_row(record: dict[str, Any]) -> list[Any] | dict[str, Any]:
    """``record`` (a copy's map) as it goes to a peer that reads rows: its
    values as a row when it is laid out as a submit's copy, else the map
    itself."""
    if tuple(record) == SUBMIT_LAYOUT:
        row = list(record.values())
        del row[0]
        return row
    return record


def task_from_row(row: Any, config: NodeConfig) -> Task:
    """Rebuild a task from a row, checked exactly as the map with its values
    (:func:`~miyaq.protocol.recordspec.task_from_record`): raises
    :class:`~miyaq.errors.InvalidField`."""
    if type(row) is not list or len(row) != _ROW_LENGTH:
        raise InvalidField(f"a task record in a row must be an array of the {_ROW_LENGTH} values "
                           f"[{_NAMES}]", field="record")
    (task_id, queue, name, method, body, priority, eta, created, expires, max_retries, backoff, backoff_max,
     timeout, replicas, holders) = row
    task = fast_task(task_id, queue, name, method, body, priority, eta, created, expires, max_retries, backoff,
                     backoff_max, timeout, replicas, holders, 0, None, config)
    if task is not None:
        return task
    return task_from_record(dict(zip(ROW_FIELDS, row)), config)     # the map's checks name the field


def row_id(record: Any) -> Any:
    """The id of a record, a map or a row (one that passed its checks)."""
    return record[0] if type(record) is list else record["id"]
