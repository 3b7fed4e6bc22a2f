"""A submit's copy as a row (peer protocol 2, miyaq/protocol/recordrow.py)
and what a node knows of the version each peer speaks
(miyaq/cluster/peer_versions.py).

A row must be checked exactly as the map with its values: a seeded
differential test gives both forms the same 20,000 records, valid and with
one value wrong, and they must build the same task or refuse naming the
same field with the same message. Only a row's length is its own check.
"""
from __future__ import annotations

import random
import time
from typing import Any

import pytest
from fuzz_inputs import Inputs
from test_recordspec import _slots

from miyaq.cluster.peer_versions import PEER_PROTOCOL, PeerVersions, check_version
from miyaq.config import NodeConfig
from miyaq.errors import BadVersion, InvalidField
from miyaq.protocol import recordrow as rr
from miyaq.protocol import recordspec as rs

NOW = time.time()
CONFIG = NodeConfig()


def _outcome(read: Any, record: Any) -> tuple[str, Any]:
    try:
        return "task", _slots(read(record, CONFIG))
    except InvalidField as err:
        return "refused", (err.details["field"], err.message)


def test_a_row_is_read_exactly_as_the_map_of_its_values():
    """Seeded: 20,000 records, the submits' copies among them (about 4,000)
    as rows, half with one value made wrong (junk:
    another type, out of range, NaN, huge, nested). The row and the map
    with the same values build the same task, or are refused naming the
    same field with the same message."""
    inputs = Inputs(random.Random(11), "n1", "p1", NOW)
    rows = refused = 0
    for _ in range(20_000):
        row = rr.copy_row(inputs.record())
        if not isinstance(row, list):
            continue            # not a submit's layout: it goes as a map
        if inputs.rng.random() < 0.5:
            row[inputs.rng.randrange(len(row))] = inputs.junk()
        as_map = {"o": "A", **dict(zip(rr.ROW_FIELDS, row))}
        expected = _outcome(rs.task_from_record, as_map)
        assert _outcome(rr.task_from_row, row) == expected, row
        rows += 1
        refused += expected[0] == "refused"
    assert rows > 3000 and refused > 1000       # both outcomes were exercised


@pytest.mark.parametrize("row", [
    [], ["t1"], "t1", {"id": "t1"}, None,
    ["t1", "default", "noop", "POST", b"x", 0, NOW, NOW, 0.0, 3, 1.0, 300.0, 300.0, 3],          # 14 values
    ["t1", "default", "noop", "POST", b"x", 0, NOW, NOW, 0.0, 3, 1.0, 300.0, 300.0, 3, ["n1"], None],   # 16
], ids=["empty", "one", "a string", "a map", "nil", "14 values", "16 values"])
def test_a_row_of_another_length_or_kind_is_refused_naming_the_record(row):
    with pytest.raises(InvalidField) as info:
        rr.task_from_row(row, CONFIG)
    assert info.value.details["field"] == "record"
    assert "15 values [id, queue, name" in info.value.message


def test_a_submits_copy_becomes_a_row_and_any_other_record_stays_a_map():
    inputs = Inputs(random.Random(3), "n1", "p1", NOW)
    plain = {"o": "A", "id": "t1", "queue": "default", "name": "noop", "method": "POST", "body": b"x",
             "priority": 0, "eta": NOW, "created": NOW, "expires": 0.0, "max_retries": 3, "backoff": 1.0,
             "backoff_max": 300.0, "timeout": 300.0, "replicas": 3, "holders": ["n1", "n2", "n3"]}
    row = rr.copy_row(plain)
    assert row == list(plain.values())[1:] and len(row) == len(rr.ROW_FIELDS) == 15
    assert plain["o"] == "A" and len(plain) == 16        # the map itself is left as it was
    assert _slots(rr.task_from_row(row, CONFIG)) == _slots(rs.task_from_record(plain, CONFIG))
    keyed = {**plain, "key": "k1"}
    assert rr.copy_row(keyed) is keyed
    moved = {**plain, "state": "running", "attempt": 1}
    assert rr.copy_row(moved) is moved
    for _ in range(200):
        record = inputs.record()
        if tuple(record) != rs.SUBMIT_LAYOUT:
            assert rr.copy_row(record) is record


def test_a_peer_is_written_to_in_the_highest_version_its_answers_said_both_speak():
    """Version 1 until a peer answered; then what its answers say (absent:
    a build before version 2, 1); a version above this node's is this
    node's; anything that is no version is 1; its connection closed, 1
    again (it may come back as another build)."""
    versions = PeerVersions()
    assert versions.version_for("n2") == 1
    versions.heard("n2", 2)
    assert versions.version_for("n2") == 2 == PEER_PROTOCOL
    versions.heard("n2", None)
    assert versions.version_for("n2") == 1
    versions.heard("n2", 9)
    assert versions.version_for("n2") == PEER_PROTOCOL
    for junk in ("2", 2.0, True, -1, 0, [2], {"v": 2}, 2**70):
        versions.heard("n3", 2)
        versions.heard("n3", junk)
        assert versions.version_for("n3") == (PEER_PROTOCOL if junk == 2**70 else 1), junk
    versions.forget("n2")
    assert versions.version_for("n2") == 1
    old = PeerVersions(speaks=1)          # a node playing a build before version 2
    old.heard("n2", 2)
    assert old.version_for("n2") == 1


def test_the_peers_remembered_are_bounded(monkeypatch):
    from miyaq.cluster import peer_versions
    monkeypatch.setattr(peer_versions, "MAX_PEERS_KNOWN", 3)
    versions = PeerVersions()
    for i in range(10):
        versions.heard(f"n{i}", 2)
    assert len(versions._heard) <= 3 and versions.version_for("n9") == 2


def test_a_request_in_a_version_the_node_does_not_speak_is_refused():
    check_version(2, "n2", "n1")
    check_version(1, "n2", "n1", speaks=1)
    with pytest.raises(BadVersion) as info:
        check_version(2, "n2", "n1", speaks=1)
    assert "peer n2 speaks peer protocol 2; node n1 speaks 1 to 1" in info.value.message
    with pytest.raises(BadVersion):
        check_version(PEER_PROTOCOL + 1, "n2", "n1")


def test_a_link_writes_to_a_peer_in_the_version_its_answers_said_until_its_connection_closes():
    """The link (PeerRequests) end to end, frames decoded as a peer reads
    them: version 1 until the peer answered; 2 once an answer said
    ``speaks: 2``; 1 again once its connection closed (it may come back as
    an older build), and after an answer refusing ``bad_version`` (an older
    build's, without ``speaks``). Every answer this node gives says what it speaks."""
    from miyaq.cluster.peer_requests import ANSWER, QUERY, PeerRequests
    from miyaq.protocol import codec

    sent: list[dict[str, Any]] = []
    answered: list[dict[str, Any]] = []

    class Link(PeerRequests):
        def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
            sent.append(codec.decode(frames, frozenset({QUERY}), 1 << 20)[1])
            return True

        def _send_answer(self, identity: Any, frames: list[bytes]) -> None:
            answered.append(codec.decode(frames, frozenset({ANSWER}), 1 << 20)[1])

    class Supervisor:
        def report(self, what: str, exc: BaseException) -> None:
            raise exc

    link = Link(Supervisor(), "n1", 1 << 20)      # type: ignore[arg-type]

    def ask_and_answer(answer: dict[str, Any]) -> int:
        link.request("n2", QUERY, {"ids": []}, 5.0, lambda a: None)
        link._handle_answer(codec.encode(ANSWER, {**answer, "req": sent[-1]["req"]}))
        return sent[-1]["proto"]

    assert ask_and_answer({"states": {}, "speaks": 2}) == 1     # nothing heard yet
    assert ask_and_answer({"states": {}, "speaks": 2}) == 2
    link.connection_lost("n2")
    assert ask_and_answer({"code": "bad_version", "message": "speaks 1 to 1"}) == 1
    assert ask_and_answer({"states": {}, "speaks": 2}) == 1     # the refusal said nothing: 1
    assert ask_and_answer({"states": {}}) == 2
    assert link.versions.version_for("n2") == 1      # an answer without speaks
    link.handlers[QUERY] = lambda sender, body: {"states": {}}
    link._handle_request([b"id", *codec.encode(QUERY, {"from": "n3", "req": 1, "proto": 2, "ids": []})])
    link._handle_request([b"id", *codec.encode(QUERY, {"from": "n3", "req": 2, "proto": 3, "ids": []})])
    assert [a.get("speaks") for a in answered] == [PEER_PROTOCOL, PEER_PROTOCOL]
    assert "states" in answered[0] and answered[1]["code"] == "bad_version"


def test_an_answer_to_a_request_sent_before_the_peer_was_forgotten_teaches_nothing():
    """Fault (review35): a peer forgotten (its connection closed, its link
    made anew) is written to in version 1 until it answers -- but an answer
    to a request sent before the forget, read after it (it waited on the old
    connection, or was in flight in memnet), is its old process's: it taught
    version 2 again, and the new process, a rolled-back build, was written
    to in version 2 and refused it (``bad_version``; test_inproc_peer_versions
    failed so now and then). Only an answer to a request sent since teaches."""
    from miyaq.cluster.peer_requests import ANSWER, QUERY, PeerRequests
    from miyaq.protocol import codec

    sent: list[dict[str, Any]] = []
    answers: list[Any] = []

    class Link(PeerRequests):
        def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
            sent.append(codec.decode(frames, frozenset({QUERY}), 1 << 20)[1])
            return True

    class Supervisor:
        def report(self, what: str, exc: BaseException) -> None:
            raise exc

    link = Link(Supervisor(), "n1", 1 << 20)      # type: ignore[arg-type]

    def answer(req: int) -> None:
        link._handle_answer(codec.encode(ANSWER, {"states": {}, "speaks": 2, "req": req}))

    for forget in (lambda: link.connection_lost("n2"), lambda: link.forget_version("n2")):
        link.request("n2", QUERY, {"ids": []}, 5.0, answers.append)
        old = sent[-1]["req"]
        forget()
        link.request("n2", QUERY, {"ids": []}, 5.0, answers.append)
        new = sent[-1]["req"]
        assert sent[-1]["proto"] == 1
        answer(old)                   # the old process's answer, read late
        assert answers[-1] is not None and answers[-1]["speaks"] == 2      # it still answers its request
        assert link.versions.version_for("n2") == 1
        answer(new)
        assert link.versions.version_for("n2") == 2
