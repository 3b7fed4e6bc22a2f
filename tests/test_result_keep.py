"""How long a finished task's result is kept: with its tombstone, the
longer of ``result_ttl`` and ``dedup_window`` after the task ended
(docs/semantics.md, "Results and tombstones") -- and what the node says
when kept results make it refuse new tasks."""
from __future__ import annotations

import pytest

from miyaq.config import NodeConfig
from miyaq.core.engine import Engine
from miyaq.errors import Busy
from miyaq.store.task import Task

T0 = 1_700_000_000.0


class Leaser:
    """A consumer as the engine sees one."""

    principal = "c"

    def __init__(self) -> None:
        self.running: dict[str, Task] = {}

    def abort(self, ids: list[str]) -> None:
        pass

    def lease_expired(self, task: Task, now: float) -> None:
        pass


def test_a_refusal_for_kept_results_says_how_long_results_are_kept():
    """Fault: with ``result_ttl`` 40 and the default ``dedup_window`` (an
    hour) a result was still kept 100 s after its task ended -- as the
    docs' contract says, the tombstone holds it for the longer of the two --
    but a submit refused for ``max_result_bytes`` said the bytes were
    "freed as result_ttl passes", and configuration.md that they expire at
    ``result_ttl``: an operator waited 40 s for room that came an hour later."""
    engine = Engine(NodeConfig(result_ttl=40.0, max_result_bytes=10))
    engine.submit(Task("r", "q", "job", b"", eta=T0, created=T0), T0)
    task = engine.take(["q"], T0)
    assert task is not None
    engine.start(task, Leaser(), T0)
    assert engine.complete("r", task.attempt, b"a result of 20 bytes", T0)
    engine.table.sweep(T0 + 100.0)
    assert engine.table.tombstone("r") is not None and engine.table.result_bytes >= 10
    with pytest.raises(Busy) as refused:
        engine.submit(Task("s", "q", "job", b"", eta=T0, created=T0), T0 + 100.0)
    assert "3600 s after they ended: the longer of result_ttl and dedup_window" in refused.value.message
    assert "freed as result_ttl passes" not in refused.value.message
    engine.table.sweep(T0 + 3601.0)
    assert engine.table.tombstone("r") is None and engine.table.result_bytes == 0
