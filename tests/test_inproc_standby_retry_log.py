"""A standby copy keeps another holder's retry across a restart from its
log: the retry's ``R`` event changes the copy's attempt, error and eta, and
the copy's log says so (docs/durability.md, "The log"). In-process
(miyaq.testing.inprocess), with a log on every node."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(90)

NODES = ("n1", "n2", "n3")
ERROR = {"type": "Boom", "message": "first failure"}


def test_a_retrying_standby_copy_restored_from_its_log_keeps_its_attempt_and_error(inproc, tmp_path):
    """Fault (review38): a standby copy applied the first holder's ``R``
    event (attempt, error, next attempt's time) in memory only, so restored
    from its log it came back ``scheduled`` at attempt 0 without its
    error: GET /tasks/{id} on that node said so while the other holders
    said ``retrying``, attempt 1, and the error -- and were it to take the
    task over, its attempts would count from 0 again, past
    ``max_retries``. Restored, it is retrying at the retry's time with the
    attempt and error, and still a standby copy (it does not run it)."""
    cluster = inproc(3, replicas=3, data_dir=str(tmp_path), fsync="always")
    task_id = cluster.task_led_by("n1")
    cluster.submit_accepted("n1", task_id, body=b"x", max_retries=5)
    worker = cluster.worker("n1")
    cluster.wait_until(lambda: worker.runs(task_id), what="the task to run")
    worker.fail(task_id, ERROR, retry=True, delay=3600)
    cluster.wait_until(lambda: all(cluster[n].state(task_id) == "retrying" for n in NODES),
                       what="every holder to hear of the retry")
    eta = cluster["n1"].task(task_id).eta
    cluster.stop_node("n2")
    cluster.start_node("n2")
    cluster.wait_until(lambda: all(cluster[n].role.not_coordinating() == "" for n in NODES), what="coordinating")
    for node in NODES:
        copy = cluster[node].task(task_id)
        assert (copy.state, copy.attempt, copy.error, copy.eta) == ("retrying", 1, ERROR, eta), node
    assert cluster["n2"].task(task_id).standby
    shown = cluster["n2"].engine.info(task_id)      # what GET /tasks/{id} shows there
    assert (shown["state"], shown["attempt"], shown.get("error")) == ("retrying", 1, ERROR)
    assert not cluster.crashes()
