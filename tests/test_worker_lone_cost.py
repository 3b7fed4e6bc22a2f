"""What a lone task costs a worker's hub beyond its own work: checked by
counting, not timing (docs/performance-log.md, "A worker's lone task, path
by path")."""
from __future__ import annotations

from typing import Any

from apps import basic
from miyaq.runtime import green
from miyaq.worker import reports


class CountingGreen:
    """The runtime's green facade as the reports module sees it, counting
    the hub callbacks it asks for."""

    def __init__(self) -> None:
        self.callbacks = 0

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.callbacks += 1
        green.call_soon(fn, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(green, name)


def test_a_lone_task_asks_the_hub_for_no_callback_to_report(node, client, thread_worker, monkeypatch):
    """A runner that sends a lone result itself marked the hub's pass and
    asked the hub for a callback to end the mark: one callback a task, for
    tasks that could not end in the same pass as another (none else ran).
    Now the mark is made only while other tasks run; a lone task's result
    still leaves without the flusher."""
    counting = CountingGreen()
    monkeypatch.setattr(reports, "green", counting)
    w = thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=4).worker
    for i in range(5):
        assert client.call("add", [i, 1], timeout=20) == i + 1
    assert counting.callbacks == 0, f"{counting.callbacks} hub callbacks for 5 lone tasks"
    assert not w.links[0].outbox._started, "the flusher was spawned for lone results"
