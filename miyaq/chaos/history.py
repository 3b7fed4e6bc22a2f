"""A chaos run's history: one JSON object per line, in ``history.jsonl``.

Written during the run by the producer (``submit``, ``ack``, ``fail``), the
nemesis (``fault``) and the runner (``run``, ``phase``, ``final``,
``stats``); the workers write ``start``/``finish`` records to their own
files (:mod:`.tasks`), which :func:`merge_executions` appends to the
history at the end, so the one file holds everything the checker reads.
Every record has ``ev`` (its kind) and ``t`` (wall-clock seconds, the one
clock every process shares); the rest is per kind (docs/chaos.md).

Constraints: :class:`HistoryWriter` is thread-safe and flushes each record
(a run killed half-way keeps what it wrote). :class:`ExecTail` follows the
workers' files by offset and only ever yields complete lines, so a record
being written (or torn by SIGKILL) is never half-read. Readers skip lines
that do not parse, or fail the record schema (:mod:`.schema`), and count
them (:class:`ReadStats`).
"""
from __future__ import annotations

import glob
import heapq
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import ConfigError
from .schema import problem

logger = logging.getLogger(__name__)

HISTORY = "history.jsonl"
EXEC_GLOB = "exec-*.jsonl"
READ_CHUNK = 1 << 20
MERGE_CHUNK = 10_000
EXAMPLES = 5


class NotAHistory(ConfigError):
    """The file holds no chaos history to judge (no ``run`` record, no
    submit, or mostly lines that are no record): ``--check`` refuses it
    (exit status 2) rather than call it OK."""


class HistoryWriter:
    """Appends records to the history file; safe from any thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(path, "a", encoding="utf-8")   # noqa: SIM115 - closed in close()

    def write(self, ev: str, t: float | None = None, **fields: Any) -> None:
        record = {"ev": ev, "t": time.time() if t is None else t, **fields}
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self._file is None:
                return
            self._file.write(line)
            self._file.flush()

    def write_lines(self, lines: list[str]) -> None:
        """Append already-encoded records (each ending in a newline)."""
        with self._lock:
            if self._file is not None and lines:
                self._file.writelines(lines)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class ExecTail:
    """Follows the workers' ``exec-*.jsonl`` files in ``directory``.

    :meth:`poll` returns the records written since the last call. Not
    thread-safe: one caller (the runner's progress loop)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._offsets: dict[str, int] = {}
        self.bad_lines = 0

    def poll(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for path in sorted(glob.glob(os.path.join(self.directory, EXEC_GLOB))):
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(READ_CHUNK * 16)
            except OSError:
                continue
            end = data.rfind(b"\n")
            if end < 0:
                continue
            self._offsets[path] = offset + end + 1
            for line in data[:end].split(b"\n"):
                record = _parse(line)
                if record is None:
                    self.bad_lines += 1
                else:
                    records.append(record)
        return records


def worker_of(record: dict[str, Any]) -> str | int:
    """Who ran a ``start`` or ``finish`` record, as the ``worker`` fault
    names it: the worker's name (``worker3``: records written in a
    processes pool's child carry their worker's name, and a pid of their
    own), or, in a history from before 2026-12-07 that has no name, the pid."""
    worker = record.get("worker")
    return worker if isinstance(worker, str) else int(record.get("pid", 0))


class Activity:
    """What the workers are doing, from :class:`ExecTail` records: finished
    task ids and the workers running a task that is not finished yet.
    Thread-safe (the nemesis asks which workers are busy)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finished: set[str] = set()
        self.finishes = 0
        self._open: dict[str, set[str | int]] = {}        # task id -> workers running it (:func:`worker_of`)

    def feed(self, records: list[dict[str, Any]]) -> None:
        """A finish closes every open run of its task, on any worker: the
        others were aborted (no finish record) once this copy finished."""
        with self._lock:
            for r in records:
                task_id = str(r.get("id"))
                if r["ev"] == "start":
                    self._open.setdefault(task_id, set()).add(worker_of(r))
                elif r["ev"] == "finish":
                    self._open.pop(task_id, None)
                    self.finished.add(task_id)
                    self.finishes += 1

    def busy_workers(self) -> set[str | int]:
        """The workers running a task now, by name (by pid for records
        without one): what ``worker`` faults target."""
        with self._lock:
            return set().union(*self._open.values()) if self._open else set()


def _decode(line: bytes | str) -> tuple[dict[str, Any] | None, str | None]:
    """A line as a record, or (None, why not); (None, None) for a blank line."""
    if not line.strip():
        return None, None
    try:
        record = json.loads(line)
    except ValueError:
        return None, "not JSON"
    except RecursionError:           # nested deeper than the interpreter's stack
        return None, "nested too deep"
    why = problem(record)
    return (None, why) if why else (record, None)


def _parse(line: bytes | str) -> dict[str, Any] | None:
    return _decode(line)[0]


def _complete_lines(path: str) -> Iterator[bytes]:
    """The lines of ``path`` that end in a newline, one at a time (a torn
    last line, left by a worker killed mid-write, is not one)."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.endswith(b"\n"):
                yield line


def _exec_records(path: str, bad: list[int]) -> Iterator[tuple[float, str]]:
    """(t, encoded line) of each record of one worker file, in file order;
    ``bad[0]`` counts the complete lines that are no record."""
    for line in _complete_lines(path):
        record = _parse(line)
        if record is None:
            bad[0] += bool(line.strip())
            continue
        yield float(record["t"]), json.dumps(record, separators=(",", ":")) + "\n"


def merge_executions(directory: str, writer: HistoryWriter) -> int:
    """Append every complete record of the workers' files to the history,
    in time order, then a ``merge`` record (how many, how many complete
    lines were no record); returns how many. Call once, after the workers
    stopped.

    Streaming: a k-way merge of the files (:func:`heapq.merge`), so memory
    is bounded by the number of files, not of records. Each file is in time
    order: one worker process appends to it, stamping each record under the
    lock it writes under (:func:`.tasks.record`). Should a file not be (the
    wall clock stepped back), the merge stays correct as a merge: records
    are written in the order the files give them, and the checker does not
    depend on the order of start and finish records."""
    bad = [0]
    files = sorted(glob.glob(os.path.join(directory, EXEC_GLOB)))
    merged = heapq.merge(*(_exec_records(path, bad) for path in files), key=lambda item: item[0])
    count = 0
    chunk: list[str] = []
    for _, line in merged:
        chunk.append(line)
        if len(chunk) >= MERGE_CHUNK:
            writer.write_lines(chunk)
            count += len(chunk)
            chunk = []
    writer.write_lines(chunk)
    count += len(chunk)
    writer.write("merge", records=count, bad_lines=bad[0], files=len(files))
    if bad[0]:
        logger.warning("%s: %d line(s) of the workers' files are no record", directory, bad[0])
    return count


@dataclass
class ReadStats:
    """What :func:`read_history` met besides records."""

    records: int = 0
    bad: int = 0
    """Non-blank lines skipped: not JSON, or failing :func:`.schema.problem`."""
    torn_last: bool = False
    """The file's last line is one of them, without its newline and not JSON:
    what a process killed mid-write leaves. The one skipped line that is no
    sign of damage."""
    examples: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> int:
        """Skipped lines other than a torn last line."""
        return self.bad - self.torn_last


def read_history(path: str, stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Every record of a history file, in file order; bad lines are skipped,
    counted in ``stats`` and logged once with their count."""
    stats = stats if stats is not None else ReadStats()
    last_bad: tuple[bytes, str | None] | None = None
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            record, why = _decode(line)
            if record is None:
                if why is not None:
                    stats.bad += 1
                    last_bad = (line, why)
                    if len(stats.examples) < EXAMPLES:
                        stats.examples.append(f"line {number}: {why}")
                continue
            last_bad = None
            stats.records += 1
            yield record
    stats.torn_last = last_bad is not None and not last_bad[0].endswith(b"\n") and last_bad[1] == "not JSON"
    if stats.bad:
        logger.warning("%s: skipped %d line(s) that are not history records (%s)%s", path, stats.bad,
                       "; ".join(stats.examples), " -- the last one torn" if stats.torn_last else "")
