"""A member lost from the ring is a WARNING on every surviving node
(miyaq.cluster.ring_follower).

Fault: a cluster node is killed (its ZooKeeper session ends and the ring is
published without it). Before, the surviving nodes said so only at INFO
(``ring epoch 4: n1, n2 (leader n1)``), and an operator reading WARNINGs saw
nothing of it (the oncall audit, docs/operations.md).
"""
from __future__ import annotations

import logging


def _lost_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "left the ring" in r.getMessage()]


def test_a_member_dropped_from_the_ring_is_a_warning_naming_it(inproc, caplog):
    cluster = inproc(3)
    caplog.set_level(logging.INFO, logger="miyaq.cluster")
    assert _lost_lines(caplog) == []            # the first ring is no loss
    epoch = cluster.publish(["n1", "n2"])
    cluster.wait_until(lambda: cluster.settled(epoch), what="the ring without n3")
    lines = _lost_lines(caplog)
    assert lines, "no WARNING for the lost member"
    assert all(f"ring epoch {epoch}: n3 left the ring" in line for line in lines), lines
    caplog.clear()

    epoch = cluster.publish(["n1", "n2", "n3"])   # back: no warning
    cluster.wait_until(lambda: cluster.settled(epoch), what="n3 back")
    assert _lost_lines(caplog) == []
