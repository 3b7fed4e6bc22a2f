"""What ``max_bytes`` counts of a held task's error on every holder of a
cluster (docs/semantics.md, "Capacity and memory"): the error a retrying or
dead copy learns from the runner's holder (an ``R`` or ``D`` event) counts
in that holder's ``payload_bytes`` as the runner's own does, is cut to the
room left there too, and goes when the task does. In-process (miyaq.testing.inprocess); the engine's
invariants (``payload_bytes`` is the sum of what the held tasks count)
checked on every node.
"""
from __future__ import annotations

import pytest

from miyaq.core import invariants
from miyaq.runtime import wall
from miyaq.store.task import RETRYING

pytestmark = pytest.mark.timeout(90)

NODES = ("n1", "n2", "n3")
LONG_ERROR = {"type": "Failure", "message": "m" * 2000, "traceback": "t" * 16000}


def _problems(cluster) -> dict[str, list[str]]:
    found = {n: invariants.count_problems(cluster[n].engine) for n in NODES}
    return {n: problems for n, problems in found.items() if problems}


def test_errors_learned_from_the_runners_holder_count_on_every_holder_and_go_with_their_tasks(inproc, tmp_path):
    """Fault: a holder that learns a copy's failure from the runner's holder
    (its ``R`` event: retrying; ``D``: dead) set the copy's error without
    counting it: that holder's ``payload_bytes`` said less than its tasks
    held, the errors passed ``max_bytes`` uncut there, and the count went
    wrong (below what was held) as the tasks left. Mutation (review38): the
    ``R`` event setting the error directly passed every test (so did a
    dead copy's, ``kill_copy``; both fail here). Eight tasks
    fail with 18 KB errors under a ``max_bytes`` of 30,000 (the later ones
    cut), half retried, half dead-lettered; every holder counts what it
    holds, and each is back to 0 once the tasks are cancelled and purged."""
    cluster = inproc(3, replicas=3, max_bytes=30_000, max_payload=1000, data_dir=str(tmp_path), fsync="always")
    ids = [cluster.task_led_by("n1") for _ in range(8)]
    for task_id in ids:
        cluster.submit_accepted("n1", task_id, body=b"")
    worker = cluster.worker("n1")
    for i, task_id in enumerate(ids):
        cluster.wait_until(lambda: worker.runs(task_id), what=f"{task_id} to run")
        worker.fail(task_id, dict(LONG_ERROR), retry=i % 2 == 0, delay=3600)
    retried, dead = ids[0::2], ids[1::2]

    def learned() -> bool:
        for n in NODES:
            table = cluster[n].engine.table
            if not (all(t in table.live and table.live[t].state == RETRYING and table.live[t].error
                        for t in retried) and all(t in table.dead for t in dead)):
                return False
        return True

    cluster.wait_until(learned, what="every holder to learn each failure")
    assert _problems(cluster) == {}
    runner_counts = cluster["n1"].engine.table.payload_bytes
    assert runner_counts > 30_000 - 256       # errors counted, the last ones cut to the floor
    for n in ("n2", "n3"):
        assert cluster[n].engine.table.payload_bytes <= 30_000 + len(ids) * 256, n

    answers: list = []
    for task_id in retried:
        cluster["n1"].role.cancel(task_id, wall(), answers.append)
    cluster["n1"].engine.dead_purge(None, dead)
    cluster.wait_until(lambda: all(cluster[n].engine.table.payload_bytes == 0
                                   and not cluster[n].engine.table.live and not cluster[n].engine.table.dead
                                   for n in NODES), what="every holder to let the tasks go")
    assert _problems(cluster) == {}
    assert all(a.get("cancelled") for a in answers), answers
