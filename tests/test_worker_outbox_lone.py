"""A lone task's result leaves by the outbox's short path (``send_now`` with
one DONE and nothing else queued): the same message as a flush, and the same
recovery when the send fails (the result stays, the flusher sends it)."""
from __future__ import annotations

from typing import Any

from miyaq.errors import MiyaqError
from miyaq.protocol import commands as c
from miyaq.worker.outbox import Outbox


class Wire:
    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[bytes, dict[str, Any]]] = []
        self.fail_first = fail_first

    def post(self, command: bytes, body: dict[str, Any]) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise MiyaqError("send failed (simulated)")
        self.sent.append((command, {k: list(v) if isinstance(v, list) else v for k, v in body.items()}))


def _outbox(wire: Wire, spawned: list[str]) -> Outbox:
    return Outbox(wire.post, lambda name, fn, policy: spawned.append(name), "flush test")


def test_a_lone_result_leaves_as_one_done_without_the_flusher():
    wire, spawned = Wire(), []
    outbox = _outbox(wire, spawned)
    outbox.hold()
    outbox.add_done("t1", 1, b"\xc0")
    outbox.send_now()
    assert wire.sent == [(c.DONE, {"done": [["t1", 1, b"\xc0"]]})]
    assert len(outbox) == 0 and spawned == []
    outbox.hold()
    outbox.add_done("t2", 1, None)
    outbox.send_now()
    assert wire.sent[1] == (c.DONE, {"done": [["t2", 1, None]]}), "a later lone result goes the same way"


def test_a_lone_result_whose_send_fails_is_kept_for_the_flusher():
    """Fault: the link's send raises (no socket). The result stays queued,
    the flusher is started, and its flush sends it once."""
    wire, spawned = Wire(fail_first=1), []
    outbox = _outbox(wire, spawned)
    outbox.hold()
    outbox.add_done("t1", 2, b"\x01")
    outbox.send_now()
    assert wire.sent == [] and len(outbox) == 1
    assert spawned == ["flush test"], "the flusher was asked to send it again"
    outbox.flush()
    assert wire.sent == [(c.DONE, {"done": [["t1", 2, b"\x01"]]})]
    assert len(outbox) == 0


def test_a_result_with_anything_else_queued_takes_the_whole_flush():
    """A touch or a report for another node's task queued with it: every
    list leaves, each in its own message, as flush sends them."""
    wire, spawned = Wire(), []
    outbox = _outbox(wire, spawned)
    outbox.hold()
    outbox.add_touch("t0")
    outbox.add_done("t9", 1, None, elsewhere=True)
    outbox.add_done("t1", 1, None)
    outbox.send_now()
    assert wire.sent == [(c.DONE, {"done": [["t1", 1, None]]}),
                         (c.DONE, {"done": [["t9", 1, None]], "credit": False}),
                         (c.TOUCH, {"ids": ["t0"]})]
    assert len(outbox) == 0 and spawned == []
