"""The record a coordinator sends a new submit's copy in (REPLICATE):
``copy_record`` in miyaq/cluster/replicated_intake.py lays the common
submit out directly (2026-12-07) instead of through ``task_record``'s
twenty property reads. What goes on the wire must not change: for every
kind of task it is ``task_record`` without the rank, key for key and in
the same order (the holders read a submit's layout by one unpacking), and
a holder reads it back as the same task. Also ``ClusterRole.place``, which
now writes a new copy's rank, standby flag and wait on its extras directly.
"""
from __future__ import annotations

import time
from typing import Any

import pytest

from miyaq.cluster.replicated_intake import copy_record
from miyaq.cluster.role import ClusterRole
from miyaq.config import NodeConfig
from miyaq.protocol import recordspec as rs
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.records import task_record
from miyaq.store.task import NO_EXTRA, RUNNING

CONFIG = NodeConfig()
NOW = time.time()
HOLDERS = ("n1", "n2", "n3")


def _task(**fields: Any):
    wire: dict[str, Any] = {"id": "t1", "name": "noop", "body": b"x" * 100}
    if "url" in fields:
        del wire["name"]
    wire.update(fields)
    task = task_from_wire(wire, NOW, CONFIG)
    task.holders = HOLDERS
    return task


def _reference(task) -> list[tuple[str, Any]]:
    record = task_record(task)
    record.pop("rank", None)
    return list(record.items())


@pytest.mark.parametrize("fields", [
    {}, {"body": b""}, {"queue": "q2", "priority": -7}, {"delay": 30.0}, {"ttl": 60.0},
    {"max_retries": 0, "backoff": 2.5, "backoff_max": 10.0, "timeout": 0.5}, {"replicas": 2},
    {"key": "k1"}, {"at_most_once": True}, {"url": "http://127.0.0.1:9/hook"},
], ids=lambda f: ",".join(f) or "plain")
def test_a_copys_record_is_task_records_without_the_rank(fields):
    task = _task(**fields)
    assert list(copy_record(task).items()) == _reference(task)


def test_a_copys_record_of_a_task_that_moved_or_waits_longer_is_task_records():
    """Not a fresh submit (a resend's meta, a copy_wait, a state, an attempt):
    the record ``task_record`` makes, without the rank."""
    task = _task()
    task.meta = {"resent": True}
    assert list(copy_record(task).items()) == _reference(task)
    task = _task()
    task.copy_wait = 5.0
    assert list(copy_record(task).items()) == _reference(task)
    task = _task()
    task.state, task.attempt = RUNNING, 1
    assert list(copy_record(task).items()) == _reference(task)


def test_a_plain_submits_record_is_in_the_layout_a_holder_reads_in_one_unpacking():
    task = _task()
    record = copy_record(task)
    assert tuple(record) == rs.SUBMIT_LAYOUT
    copy = rs.task_from_record(record, CONFIG)
    assert (copy.id, copy.queue, copy.name, copy.body, copy.eta, copy.created, copy.holders) == (
        task.id, task.queue, task.name, task.body, task.eta, task.created, HOLDERS)


class _Role:
    """What ``ClusterRole.place`` reads of its role."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.config = CONFIG

    replica_offset = ClusterRole.replica_offset
    offset_for = ClusterRole.offset_for


@pytest.mark.parametrize("node_id,rank", [("n1", 0), ("n3", 2)])
def test_place_writes_the_copys_rank_standby_and_wait(node_id, rank):
    task = _task()
    ClusterRole.place(_Role(node_id), task)  # type: ignore[arg-type]
    assert (task.rank, task.standby, task.copy_wait) == (rank, rank > 0, rank * CONFIG.replica_offset)
    assert task.due == task.eta + rank * CONFIG.replica_offset


def test_place_on_a_node_not_among_the_holders_writes_nothing():
    task = _task()
    with pytest.raises(ValueError):
        ClusterRole.place(_Role("n9"), task)  # type: ignore[arg-type]
    assert (task.rank, task.standby, task.copy_wait) == (0, False, 0.0)
    assert NO_EXTRA.rank == 0 and NO_EXTRA.holders == () and NO_EXTRA.copy_wait == 0.0
