"""The checker's look at the results read back (``miyaq chaos --result``).

Each ``submit`` record with a ``result`` of some bytes says what its task
returns; each ``read`` record what the producer's client got back for it
(:mod:`.reader`): ``size``, the bytes of the result, or ``code``, the
client's error. A result read back of another size than the task returned
(or not bytes: ``size`` -1) is **wrong**: the cluster gave a client
something its task never returned, and the run fails (exit status 4). A
read that failed is reported by its error code, not a failure of the run
(a read may wait longer than the docs' limits on a slow link allow:
docs/operations.md, "Slow links"); tasks asked for a result but never read
(not finished during the load, or the reader's queue full) are counted.

Pure; memory: one entry per task that returns a result.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

EXAMPLES = 10


@dataclass
class Reads:
    want: dict[str, int] = field(default_factory=dict)
    right: int = 0
    wrong: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    read: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)

    def feed(self, record: dict[str, Any]) -> None:
        """A ``submit`` or ``read`` record (others are ignored)."""
        task_id = str(record.get("id"))
        if record["ev"] == "submit" and record.get("result"):
            self.want[task_id] = int(record["result"])
        elif record["ev"] == "read" and task_id not in self.read:    # a task's first read counts
            self.read.add(task_id)
            if "size" not in record:
                self.failed[str(record.get("code", "error"))] += 1
            elif record["size"] == self.want.get(task_id, record["size"]):
                self.right += 1
            else:
                self.wrong += 1
                if len(self.examples) < EXAMPLES:
                    self.examples.append(task_id)

    def summary(self) -> dict[str, Any]:
        return {"asked": len(self.want), "read": len(self.read), "right": self.right, "wrong": self.wrong,
                "failed": dict(self.failed), "not_read": len(self.want.keys() - self.read),
                "examples_wrong": self.examples}
