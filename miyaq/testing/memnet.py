"""The wire between in-process nodes: every message passes here, and a test
decides what happens to it.

A :class:`Network` carries the peer requests, their answers and the
replication streams of the nodes built with a
:class:`~miyaq.testing.memtransport.MemoryTransport`, all in one gevent
hub. Each message is the frames the ZeroMQ transport would send, decoded
again on arrival by the same code; it is delivered in order per
(source, destination) by one greenlet per destination, and recorded in
:attr:`Network.log` (a :class:`~miyaq.testing.memnet_message.Message` each: kind, source, destination,
body, fate) for assertions.

A test acts on messages on purpose with rules, each matching a kind
(``REPLICATE``, ``QUERY``, ``SYNC``, ``CANCEL``, ``ANSWER``, ``EVENTS``, ``HEARTBEAT``),
a source, a destination, a task id, a stream event (``"S"``, ``"F"`` ...)
or the command an answer answers, for ``count`` messages or until removed:

* :meth:`Network.drop` -- lost (a request then gets silence at its deadline);
* :meth:`Network.hold` -- kept until :meth:`Rule.release`;
* :meth:`Network.delay` -- delivered ``seconds`` later (by the monotonic
  clock, so :func:`miyaq.runtime.clock.advance` hurries it);
* :meth:`Network.duplicate` -- delivered twice;
* :meth:`Network.reorder` -- delivered after the next message of the same
  stream or link;
* :meth:`Network.refuse` -- a peer request refused at its send, for
  ``seconds`` (monotonic) or until removed: the sender's link reports it
  could not go, as a ZeroMQ DEALER with ``IMMEDIATE`` does while its
  connection is not up (a new CURVE link, until its handshake is done);
* :meth:`Network.cut` / :meth:`Network.heal` -- a node cut off, both ways or
  one way (``"in"``: it hears nothing, ``"out"``: nobody hears it).

A node that is not running (never attached, or closed) cannot be sent a
request: the request fails at once, as a ZeroMQ DEALER with ``IMMEDIATE``
and no connection does.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from miyaq.runtime import CRITICAL, Supervisor, green, monotonic
from miyaq.testing.memnet_message import (ANSWER, EVENTS, HEARTBEAT, KINDS, PEER, REQUESTS, STREAM, Message,
                                          stream_body)

logger = logging.getLogger(__name__)

# What a message is, its kinds and the decoding of a stream's: miyaq.testing.memnet_message (named here too).
__all__ = ["ANSWER", "EVENTS", "HEARTBEAT", "KINDS", "LOG_LIMIT", "PEER", "REQUESTS", "STREAM", "TICK", "Endpoint",
           "Message", "Network", "Rule", "stream_body"]

#: How often (real seconds) the network expires requests, releases delayed
#: messages and checks for silent streams.
TICK = 0.02
#: Messages kept in :attr:`Network.log`.
LOG_LIMIT = 100_000


@dataclass(eq=False)
class Rule:
    """What happens to the messages it matches (made by the :class:`Network`'s methods)."""

    network: Network
    action: str
    kind: str | None = None
    src: str | None = None
    dst: str | None = None
    task: str | None = None
    event: str | None = None
    answering: str | None = None
    where: Callable[[Message], bool] | None = None
    count: int | None = None
    seconds: float = 0.0
    until: float | None = None      # monotonic: the rule ends then (``refuse``)
    hits: int = 0
    held: list[Message] = field(default_factory=list)
    active: bool = True

    def matches(self, msg: Message) -> bool:
        return (self.active and (self.count is None or self.hits < self.count)
                and (self.until is None or monotonic() < self.until)
                and (self.kind is None or msg.kind == self.kind)
                and (self.src is None or msg.src == self.src)
                and (self.dst is None or msg.dst == self.dst)
                and (self.answering is None or msg.answering == self.answering)
                and (self.event is None or bool(msg.events(self.event)))
                and (self.task is None or self.task in msg.task_ids())
                and (self.where is None or self.where(msg)))

    def release(self) -> list[Message]:
        """Stop holding: deliver what was held (in order) and remove the rule."""
        self.remove()
        held, self.held = self.held, []
        for msg in held:
            self.network._deliver(msg)
        return held

    def remove(self) -> None:
        """Stop applying the rule (messages it holds stay held until :meth:`release`)."""
        self.active = False
        if self in self.network.rules:
            self.network.rules.remove(self)


class Endpoint(Protocol):
    """What a node attaches to the network (see :mod:`miyaq.testing.memtransport`)."""

    def receive(self, msg: Message) -> bool:
        """Handle one delivered message; True if it was a peer message (an after-burst is due)."""

    def after_burst(self) -> None: ...

    def tick(self, now: float) -> None:
        """Expire requests and check streams for silence (``now``: monotonic)."""

    def peer_down(self, node_id: str) -> None:
        """``node_id`` went down (stopped, or replaced by its restart): what
        it spoke is forgotten, as a ZeroMQ link's connection closing does."""


class Network:
    """The wire of one in-process cluster (see the module's docstring)."""

    def __init__(self) -> None:
        self.supervisor = Supervisor("memnet")
        self.log: deque[Message] = deque(maxlen=LOG_LIMIT)
        self.rules: list[Rule] = []
        self.nodes: dict[str, Endpoint] = {}
        self._inboxes: dict[str, Any] = {}
        self._workers: dict[str, Any] = {}
        self._delayed: list[tuple[float, Message]] = []
        self._asked: dict[tuple[str, int], str] = {}     # (asker, req) -> command
        self._reordering: dict[tuple[str, str, str], list[Message]] = {}
        self._ticker: Any = None

    # -- nodes -------------------------------------------------------------------------
    def attach(self, node_id: str, endpoint: Endpoint) -> None:
        """``node_id`` is up: messages for it go to ``endpoint`` (a restarted node replaces the old)."""
        self.detach(node_id)
        self.nodes[node_id] = endpoint
        inbox = self._inboxes[node_id] = green.Queue()
        self._workers[node_id] = self.supervisor.spawn(f"memnet inbox {node_id}", self._serve, node_id,
                                                       endpoint, inbox, policy=CRITICAL)
        if self._ticker is None:
            self._ticker = self.supervisor.spawn("memnet ticker", self._tick, policy=CRITICAL)

    def detach(self, node_id: str) -> None:
        """``node_id`` is down: what is queued for it is lost."""
        self.nodes.pop(node_id, None)
        inbox = self._inboxes.pop(node_id, None)
        worker = self._workers.pop(node_id, None)
        if worker is not None and worker is not green.current():
            worker.kill(block=False)
        while inbox is not None and not inbox.empty():
            inbox.get().fate = "lost"
        for endpoint in self.nodes.values():
            endpoint.peer_down(node_id)

    def up(self, node_id: str) -> bool:
        return node_id in self.nodes

    def close(self) -> None:
        for node_id in list(self.nodes):
            self.detach(node_id)
        self.supervisor.kill()

    # -- the wire -------------------------------------------------------------------------
    def send(self, msg: Message) -> bool:
        """A node sends ``msg``: record it, apply the first rule that matches,
        deliver. False if a :meth:`refuse` rule refused it (never sent: its
        sender's link says so)."""
        refusing = next((r for r in self.rules if r.action == "refuse" and msg.channel == PEER
                         and msg.kind in REQUESTS and r.matches(msg)), None)
        if refusing is not None:
            refusing.hits += 1
            msg.fate = "refused"
            self.log.append(msg)
            return False
        if msg.channel == PEER and msg.kind in REQUESTS and isinstance(msg.body.get("req"), int):
            self._asked[(msg.src, msg.body["req"])] = msg.kind
            if len(self._asked) > LOG_LIMIT:
                self._asked.pop(next(iter(self._asked)))
        elif msg.kind == ANSWER:
            msg.answering = self._asked.pop((msg.dst, msg.body.get("req")), None)  # type: ignore[arg-type]
        self.log.append(msg)
        for rule in self.rules:
            if rule.action != "refuse" and rule.matches(msg):
                rule.hits += 1
                if self._apply(rule, msg):
                    return True
                break
        self._deliver(msg)
        return True

    def _apply(self, rule: Rule, msg: Message) -> bool:
        """Act on ``msg``; True if it must not be delivered now."""
        action = rule.action
        if action in ("drop", "cut"):
            msg.fate = "cut" if action == "cut" else "dropped"
            logger.debug("memnet: %s %r", msg.fate, msg)
            return True
        if action == "hold":
            msg.fate = "held"
            rule.held.append(msg)
            return True
        if action == "delay":
            msg.fate = "delayed"
            self._delayed.append((monotonic() + rule.seconds, msg))
            return True
        if action == "duplicate":
            msg.copies = 2
            return False
        msg.fate = "held"      # reorder: after the next message of its link
        self._reordering.setdefault((msg.channel, msg.src, msg.dst), []).append(msg)
        return True

    def _deliver(self, msg: Message) -> None:
        inbox = self._inboxes.get(msg.dst)
        if inbox is None:
            msg.fate = "lost"
            return
        msg.fate = "queued"
        for _ in range(msg.copies):
            inbox.put(msg)
        waiting = self._reordering.pop((msg.channel, msg.src, msg.dst), None)
        for late in waiting or ():
            late.fate = "queued"
            inbox.put(late)

    def _serve(self, node_id: str, endpoint: Endpoint, inbox: Any) -> None:
        """Deliver ``node_id``'s messages in order, in bursts (as a socket reader does)."""
        while True:
            msg = inbox.get()
            peer = self._receive(endpoint, msg)
            for _ in range(256):
                if inbox.empty():
                    break
                peer = self._receive(endpoint, inbox.get()) or peer
            if peer:
                endpoint.after_burst()

    @staticmethod
    def _receive(endpoint: Endpoint, msg: Message) -> bool:
        msg.fate = "delivered"
        return endpoint.receive(msg)

    def _tick(self) -> None:
        while True:
            green.sleep(TICK)
            now = monotonic()
            if self._delayed:
                due = [m for at, m in self._delayed if at <= now]
                self._delayed = [(at, m) for at, m in self._delayed if at > now]
                for msg in due:
                    self._deliver(msg)
            for endpoint in list(self.nodes.values()):
                endpoint.tick(now)

    def quiet(self) -> bool:
        """Nothing queued, delayed or waiting to be reordered (held messages do not count)."""
        return (all(q.empty() for q in self._inboxes.values()) and not self._delayed
                and not any(self._reordering.values()))

    # -- rules ---------------------------------------------------------------------------------
    def _rule(self, action: str, kind: str | None, src: str | None, dst: str | None, count: int | None,
              seconds: float = 0.0, **match: Any) -> Rule:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown message kind {kind!r}: one of {', '.join(KINDS)}")
        rule = Rule(self, action, kind, src, dst, count=count, seconds=seconds, **match)
        if action == "cut":
            self.rules.insert(0, rule)    # a cut node hears nothing, whatever else applies
        else:
            self.rules.append(rule)
        return rule

    def drop(self, kind: str | None = None, src: str | None = None, dst: str | None = None,
             count: int | None = None, **match: Any) -> Rule:
        """Lose the matching messages (``match``: ``task``, ``event``, ``answering``, ``where``)."""
        return self._rule("drop", kind, src, dst, count, **match)

    def hold(self, kind: str | None = None, src: str | None = None, dst: str | None = None,
             count: int | None = None, **match: Any) -> Rule:
        """Keep the matching messages until ``rule.release()``."""
        return self._rule("hold", kind, src, dst, count, **match)

    def delay(self, seconds: float, kind: str | None = None, src: str | None = None, dst: str | None = None,
              count: int | None = None, **match: Any) -> Rule:
        """Deliver the matching messages ``seconds`` (monotonic) after they were sent."""
        return self._rule("delay", kind, src, dst, count, seconds=seconds, **match)

    def duplicate(self, kind: str | None = None, src: str | None = None, dst: str | None = None,
                  count: int | None = None, **match: Any) -> Rule:
        """Deliver the matching messages twice."""
        return self._rule("duplicate", kind, src, dst, count, **match)

    def reorder(self, kind: str | None = None, src: str | None = None, dst: str | None = None,
                count: int | None = 1, **match: Any) -> Rule:
        """Deliver each matching message after the next message of the same link or stream."""
        return self._rule("reorder", kind, src, dst, count, **match)

    def refuse(self, kind: str | None = None, src: str | None = None, dst: str | None = None,
               seconds: float | None = None, count: int | None = None, **match: Any) -> Rule:
        """Refuse the matching peer requests at their send (``kind`` one of
        ``REPLICATE``, ``QUERY``, ``SYNC``, ``CANCEL``; None: any of them) for
        ``seconds`` from now (monotonic: :func:`miyaq.runtime.clock.advance`
        ends it sooner; None: until removed) or ``count`` requests. Answers and
        streams are never refused. A refused request is recorded (fate
        ``refused``) and the sender hears it could not be sent."""
        if kind is not None and kind not in REQUESTS:
            raise ValueError(f"only requests are refused at their send: one of {', '.join(REQUESTS)}, not {kind!r}")
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be positive, not {seconds!r}")
        rule = self._rule("refuse", kind, src, dst, count, **match)
        rule.until = None if seconds is None else monotonic() + seconds
        return rule

    def cut(self, node_id: str, direction: str = "both") -> list[Rule]:
        """Cut ``node_id`` off: ``"both"``, ``"in"`` (it hears nothing) or ``"out"`` (nobody hears it)."""
        if direction not in ("both", "in", "out"):
            raise ValueError(f"direction must be 'both', 'in' or 'out', not {direction!r}")
        rules = []
        if direction in ("both", "out"):
            rules.append(self._rule("cut", None, node_id, None, None))
        if direction in ("both", "in"):
            rules.append(self._rule("cut", None, None, node_id, None))
        return rules

    def heal(self, node_id: str | None = None) -> None:
        """Undo :meth:`cut` for ``node_id`` (every node if None). Other rules stay."""
        for rule in [r for r in self.rules if r.action == "cut"]:
            if node_id is None or node_id in (rule.src, rule.dst):
                rule.remove()

    def clear(self) -> None:
        """Remove every rule and deliver everything held."""
        for rule in list(self.rules):
            rule.release()

    # -- assertions ---------------------------------------------------------------------------
    def messages(self, kind: str | None = None, src: str | None = None, dst: str | None = None,
                 **match: Any) -> list[Message]:
        """Recorded messages that match (same filters as the rules)."""
        probe = Rule(self, "match", kind, src, dst, **match)
        return [m for m in self.log if probe.matches(m)]
