"""A failure description a node keeps is bounded in bytes (ERROR_BYTES).

Each retrying, dead and finished task may keep the error of its last
failure, outside ``max_bytes``. The fields were bounded in characters only
(256 + 4,096 + 16,384), and a character may be 4 bytes: 5,000 dead tasks
held 409 MB of errors. Now every way an error enters -- a worker's FAILED or
NACK, an HTTP pull fail, a webhook, a peer's event or record, the log -- cuts
it to ``ERROR_BYTES`` of UTF-8, the traceback first, then the message.
"""
from __future__ import annotations

import random

import msgpack
import pytest
import zmq

from miyaq.config import NodeConfig
from miyaq.constants import ERROR_BYTES
from miyaq.core.engine import Engine
from miyaq.protocol import commands as c
from miyaq.protocol.eventspec import check_event
from miyaq.protocol.failurespec import cut_error
from miyaq.protocol.recordspec import check_change, check_stone, invalid_stored, task_from_record
from miyaq.protocol.taskspec import task_from_wire
from miyaq.store.records import transfer_record
from miyaq.store.table import error_bytes
from miyaq.store.task import DEAD, RETRYING
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0      # seconds: a guard against a hang, not a timing assertion
T0 = 1_700_000_000.0
FACE = "\U0001F600"         # 4 bytes of UTF-8, one character
LONGEST = {"type": FACE * 256, "message": FACE * 4096, "traceback": FACE * 16384}   # what the fields allow


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def test_a_description_over_the_bound_is_cut_traceback_first_on_character_boundaries() -> None:
    """Fault: the longest failure a worker may send, in characters outside
    the BMP: 82 KB kept per task. Now at most ERROR_BYTES: the traceback is
    cut to its end (the innermost frames and the exception), then the
    message to its start; each cut is marked, and falls between characters."""
    error = cut_error(dict(LONGEST))
    assert error_bytes(error) <= ERROR_BYTES
    assert error["type"] == FACE * 256                       # cut last: never needed here
    assert error["traceback"].startswith("[") and error["traceback"].endswith("bytes cut ...] ")
    assert error["message"].startswith(FACE * 100)
    assert error["message"].endswith(" bytes cut]")
    kept = error["message"].rsplit(" [... ", 1)[0]
    assert set(kept) == {FACE} and _utf8(kept) + _utf8(error["type"]) > ERROR_BYTES // 2
    cut = int(error["message"].rsplit(" [... ", 1)[1].split()[0])
    assert cut == _utf8(LONGEST["message"]) - _utf8(kept)

    ascii_error = {"type": "ValueError", "message": "m" * 2000, "traceback": "Traceback\n" + "t" * 9000 + "END"}
    cut_ascii = cut_error(dict(ascii_error))
    assert error_bytes(cut_ascii) <= ERROR_BYTES
    assert cut_ascii["message"] == ascii_error["message"]     # the traceback alone is enough
    assert cut_ascii["traceback"].endswith("t" * 100 + "END")


def test_a_description_within_the_bound_is_kept_as_it_is() -> None:
    """No fault: an ordinary failure is not touched (the same map, unchanged)."""
    error = {"type": "ValueError", "message": "bad input " * 100, "traceback": "Traceback ...\n" * 200,
             "retry": True, "delay": 1.5}
    before = dict(error)
    assert cut_error(error) is error and error == before


def test_any_description_is_cut_within_the_bound_to_valid_text() -> None:
    """Descriptions of mixed 1- to 4-byte characters and up to 16 fields,
    as a peer may send: each comes out within ERROR_BYTES, with text that
    encodes (no half character), numbers and flags untouched."""
    rng = random.Random(7)
    alphabet = ["a", "\u00e9", "\u20ac", FACE, "\n"]
    for _ in range(200):
        error: dict[str, object] = {"retry": False, "status": 500}
        for name in ("type", "message", "traceback", *(f"x{i}" for i in range(rng.randrange(0, 13)))):
            if rng.random() < 0.8:
                error[name] = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 16384)))
        cut_error(error)
        assert error_bytes(error) <= ERROR_BYTES
        assert error["retry"] is False and error["status"] == 500
        for value in error.values():
            if isinstance(value, str):
                value.encode("utf-8")


def test_a_workers_failed_report_is_kept_within_the_bound(make_node, client_for, ctx) -> None:
    """Fault: a worker's FAILED carries the longest error its fields allow,
    in 4-byte characters, for a task that dies and one that retries. Before,
    each kept 82 KB outside every byte bound (5,000 dead tasks: +409 MB,
    STATUS memory unchanged). Now each keeps at most ERROR_BYTES, and what
    the node holds still passes every check a record passes."""
    node = make_node()
    client = client_for(node.endpoint)
    producer = ctx.socket(zmq.DEALER)
    producer.setsockopt(zmq.LINGER, 0)
    producer.connect(node.endpoint)
    producer.send_multipart([c.TAG, c.SUBMIT, msgpack.packb(
        {"tasks": [{"id": "dies", "name": "x"}, {"id": "retries", "name": "x"}]})])
    assert producer.poll(int(WAIT * 1000)) and producer.recv_multipart()[1] == c.SUBMITTED
    worker = ctx.socket(zmq.DEALER)
    worker.setsockopt(zmq.LINGER, 0)
    worker.connect(node.endpoint)
    worker.send_multipart([c.TAG, c.READY, msgpack.packb({"worker": "w1", "queues": ["default"], "capacity": 2})])
    leased: list[list] = []
    while len(leased) < 2:
        assert worker.poll(int(WAIT * 1000)), "no DISPATCH"
        _, command, body = worker.recv_multipart()
        if command == c.DISPATCH:
            leased += msgpack.unpackb(body)["tasks"]
    failed = [[t[0], t[4], {**LONGEST, "retry": t[0] == "retries", "delay": 3600}] for t in leased]
    worker.send_multipart([c.TAG, c.FAILED, msgpack.packb({"failed": failed})])
    wait_for(lambda: client.status()["queues"]["default"]["dead"] == 1
             and client.status()["queues"]["default"]["retrying"] == 1, timeout=WAIT, what="both failures applied")
    engine = node.node.core.engine
    for task in (engine.table.dead["dies"], engine.table.live["retries"]):
        assert error_bytes(task.error) <= ERROR_BYTES, task.id
        assert task.error["type"] == FACE * 256 and task.error["message"].startswith(FACE)
    assert invalid_stored(engine.table, node.config) == []
    shown = client.status("dies")     # the kept error is what a client reads
    assert shown["state"] == DEAD and error_bytes(shown["error"]) <= ERROR_BYTES


def test_every_consumers_report_is_cut_where_the_engine_takes_it() -> None:
    """Fault: an HTTP pull consumer fails a task with a 4,096-character
    message of 4-byte characters (16 KiB), a webhook's error likewise: they
    reach the engine without the worker path's checks. The engine cuts
    every failure it takes."""
    engine = Engine(NodeConfig())
    t = task_from_wire({"id": "pulled", "name": "echo"}, T0, engine.config)
    engine.submit(t, T0)
    leased = engine.take(["default"], T0)
    assert leased is not None

    class Consumer:
        principal = name = "http"
        running: dict = {}

        def abort(self, ids): pass

        def lease_expired(self, task, now): pass

    engine.start(leased, Consumer(), T0)
    assert engine.fail("pulled", 1, {"type": "Nack", "message": FACE * 4096}, True, 60.0, T0, by="http")
    kept = engine.table.live["pulled"]
    assert kept.state == RETRYING and error_bytes(kept.error) <= ERROR_BYTES
    assert kept.error["message"].startswith(FACE) and kept.error["message"].endswith(" bytes cut]")


def _oversized() -> dict[str, object]:
    """What a peer may send within the per-field checks: 16 strings of 16,384
    characters of 4 bytes (1 MiB)."""
    return {"type": FACE * 16384, "message": FACE * 16384, "traceback": FACE * 16384,
            **{f"x{i}": FACE * 16384 for i in range(13)}}


def test_a_peers_or_the_logs_error_is_cut_not_refused() -> None:
    """Fault: a peer's RETRYING or DEAD event, a handed-off record or a SYNC
    tombstone carries an error of 1 MiB (each string within the old
    per-field bound), bypassing the cut a worker's report gets. A record of
    an earlier version's log may hold an error over the bound too: it must
    still be read. Each is cut in place (the caller keeps the checked
    record) to ERROR_BYTES, never refused."""
    config = NodeConfig()
    retrying = ["R", "t1", 1, T0, _oversized()]
    check_event(retrying, config)
    dead = ["D", "t1", 2, _oversized()]
    check_event(dead, config)
    logged = {"o": "D", "id": "t1", "attempt": 2, "error": _oversized()}
    check_change(logged)
    for error in (retrying[4], dead[3], logged["error"]):
        assert isinstance(error, dict) and error_bytes(error) <= ERROR_BYTES

    engine = Engine(config)
    t = task_from_wire({"id": "moved", "name": "echo"}, T0, config)
    engine.submit(t, T0)
    record = transfer_record(t)
    record["error"] = _oversized()
    copy = task_from_record(record, config)
    assert copy.error is not None and error_bytes(copy.error) <= ERROR_BYTES
    stone = check_stone(["gone", "done", None, _oversized()], config)
    assert stone[3] is not None and error_bytes(stone[3]) <= ERROR_BYTES


def test_the_stored_invariant_names_an_error_kept_over_the_bound() -> None:
    """A code path that kept an error without cutting it is caught by the
    invariant the tests check (and the check does not cut it itself)."""
    config = NodeConfig()
    engine = Engine(config)
    t = task_from_wire({"id": "kept", "name": "echo"}, T0, config)
    engine.submit(t, T0)
    t.error = dict(LONGEST)
    problems = invalid_stored(engine.table, config)
    assert problems == [f"live task 'kept' keeps an error of {error_bytes(LONGEST)} bytes"]
    assert t.error == LONGEST
