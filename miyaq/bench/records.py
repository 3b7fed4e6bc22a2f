"""The per-process record files a benchmark worker writes and the bench reads.

One file per worker process, ``<dir>/worker-<pid>.rec``, one text line per
handler run: ``<task id> <start> <done>`` with both times as ``time.time()``
floats (``repr``, so no precision is lost). Text keeps the files easy to
inspect; at ~60 bytes a line a 20,000-task run writes about 1 MB.

The writer is buffered and flushed only when its buffer fills and when the
process exits (``atexit``, which a worker reaches after its SIGTERM drain),
so recording costs the handler one string format and one buffered write.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import IO

logger = logging.getLogger(__name__)

SUFFIX = ".rec"
BUFFER = 1 << 16


class RecordWriter:
    """Appends ``(id, start, done)`` lines to this process's record file.

    Opened lazily on the first record, so importing the task module (the
    worker supervisor does so to validate it) creates no file. Thread-safe:
    the threads pool runs handlers in several threads of one process."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()

    def write(self, task_id: str, start: float, done: float) -> None:
        line = f"{task_id} {start!r} {done!r}\n"
        with self._lock:
            fh = self._fh
            if fh is None:
                fh = self._open()
            fh.write(line)

    def _open(self) -> IO[str]:
        path = os.path.join(self.directory, f"worker-{os.getpid()}{SUFFIX}")
        # Held open across handler runs; closed by close() at exit.
        self._fh = open(path, "a", buffering=BUFFER, encoding="ascii")  # noqa: SIM115
        atexit.register(self.close)
        return self._fh

    def close(self) -> None:
        """Flush and close; idempotent, safe to call from ``atexit``."""
        with self._lock:
            fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()


@dataclass
class Records:
    """Every run of the bench's tasks found in a record directory."""

    start: dict[str, float] = field(default_factory=dict)   # first start per task id
    done: dict[str, float] = field(default_factory=dict)    # done of that first run
    runs: int = 0                                           # lines read, all ids
    duplicates: int = 0                                     # runs beyond the first of an id
    repeats: dict[str, int] = field(default_factory=dict)   # task id -> its runs beyond the first
    malformed: int = 0


def read_records(directory: str, prefix: str) -> Records:
    """Read every record file in ``directory``, keeping ids that start with
    ``prefix`` (this run's tag), so stray tasks are never counted."""
    out = Records()
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(SUFFIX))
    except FileNotFoundError:
        return out
    for name in names:
        with open(os.path.join(directory, name), encoding="ascii", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 3 or not parts[0].startswith(prefix):
                    out.malformed += len(parts) != 3
                    continue
                try:
                    start, done = float(parts[1]), float(parts[2])
                except ValueError:
                    out.malformed += 1
                    continue
                out.runs += 1
                task_id = parts[0]
                if task_id in out.start:
                    out.duplicates += 1
                    out.repeats[task_id] = out.repeats.get(task_id, 0) + 1
                    if start >= out.start[task_id]:
                        continue
                out.start[task_id] = start
                out.done[task_id] = done
    if out.malformed:
        logger.warning("%d malformed record line(s) in %s", out.malformed, directory)
    return out
