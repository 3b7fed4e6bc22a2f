"""``miyaq worker --processes N`` when the system refuses it a process (the
limit on processes, ``ulimit -u``). The supervisor runs in the test's
process with its children faked: no process is started, no signal handler
is left installed."""
from __future__ import annotations

import logging
import signal
from typing import Any

import pytest

import miyaq.logs
from miyaq.worker import launch
from miyaq.worker.config import WorkerConfig

pytestmark = pytest.mark.timeout(60)


class FakeChild:
    """A worker process that runs until it is sent a signal."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None, "waited for a child never told to stop"
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


def test_a_worker_process_that_cannot_be_started_is_started_again(monkeypatch, caplog) -> None:
    """Fault: fork fails for one of ``--processes 2`` (``BlockingIOError:
    Resource temporarily unavailable``: the user's limit on processes).
    Before, the supervisor exited 1 with that traceback, leaving the other
    worker process it had started. Now it is logged, naming the limit, and
    the slot is started again as for a process that exited (the restart
    backoff and budget); the supervisor then stops cleanly."""
    handlers: dict[int, Any] = {}
    monkeypatch.setattr(launch.signal, "signal", lambda signum, handler: handlers.__setitem__(signum, handler))
    monkeypatch.setattr(miyaq.logs, "setup_logging", lambda level="INFO": None)
    started: list[FakeChild] = []
    tries: list[list[str]] = []

    def popen(command: list[str], env: Any = None) -> FakeChild:
        tries.append(command)
        if len(tries) == 2:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        child = FakeChild(1000 + len(tries))
        started.append(child)
        if len(started) == 2:      # both slots run: stop, as a SIGTERM would
            handlers[signal.SIGTERM](signal.SIGTERM, None)
        return child

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    config = WorkerConfig(processes=2, connect="tcp://127.0.0.1:1", grace=1.0)
    with caplog.at_level(logging.WARNING, logger="miyaq.worker.launch"):
        assert launch.run_supervised("apps.basic:app", config) == 0
    assert len(tries) == 3 and all(child.returncode == 0 for child in started)
    refused = [r.getMessage() for r in caplog.records if "cannot start a worker process" in r.getMessage()]
    assert len(refused) == 1 and "Resource temporarily unavailable" in refused[0] and "ulimit -u" in refused[0]
