"""What ``max_bytes`` counts besides payloads: a task's dedup key, a webhook
task's URL and the error a retrying or dead task keeps (docs/semantics.md,
"Capacity and memory").

Engine-level, as tests/test_engine.py: no sockets, an explicit ``now``, a
fake consumer, and the engine's invariants (``payload_bytes`` is the sum of
what the held tasks count) checked after each step.
"""
from __future__ import annotations

import pytest

from miyaq.constants import ERROR_BYTES, ERROR_BYTES_MIN
from miyaq.core import invariants
from miyaq.errors import Busy
from miyaq.protocol.failurespec import cut_error
from miyaq.store.stones import error_bytes
from miyaq.store.task import DEAD, RETRYING
from test_engine import T0, FakeConsumer, make_engine, run, submit

HOOK = "https://example.com/hook?task="
LONG_ERROR = {"type": "Failure", "message": "m" * 2000, "traceback": "t" * 16000}


def consistent(engine) -> None:
    assert invariants.problems(engine) == []


def test_webhook_urls_and_keys_count_against_max_bytes():
    """Fault: tasks of empty payloads, each with its own 2,000-character
    webhook URL (a callback naming the task) and a 256-character key,
    counted 0 bytes against ``max_bytes``: a node took them up to
    ``max_tasks`` (a million: about 3 GB of URLs, their kinds and keys) while STATUS
    said ``payload_bytes`` 0. Now a task's URL and key count with its
    payload: past ``max_bytes`` the submit is BUSY, and a cancel gives the
    bytes back."""
    per_task = 2000 + 256
    engine = make_engine(max_bytes=3 * per_task + 100, max_payload=100)
    for i in range(3):
        url = HOOK + str(i).rjust(2000 - len(HOOK), "0")
        submit(engine, f"h{i}", name=None, url=url, key=str(i).rjust(256, "k"), countdown=3600, body=b"")
    assert engine.table.payload_bytes == 3 * per_task
    with pytest.raises(Busy) as info:
        submit(engine, "h3", name=None, url=HOOK + "3".rjust(2000 - len(HOOK), "0"), key="3".rjust(256, "k"),
               body=b"")
    assert info.value.details["reason"] == "bytes"
    engine.cancel("h0", T0)
    assert engine.table.payload_bytes == 2 * per_task
    consistent(engine)


def test_errors_of_retrying_and_dead_tasks_count_and_are_cut_to_the_room_left():
    """Fault: every retrying and dead task keeps its last error, up to
    ``ERROR_BYTES`` (8 KiB), counted in no bound: with the defaults 1.1
    million tasks failing with long errors held about 10 GiB, past a
    ``max_bytes`` of 1 GiB, ``payload_bytes`` saying nothing of it. Now a
    held task's error counts in ``max_bytes``: it is kept whole while it
    fits, cut to the room left when it does not (at least
    ``ERROR_BYTES_MIN``), and it goes when its task does."""
    engine = make_engine(max_bytes=3 * ERROR_BYTES, max_payload=100, default_max_retries=5)
    consumer = FakeConsumer()
    ids = [f"f{i}" for i in range(8)]
    for task_id in ids:
        submit(engine, task_id, body=b"")
    for task_id in ids:
        t = run(engine, ["default"], consumer, T0)
        engine.fail(t.id, t.attempt, dict(LONG_ERROR), task_id != "f0", 3600.0, T0)
        consistent(engine)
    held = [engine.table.live.get(i) or engine.table.dead[i] for i in ids]
    assert held[0].state == DEAD and all(t.state == RETRYING for t in held[1:])
    sizes = [error_bytes(t.error) for t in held]
    assert sizes[0] == sizes[1] == error_bytes(cut_error(dict(LONG_ERROR)))    # as ever while they fit
    assert all(ERROR_BYTES_MIN // 2 < size <= ERROR_BYTES_MIN for size in sizes[3:])   # then cut
    assert held[-1].error["type"] == "Failure" and held[-1].error["message"].startswith("m")
    assert engine.table.payload_bytes == sum(sizes)
    assert engine.table.payload_bytes <= engine.config.max_bytes + len(ids) * ERROR_BYTES_MIN
    with pytest.raises(Busy):
        submit(engine, "refused", body=b"")
    engine.dead_purge(None, ["f0"])
    engine.cancel("f1", T0)
    assert engine.table.payload_bytes == sum(sizes[2:])
    consistent(engine)
