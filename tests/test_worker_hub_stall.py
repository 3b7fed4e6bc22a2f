"""The heartbeat thread says when a handler holds the worker's hub (CPU
work in the gevent pool): the test holds this process's hub itself, in a
loop that never yields, with the thresholds made short. No timing is
asserted: the loop and the waits are bounded guards."""
from __future__ import annotations

import ctypes
import logging
import time

import pytest

from miyaq.runtime import green
from miyaq.testing.harness import wait_for
from miyaq.worker import pulse as pulse_module
from miyaq.worker import watchdog as watchdog_module
from miyaq.worker.pulse import Pulse
from miyaq.worker.watchdog import Watchdog

pytestmark = pytest.mark.timeout(60)


def _spin() -> None:
    pass                            # pure Python: holds the hub, and the GIL between checks


def _c_call() -> None:
    ctypes.CDLL(None).usleep(20_000)     # a C call gevent cannot patch, as sqlite3's wait for a lock


@pytest.mark.parametrize("hold", [_spin, _c_call], ids=["cpu", "c-call"])
def test_a_hub_held_by_a_handler_is_said_once_naming_the_running_task(monkeypatch, caplog, hold) -> None:
    """Fault: a handler that never yields holds the hub: ``while True:
    pass``, or a C call gevent cannot make yield (sqlite3 waiting up to its
    timeout for a lock another handler holds, suspended in the same hub: a
    gevent worker whose handlers wrote to one sqlite file inside their
    transactions stood still 10 s a task). Before 2026-12-06 nothing was
    logged: the heartbeat thread kept the worker registered while it held
    its tasks and ignored SIGTERM, without a word. Now the thread warns
    once for the stall, naming the running task and both kinds of cause
    (before 2026-12-08, syncteam: CPU work only), beats on, and says when
    the hub runs again."""
    monkeypatch.setattr(pulse_module, "HUB_STALL_WARN", 0.3)
    monkeypatch.setattr(pulse_module, "HUB_TICK", 0.05)
    monkeypatch.setattr(watchdog_module, "WATCHDOG_IDLE", 0.05)
    pulse = Pulse("w-stall", [], 0.02, running=lambda: ["t-spin (spin)"])
    watchdog = Watchdog("w-stall", lambda: [], lambda job, reason: None, looks=pulse.hub_runs)
    records = caplog.records

    def warnings() -> list[str]:
        return [r.getMessage() for r in list(records) if r.levelno == logging.WARNING and "hub" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="miyaq.worker.pulse"):
        pulse.start()
        ticker = green.Greenlet.spawn(watchdog.run)     # its looks mark that the hub runs
        try:
            wait_for(lambda: green.sleep(0.02) or pulse.hub_seen is not None, what="the hub's first tick")
            beats = pulse.beats
            end = time.monotonic() + 20.0
            while not warnings() and time.monotonic() < end:
                hold()          # holds the hub: no yield
            assert pulse.beats > beats          # the thread beat on meanwhile
            said = warnings()
            assert len(said) == 1, said
            assert "t-spin (spin)" in said[0] and "has not run for" in said[0]
            assert "threads or processes pool" in said[0]
            assert "CPU work" in said[0] and "sqlite3" in said[0], said[0]
            wait_for(lambda: green.sleep(0.02) or any("runs again" in r.getMessage() for r in list(records)),
                     what="the hub said to run again")
            assert len(warnings()) == 1
        finally:
            ticker.kill()
            pulse.stop()
    assert pulse.hub_seen is None       # the watchdog ended: the stop of a worker is no stall
