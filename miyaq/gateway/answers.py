"""The HTTP answers a gateway has built and not yet handed to the kernel,
bounded in bytes over all its connections (``http_answer_budget``).

An answer is built whole in the node -- a listing, a task's result, a task
leased to ``POST /receive``, ``/metrics`` -- and held by its connection's
greenlet until the kernel has taken its last byte. The kernel holds little
of it (``SEND_LOWAT`` a connection: :func:`~miyaq.gateway.conn_io.bound_send_queue`),
the node all of it, for as long as a client that reads nothing lets each
piece wait ``http_body_timeout``. Before 2026-12-07 nothing else bounded it:
100 connections that each asked ``GET /tasks?limit=10000`` (26.6 MB: 10,000
webhook tasks with 2 KiB URLs) and read nothing took a node from 58 to
2,639 MiB, 200 that each asked for another task's result of 4.2 MB (or
``POST /receive`` of a task with 4 MB of arguments) from 182 to 996 MiB;
``http_max_connections`` (1,024) of the first, 27 GB.

* **Where**: in one place, where the gateway hands an answer to the server
  (:meth:`Gateway._answer`): counted from then until the server closes it --
  written to its end, the client gone, the send deadline passed, or an
  exception -- by the WSGI ``close()`` pywsgi calls on every one of those
  paths (:class:`HeldAnswer`).
* **Small answers are not counted**: one of at most ``SMALL_ANSWER`` bytes
  (64 KiB, the size from which ZeroMQ's answers are looked at too,
  :data:`miyaq.core.unread.LARGE_ANSWER`) goes as before, a comparison
  more. Together they hold at most ``http_max_connections`` x 64 KiB (64 MiB
  by default); nearly every answer is one (a task's status, a submit's,
  a page of 100 tasks without long URLs: about 20 KB).
* **Once per object**: an answer many connections hold at once -- a large
  result shown to every long-poll of its task
  (:meth:`~miyaq.gateway.tasks_api.TasksApi.shown`), the OpenAPI
  document -- is one object in the node, and counts once.
* **Past the budget** a new large answer is refused: 503 ``busy`` with
  ``Retry-After``, naming the setting, counted in
  ``miyaq_http_refused_total{reason="answer_budget"}``; what its request
  did is undone where it can be (:meth:`~miyaq.gateway.request.Response.undo`:
  a task leased to ``POST /receive`` goes back to its queue, no attempt
  spent). An answer is never refused while nothing is counted: one larger
  than the budget still goes out, alone. So the node holds at most the
  budget plus one answer.
* **A client's share**: one client -- its address, as
  ``http_max_client_connections`` counts its connections
  (:func:`~miyaq.gateway.wsgi.client_group`) -- holds at most a quarter of
  the budget (``SHARE_OF_BUDGET``); a new large answer past it is refused
  503 ``busy`` as well, the message saying it is the client's own share,
  counted under ``answer_share``. Before 2026-12-08 there was none: one
  address with its 128 connections asking and never reading held the whole
  budget, and every other client's large answers were refused for as long
  as it held them (``http_body_timeout`` a piece). The bytes of a client's
  answers are those of the distinct answers it holds (one it holds on many
  connections counts once for it too); one answer of a client that holds
  none always goes, as far as its share goes. A client is kept only while
  it holds an answer: at most one entry a connection holding one. With
  ``http_max_client_connections`` 0 (one address is many clients: a proxy,
  a NAT) there is no share, as there is no cap on its connections.
* **Refused unbuilt**: a handler that knows a bound on its answer's size
  before building it asks :meth:`AnswerBudget.room` first
  (:meth:`Gateway.room_for <miyaq.gateway.server.Gateway.room_for>`): a
  listing (:func:`least_listing`), a task's result (:func:`least_result`).
  Before 2026-12-08 every refused answer was built first: 100 refused
  listings of 22.8 MB took 14 s of the node's CPU, 1.2 s now. A task leased
  to ``POST /receive`` is not looked at first: its answer is made where
  the dispatcher leases it, and refused, it is given back.
* **Seen**: the bytes held are the gauge ``miyaq_http_answer_bytes_held``,
  read when scraped.

Hub thread only.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from miyaq.errors import Busy
from miyaq.store.task import Task

#: An answer of at most this many bytes is written without being counted.
SMALL_ANSWER = 64 * 1024

#: The shortest JSON a task's header can have in a listing (:meth:`miyaq.store.task.Task.header`:
#: these keys are always there, each value at least a character; a comma between two),
#: its strings left out (:func:`least_listing` adds them).
LEAST_HEADER = len(json.dumps({key: 0 for key in ("id", "queue", "state", "priority", "eta", "created", "attempt",
                                                   "max_retries", "timeout")}, separators=(",", ":"))) + 1
#: A result or payload of N bytes of msgpack is at least N / this bytes of
#: JSON: the worst is an array of 9-byte integers 0 (``0,``: 4.5 to 1); a
#: value JSON cannot hold goes as base64, longer than its bytes -- so does a
#: map that holds a key twice (:func:`miyaq.gateway.convert.result_fields`),
#: whose JSON would keep one pair of them (before 2026-12-08: 400 KB of
#: one key's pairs shown in 1 KB, and refused unbuilt as at least 80 KB).
MSGPACK_PER_JSON = 5

#: One client holds at most the budget divided by this (a quarter): four
#: clients that read nothing hold it all, one leaves three quarters to the others.
SHARE_OF_BUDGET = 4


class AnswerBudget:
    """The bytes of large answers held at once: at most ``limit``
    (``http_answer_budget``) -- plus one answer, when it is the only one --
    and, with ``shared``, at most ``limit // SHARE_OF_BUDGET`` of them held
    by one client -- plus one answer, when it is the client's only one."""

    __slots__ = ("_clients", "_holders", "held", "limit", "refused", "share")

    def __init__(self, limit: int, refused: Callable[[str], None] = lambda reason: None,
                 shared: bool = True) -> None:
        self.limit = limit
        #: the bytes one client holds at most (None: no share, ``http_max_client_connections`` 0)
        self.share: int | None = limit // SHARE_OF_BUDGET if shared else None
        self.held = 0
        self.refused = refused     # told the reason (answer_budget, answer_share) at each refusal
        # id(body) -> connections holding it. Each holder keeps the body alive
        # until it gives it back, so its id names no other object meanwhile.
        self._holders: dict[int, int] = {}
        # client -> what it holds; only clients holding an answer (dropped at 0)
        self._clients: dict[str, ClientHold] = {}

    def hold(self, body: bytes, client: str) -> HeldAnswer:
        """``body`` as the WSGI answer that counts it until closed, or
        :class:`~miyaq.errors.Busy` (nothing counted) when its bytes would
        bring what ``client`` holds past its share, or what is held past
        the limit."""
        key = id(body)
        size = len(body)
        mine = self._clients.get(client)
        holders = self._holders.get(key)
        self._refuse_past(size, client, mine, mine is None or key not in mine.bodies, holders is None)
        if holders is None:
            self.held += size
        self._holders[key] = (holders or 0) + 1
        if mine is None:
            mine = self._clients[client] = ClientHold()
        mine.take(key, size)
        return HeldAnswer(body, self, client)

    def room(self, least: int, client: str) -> None:
        """Before an answer is built: :class:`~miyaq.errors.Busy` (counted
        as :meth:`hold` counts it) if one of at least ``least`` bytes -- a
        bound its builder is sure of -- would be refused now, so the node
        does not spend the building on it. Only for an answer that will be
        a new object (one held already may still go: :meth:`hold` decides
        it); a bound of ``SMALL_ANSWER`` or less refuses nothing."""
        if least > SMALL_ANSWER:
            self._refuse_past(least, client, self._clients.get(client), True, True, at_least=True)

    def _refuse_past(self, size: int, client: str, mine: ClientHold | None, new_to_client: bool, new: bool,
                     at_least: bool = False) -> None:
        """Busy, counted, if ``size`` bytes more (``new_to_client``: to this
        client's; ``new``: to all) would pass the client's share or the
        limit; ``at_least``: ``size`` is a bound, not the answer's size."""
        if self.share is not None and mine is not None and new_to_client and mine.held + size > self.share:
            self.refused("answer_share")
            raise Busy(f"this client ({client or 'unknown'}) holds {mine.held:,} bytes of answers it has not "
                       f"taken yet; this answer of {'at least ' if at_least else ''}{size:,} would pass its "
                       f"share of the gateway's http_answer_budget, {self.share:,} (a quarter): read the "
                       "answers asked for, or ask for fewer at once, and retry")
        if new and self.held and self.held + size > self.limit:
            self.refused("answer_budget")
            raise Busy(f"the gateway holds {self.held:,} bytes of answers its clients have not taken yet; "
                       f"this answer of {'at least ' if at_least else ''}{size:,} would pass its "
                       f"http_answer_budget of {self.limit:,} (--http-answer-budget): retry shortly")

    def give(self, body: bytes, client: str) -> None:
        """One holder of ``body``, of ``client``, is done with it."""
        key = id(body)
        mine = self._clients[client]
        if mine.give(key, len(body)):
            del self._clients[client]
        holders = self._holders[key] - 1
        if holders:
            self._holders[key] = holders
        else:
            del self._holders[key]
            self.held -= len(body)

    def held_by(self, client: str) -> int:
        """The bytes of the answers ``client`` holds now."""
        mine = self._clients.get(client)
        return 0 if mine is None else mine.held

    def clients(self) -> int:
        """How many clients hold an answer now (the entries kept)."""
        return len(self._clients)


def least_listing(tasks: list[Task]) -> int:
    """The fewest bytes of a listing's answer showing ``tasks``: each header's
    fixed keys and its strings -- id, queue, state, name, URL, key -- that
    JSON writes whole, with quotes and escapes on top (a walk of lengths,
    far cheaper than the headers and their JSON)."""
    least = len(tasks) * LEAST_HEADER
    for task in tasks:
        least += len(task.id) + len(task.queue) + len(task.state) + len(task.name or "") + len(task.url or "") \
            + len(task.key or "")
    return least


def least_result(packed: int) -> int:
    """The fewest bytes of the JSON that shows a msgpack value of ``packed`` bytes."""
    return packed // MSGPACK_PER_JSON


class ClientHold:
    """The answers one client holds: each distinct body's connections, and their bytes."""

    __slots__ = ("bodies", "held")

    def __init__(self) -> None:
        self.bodies: dict[int, int] = {}     # id(body) -> this client's connections holding it
        self.held = 0

    def take(self, key: int, size: int) -> None:
        holders = self.bodies.get(key)
        if holders is None:
            self.held += size
        self.bodies[key] = (holders or 0) + 1

    def give(self, key: int, size: int) -> bool:
        """One of this client's holders of a body is done with it; True when
        the client holds nothing any more."""
        holders = self.bodies[key] - 1
        if holders:
            self.bodies[key] = holders
        else:
            del self.bodies[key]
            self.held -= size
        return not self.bodies


class HeldAnswer:
    """A WSGI answer of one body, counted in its budget (and its client's
    share) until the server closes it (pywsgi does, in a ``finally``:
    written or not). Closing twice gives it back once."""

    __slots__ = ("body", "budget", "client")

    def __init__(self, body: bytes, budget: AnswerBudget, client: str) -> None:
        self.body = body
        self.budget: AnswerBudget | None = budget
        self.client = client

    def __iter__(self) -> Iterator[bytes]:
        return iter((self.body,))

    def close(self) -> None:
        budget, self.budget = self.budget, None
        if budget is not None:
            budget.give(self.body, self.client)
