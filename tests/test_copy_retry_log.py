"""Another holder's retry (its ``R`` event) in this node's log
(docs/durability.md, "The log"): a waiting copy's is written, so a replay
brings the copy back retrying with its attempt and error; a dead copy's is
not (its attempt and error change in memory only, as before 2026-12-07). A
real engine with the node's durability part on a real log, as
tests/test_purged_mark_log.py drives it; the end-to-end case is
tests/test_inproc_standby_retry_log.py."""
from __future__ import annotations

import time

import pytest
from test_log_replayed_state import durable_engine, submit, written
from test_purged_mark_log import _replayed

from miyaq.config import NodeConfig

pytestmark = pytest.mark.timeout(60)

ERROR = {"type": "Boom", "message": "failed on another holder"}


def test_another_holders_retry_of_a_dead_copy_does_not_bring_it_back_at_a_replay(tmp_path):
    """Fault guarded (review39, a mutant no test killed: 404070d's return
    for a dead copy dropped): another holder's ``R`` event reaching a copy
    that is dead here (that holder revived and retried the task, its ``V``
    event not applied here yet) wrote an ``R`` record after the copy's
    ``D``: a replay took it for the last word and brought the dead letter
    back ``retrying``. The copy stays dead, in memory and at a replay, with
    the event's attempt and error as before."""
    now = time.time()
    config = NodeConfig(node_id="n1", data_dir=str(tmp_path))
    engine, part = durable_engine(tmp_path, config, now)
    task = submit(engine, config, now, id="dead-1")
    engine.kill_copy(task, {"type": "Failure", "message": "no"})     # dead-lettered (as by a peer's D event)
    engine.retry_copy(task, 3, ERROR, now + 3600.0, now + 3600.5)
    assert task.state == "dead" and (task.attempt, task.error) == (3, ERROR)
    written(part)
    part.close()
    replayed = _replayed(tmp_path, config, time.time())
    assert "dead-1" in replayed.table.dead and "dead-1" not in replayed.table.live
    assert replayed.table.dead["dead-1"].state == "dead"


def test_another_holders_retry_of_a_waiting_copy_is_replayed_retrying(tmp_path):
    """Fault guarded (review38, here at engine level): a waiting copy took
    another holder's retry in memory only, and a replay brought it back
    ``scheduled`` at attempt 0 without its error. It takes the retry's
    attempt, error and eta, and a replay brings it back so."""
    now = time.time()
    config = NodeConfig(node_id="n1", data_dir=str(tmp_path))
    engine, part = durable_engine(tmp_path, config, now)
    task = submit(engine, config, now, id="copy-1", eta=now + 60.0)
    engine.retry_copy(task, 1, ERROR, now + 3600.0, now + 3600.5)
    assert (task.state, task.attempt, task.error, task.eta) == ("retrying", 1, ERROR, now + 3600.0)
    written(part)
    part.close()
    copy = _replayed(tmp_path, config, time.time()).table.live["copy-1"]
    assert (copy.state, copy.attempt, copy.error, copy.eta) == ("retrying", 1, ERROR, now + 3600.0)
