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

Hub thread only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from miyaq.errors import Busy

#: An answer of at most this many bytes is written without being counted.
SMALL_ANSWER = 64 * 1024


class AnswerBudget:
    """The bytes of large answers held at once: at most ``limit``
    (``http_answer_budget``) -- plus one answer, when it is the only one."""

    __slots__ = ("_holders", "held", "limit", "refused")

    def __init__(self, limit: int, refused: Callable[[str], None] = lambda reason: None) -> None:
        self.limit = limit
        self.held = 0
        self.refused = refused     # told "answer_budget" at each refusal (the gateway's miyaq_http_refused_total)
        # id(body) -> connections holding it. Each holder keeps the body alive
        # until it gives it back, so its id names no other object meanwhile.
        self._holders: dict[int, int] = {}

    def hold(self, body: bytes) -> HeldAnswer:
        """``body`` as the WSGI answer that counts it until closed, or
        :class:`~miyaq.errors.Busy` (nothing counted) when its bytes would
        bring what is held past the limit."""
        key = id(body)
        holders = self._holders.get(key)
        if holders is not None:       # held already: its bytes are counted
            self._holders[key] = holders + 1
            return HeldAnswer(body, self)
        size = len(body)
        if self.held and self.held + size > self.limit:
            self.refused("answer_budget")
            raise Busy(f"the gateway holds {self.held:,} bytes of answers its clients have not taken yet; this "
                       f"answer of {size:,} would pass its http_answer_budget of {self.limit:,} "
                       "(--http-answer-budget): retry shortly")
        self._holders[key] = 1
        self.held += size
        return HeldAnswer(body, self)

    def give(self, body: bytes) -> None:
        """One holder of ``body`` is done with it."""
        key = id(body)
        holders = self._holders[key] - 1
        if holders:
            self._holders[key] = holders
        else:
            del self._holders[key]
            self.held -= len(body)


class HeldAnswer:
    """A WSGI answer of one body, counted in its budget until the server
    closes it (pywsgi does, in a ``finally``: written or not). Closing twice
    gives it back once."""

    __slots__ = ("body", "budget")

    def __init__(self, body: bytes, budget: AnswerBudget) -> None:
        self.body = body
        self.budget: AnswerBudget | None = budget

    def __iter__(self) -> Iterator[bytes]:
        return iter((self.body,))

    def close(self) -> None:
        budget, self.budget = self.budget, None
        if budget is not None:
            budget.give(self.body)
