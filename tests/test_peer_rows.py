"""What a node accepts from another in peer protocol 2: a submit's copy as
a row (miyaq/protocol/recordrow.py) over the real peer port, checked as
its map is, and read only in a request of version 2 (docs/cluster.md,
"What a node accepts from another", "Versions"). The node and the sockets
are tests/test_peer_validation.py's."""
from __future__ import annotations

from typing import Any

import pytest
import test_peer_validation as validation
from test_peer_validation import assert_queue_still_works, me, record, refused

from miyaq.cluster.peer_requests import REPLICATE
from miyaq.protocol.recordrow import ROW_FIELDS

# The node, its peer port and its service port, as test_peer_validation.py makes them.
peer, cluster_node, dealer, service = validation.peer, validation.cluster_node, validation.dealer, validation.service


def row(task_id: str, on: list[str]) -> list[Any]:
    """A submit's copy as a row of peer protocol 2 (miyaq.protocol.recordrow)."""
    out = record(task_id, on)
    return [out.get(name, 0.0 if name == "expires" else None) for name in ROW_FIELDS]


ROW_POISONS = [("queue", 12345), ("priority", "high"), ("eta", float("nan")), ("holders", "n1,p1"),
               ("max_retries", 10**12), ("name", 7), ("body", "text"), ("id", ["t"]), ("timeout", 0.0)]


@pytest.mark.parametrize("field,value", ROW_POISONS, ids=[f for f, _ in ROW_POISONS])
def test_poisoned_replicate_row_is_refused_and_status_keeps_working(cluster_node, dealer, service, field, value):
    """Fault: another node's REPLICATE in peer protocol 2 carries a submit's
    copy as a row with one bad value, and a row one value short. Both are
    refused (not among the ids stored) and counted under ``replicate``; a
    good row in the same batch is stored, and STATUS and the queue keep working."""
    holders = [me(cluster_node), "p1"]
    bad = row("bad-1", holders)
    bad[ROW_FIELDS.index(field)] = value
    answer = dealer.request(REPLICATE, {"proto": 2, "tasks": [bad, row("good-1", holders), row("short", holders)[:-1]]})
    assert answer["ids"] == ["good-1"] and answer["speaks"] == 2
    assert refused(service, "replicate") == 2
    assert service.task("good-1")["state"] == "scheduled"
    assert service.task("bad-1") is None and service.task("short") is None
    assert_queue_still_works(service)


def test_a_row_is_read_only_in_a_request_of_peer_protocol_2(cluster_node, dealer, service):
    """Bad input from a peer: a row in a request that says version 1 (or no
    version) is no record of that version -- refused as a record that is not
    a map, as a node of a build before version 2 refuses it; the same row in
    a request of version 2 is stored."""
    holders = [me(cluster_node), "p1"]
    assert dealer.request(REPLICATE, {"proto": 1, "tasks": [row("r1", holders)]})["ids"] == []
    assert dealer.request(REPLICATE, {"tasks": [row("r1", holders)]})["ids"] == []
    assert refused(service, "replicate") == 2 and service.task("r1") is None
    assert dealer.request(REPLICATE, {"proto": 2, "tasks": [row("r1", holders)]})["ids"] == ["r1"]
    assert service.task("r1")["state"] == "scheduled"
