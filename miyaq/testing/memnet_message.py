"""One message on the in-memory wire (:mod:`miyaq.testing.memnet`): its
kind, source, destination, body and fate, and what it is about -- the task
ids and stream events a test's rules and assertions match on.

A message carries the frames the ZeroMQ transport would send and their
decoded ``body`` (:func:`stream_body` decodes a stream message's); the
network sets its ``fate`` (and an answer's ``answering``) as it passes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from miyaq.runtime import monotonic

#: The two channels: the peer link (requests and their answers) and the streams.
PEER = "peer"
STREAM = "stream"
REQUESTS = ("REPLICATE", "QUERY", "SYNC", "CANCEL")
ANSWER = "ANSWER"
EVENTS = "EVENTS"
HEARTBEAT = "HEARTBEAT"
KINDS = (*REQUESTS, ANSWER, EVENTS, HEARTBEAT)


@dataclass(eq=False)
class Message:
    """One message on the wire. ``fate``: ``queued``, ``delivered``,
    ``dropped``, ``cut``, ``held``, ``delayed``, ``refused`` (never sent),
    ``lost`` (its destination
    was not running when it arrived)."""

    channel: str
    kind: str
    src: str
    dst: str
    frames: list[bytes]
    body: dict[str, Any]
    answering: str | None = None
    at: float = field(default_factory=monotonic)
    fate: str = "queued"
    copies: int = 1

    def events(self, op: str | None = None) -> list[list[Any]]:
        """The stream events it carries (of ``op`` only, if given)."""
        evs = self.body.get("ev") if self.kind == EVENTS else None
        return [e for e in evs or () if isinstance(e, list) and e and (op is None or e[0] == op)]

    def task_ids(self) -> set[str]:
        """Every task id the message is about."""
        body = self.body
        ids: set[str] = set()
        for key in ("ids",):
            ids.update(i for i in body.get(key) or () if isinstance(i, str))
        if isinstance(body.get("id"), str):       # a forwarded CANCEL
            ids.add(body["id"])
        for record in body.get("tasks") or ():
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                ids.add(record["id"])
            elif isinstance(record, list) and record and isinstance(record[0], str):   # a row (recordrow)
                ids.add(record[0])
        states = body.get("states")
        if isinstance(states, dict):
            ids.update(k for k in states if isinstance(k, str))
        for stone in body.get("stones") or ():
            if isinstance(stone, list) and stone and isinstance(stone[0], str):
                ids.add(stone[0])
        ids.update(e[1] for e in self.events() if len(e) > 1 and isinstance(e[1], str))
        return ids

    def __repr__(self) -> str:
        what = self.kind if self.answering is None else f"{self.kind}({self.answering})"
        return f"<{what} {self.src}->{self.dst} {self.fate}>"


def stream_body(frames: list[bytes]) -> dict[str, Any]:
    """The body of a stream message's frames, for the log."""
    body = msgpack.unpackb(frames[1], raw=False)
    return body if isinstance(body, dict) else {}
