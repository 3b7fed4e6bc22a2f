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
that do not parse and count them.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

logger = logging.getLogger(__name__)

HISTORY = "history.jsonl"
EXEC_GLOB = "exec-*.jsonl"
READ_CHUNK = 1 << 20


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


class Activity:
    """What the workers are doing, from :class:`ExecTail` records: finished
    task ids and the workers running a task that is not finished yet.
    Thread-safe (the nemesis asks which workers are busy)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finished: set[str] = set()
        self.finishes = 0
        self._open: dict[str, set[int]] = {}        # task id -> pids running it

    def feed(self, records: list[dict[str, Any]]) -> None:
        """A finish closes every open run of its task, on any worker: the
        others were aborted (no finish record) once this copy finished."""
        with self._lock:
            for r in records:
                task_id = str(r.get("id"))
                if r["ev"] == "start":
                    self._open.setdefault(task_id, set()).add(int(r.get("pid", 0)))
                elif r["ev"] == "finish":
                    self._open.pop(task_id, None)
                    self.finished.add(task_id)
                    self.finishes += 1

    def busy_pids(self) -> set[int]:
        with self._lock:
            return set().union(*self._open.values()) if self._open else set()


def _parse(line: bytes | str) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "ev" in record else None


def merge_executions(directory: str, writer: HistoryWriter) -> int:
    """Append every complete record of the workers' files to the history,
    in time order; returns how many. Call once, after the workers stopped."""
    records: list[dict[str, Any]] = []
    for path in sorted(glob.glob(os.path.join(directory, EXEC_GLOB))):
        with open(path, "rb") as fh:
            data = fh.read()
        complete = data[:data.rfind(b"\n") + 1]
        records += [r for r in map(_parse, complete.split(b"\n")) if r is not None]
    records.sort(key=lambda r: r.get("t", 0.0))
    for start in range(0, len(records), 10_000):
        writer.write_lines([json.dumps(r, separators=(",", ":")) + "\n" for r in records[start:start + 10_000]])
    return len(records)


def read_history(path: str) -> Iterator[dict[str, Any]]:
    """Every record of a history file, in file order; bad lines are skipped
    (and logged once with their count)."""
    bad = 0
    with open(path, "rb") as fh:
        for line in fh:
            record = _parse(line)
            if record is None:
                if line.strip():
                    bad += 1
                continue
            yield record
    if bad:
        logger.warning("%s: skipped %d line(s) that are not history records", path, bad)
