"""A client's wait for a result while a holder reconciles (restarted from
its log, or with an empty data dir while the ring lists it): that node
answers a task it does not know yet ``unavailable`` with ``reconciling:
true`` (not ``not_found``: it may not have its copy back). Driven sans
I/O (miyaq.client.operations: each request is an ``Ask`` the test answers).

Before 2026-12-07 such an answer reached the caller of ``result()`` at
once: a restart of the only node that had answered made a ``result()``
of a task stored on it raise ``Unavailable`` in the middle of its wait.
Now the wait asks again after a pause until its timeout; any other
``unavailable`` a node answers is still raised."""
from __future__ import annotations

import pytest

from miyaq.client import operations as ops
from miyaq.client.nodes import Nodes
from miyaq.errors import NotFound, Unavailable
from miyaq.protocol import commands as c

NODES = ["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]


def _reconciling() -> Unavailable:
    return Unavailable("no task t1 here yet: this node is reconciling", **{c.RECONCILING: True})


def test_a_result_wait_asks_again_while_a_holder_reconciles() -> None:
    """Fault: the first node reconciles (it does not know the task yet),
    the other does not hold it (``not_found``). The wait pauses and asks
    again, and the outcome the reconciled node then has is returned."""
    op = ops.wait_result(Nodes(NODES, discover=False), "t1", 60.0, None, 5.0)
    first = next(op)
    assert isinstance(first, ops.Ask) and first.command == c.RESULT and first.node == 0
    second = op.throw(_reconciling())
    assert isinstance(second, ops.Ask) and second.node == 1
    pause = op.throw(NotFound("no task t1"))
    assert isinstance(pause, ops.Pause) and 0 < pause.seconds <= ops.SHUTTING_DOWN_PAUSE
    again = op.send(None)
    assert isinstance(again, ops.Ask) and again.command == c.RESULT and again.node == 0
    with pytest.raises(StopIteration) as done:
        op.send({"state": "done", "result": b"x"})
    assert done.value.value == {"state": "done", "result": b"x"}


def test_another_unavailable_still_reaches_the_caller() -> None:
    """An ``unavailable`` without ``reconciling`` from every node asked is
    raised as before (the wait does not loop on what may not pass)."""
    op = ops.wait_result(Nodes(NODES, discover=False), "t1", 60.0, None, 5.0)
    next(op)
    op.throw(Unavailable("something else"))
    with pytest.raises(Unavailable, match="something else"):
        op.throw(NotFound("no task t1"))


def test_a_reconciling_answer_at_the_deadline_is_raised() -> None:
    """At the wait's deadline (here 0 s) the reconciling answer is raised:
    the caller's timeout bounds the asking again."""
    op = ops.wait_result(Nodes(NODES, discover=False), "t1", 0.0, None, 5.0)
    next(op)
    op.throw(_reconciling())
    with pytest.raises(Unavailable, match="reconciling"):
        op.throw(NotFound("no task t1"))
