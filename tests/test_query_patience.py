"""A standby copy's QUERY waits for a holder as long as that holder lately
took to answer (miyaq.cluster.answer_times): on a narrow link between nodes
a slow answer is not silence.

The network audit of 2026-12-06 (three nodes in network namespaces, 2-5
Mbit/s between them, tasks of 300 KB) saw 19 of 30 tasks taken over by a
standby copy with no failure at all, and tasks run two or three times
after a clean ``miyaq leave``: each QUERY's answer waited seconds behind
megabytes of copies on the same connection, past the 1 s QUERY_TIMEOUT,
and was taken for silence."""
from __future__ import annotations

from typing import Any

from miyaq.cluster import answer_times as answer_times_module
from miyaq.cluster.answer_times import AnswerTimes
from miyaq.cluster.peer_requests import ANSWER, QUERY, REPLICATE, PeerRequests
from miyaq.constants import ANSWER_TIMES_WINDOW, QUERY_PATIENCE_MAX, QUERY_TIMEOUT
from miyaq.protocol import codec


class _Link(PeerRequests):
    """A peer link whose requests go nowhere: the test answers them."""

    def _send_request(self, node_id: str, frames: list[bytes]) -> bool:
        return True


class _Supervisor:
    def spawn(self, *a: Any, **k: Any) -> None:
        raise AssertionError("nothing is spawned")

    def report(self, what: str, exc: BaseException) -> None:
        raise exc


def test_a_holder_whose_answers_came_late_is_waited_for_longer(monkeypatch):
    """Fault: a holder's answers take 3 s on a saturated link; its QUERY
    answers came past the 1 s wait and the standby copy took it for silent.
    An answer that came 3 s after its request -- late, past its own
    deadline -- now makes the next request to that holder wait 6 s; another
    holder's wait is unchanged."""
    clock = [1000.0]
    monkeypatch.setattr("miyaq.cluster.peer_requests.monotonic", lambda: clock[0])
    link = _Link(_Supervisor(), "n0", 1 << 20)      # type: ignore[arg-type]
    silent: list[Any] = []
    body: dict[str, Any] = {"tasks": []}
    link.request("slow", REPLICATE, body, 1.0, silent.append)
    clock[0] += 1.5
    link._expire(clock[0])
    assert silent == [None]                       # taken for silent at its deadline ...
    clock[0] += 1.5
    link._handle_answer(codec.encode(ANSWER, {"req": body["req"], "ids": []}))    # ... answered 3 s after
    assert link.answer_times.patience("slow", QUERY_TIMEOUT, clock[0]) == 6.0
    assert link.answer_times.patience("other", QUERY_TIMEOUT, clock[0]) == QUERY_TIMEOUT
    # A quick answer does not shorten it while the slow one is recent; the window forgets it.
    query: dict[str, Any] = {"ids": []}
    link.request("slow", QUERY, query, 6.0, silent.append)
    clock[0] += 0.1
    link._handle_answer(codec.encode(ANSWER, {"req": query["req"], "states": {}}))
    assert link.answer_times.patience("slow", QUERY_TIMEOUT, clock[0]) == 6.0
    assert link.answer_times.patience("slow", QUERY_TIMEOUT, clock[0] + ANSWER_TIMES_WINDOW + 1) == QUERY_TIMEOUT


def test_patience_is_bounded_and_so_is_what_it_remembers(monkeypatch):
    """A holder that is really gone is still taken for silent, later: the
    wait is at most QUERY_PATIENCE_MAX however slow its answers were; at
    most MAX_TRACKED requests are remembered (the oldest forgotten), at most
    MAX_PEERS peers, and answers to requests never made or forgotten are
    ignored."""
    times = AnswerTimes()
    times.sent(1, "p", 0.0)
    times.answered(1, 60.0)
    assert times.patience("p", QUERY_TIMEOUT, 60.0) == QUERY_PATIENCE_MAX
    monkeypatch.setattr(answer_times_module, "MAX_TRACKED", 3)
    times = AnswerTimes()
    for req in range(5):
        times.sent(req, "q", 0.0)
    times.answered(0, 9.0)          # forgotten: the oldest went
    times.answered("x", 9.0)        # not a request of ours
    assert times.patience("q", QUERY_TIMEOUT, 9.0) == QUERY_TIMEOUT
    times.answered(4, 2.0)
    assert times.patience("q", QUERY_TIMEOUT, 2.0) == 4.0
    monkeypatch.setattr(answer_times_module, "MAX_PEERS", 2)
    for req, peer in ((10, "a"), (11, "b")):
        times.sent(req, peer, 0.0)
        times.answered(req, 3.0)
    assert times.patience("q", QUERY_TIMEOUT, 3.0) == QUERY_TIMEOUT      # heard from longest ago: forgotten
    assert times.patience("b", QUERY_TIMEOUT, 3.0) == 6.0


def test_an_answer_after_its_request_ended_in_silence_is_counted_and_logged(monkeypatch, caplog):
    """A QUERY's answer that came after the QUERY had ended in silence was
    dropped without a word: a chaos run (seed 87, 2026-12-08) had a standby
    copy run seven tasks a live holder held ready, and nothing said whether
    that holder's answer came late or never. Now it is counted per peer and
    logged with how long it took; an answer in time, or one a request takes
    late (a REPLICATE's), is not."""
    clock = [1000.0]
    monkeypatch.setattr("miyaq.cluster.peer_requests.monotonic", lambda: clock[0])
    link = _Link(_Supervisor(), "n0", 1 << 20)      # type: ignore[arg-type]
    got: list[Any] = []
    query: dict[str, Any] = {"ids": ["t1"]}
    in_time: dict[str, Any] = {"ids": ["t2"]}
    copy: dict[str, Any] = {"tasks": []}
    link.request("n2", QUERY, query, 1.0, got.append)
    link.request("n3", QUERY, in_time, 1.0, got.append)
    link.request("n2", REPLICATE, copy, 1.0, got.append, late=got.append)
    clock[0] += 0.5
    link._handle_answer(codec.encode(ANSWER, {"req": in_time["req"], "states": {}}))
    clock[0] += 1.0
    link._expire(clock[0])
    assert got == [{"req": in_time["req"], "states": {}}, None, None]
    clock[0] += 0.25
    with caplog.at_level("INFO", logger="miyaq.cluster.peer_requests"):
        link._handle_answer(codec.encode(ANSWER, {"req": query["req"], "states": {}}))
        link._handle_answer(codec.encode(ANSWER, {"req": copy["req"], "ids": []}))
    assert link.answers_past_deadline == {"n2": 1}
    assert got[-1] == {"req": copy["req"], "ids": []}        # the copy's answer taken late, not logged
    lines = [r.getMessage() for r in caplog.records if "after the request had ended in silence" in r.getMessage()]
    assert lines == ["an answer from peer n2 came 1.75 s after its request was sent, after the request had ended "
                     "in silence (for a QUERY: its standby copies went on as if that holder were gone); 1 such "
                     "answer(s) from it so far"]
