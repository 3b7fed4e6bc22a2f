"""The runtime: the one package that owns gevent and ZeroMQ.

- :mod:`.green` -- the only module that imports gevent: events, queues,
  locks, timeouts, sleep, pools, the WSGI server, thread-safe wake-ups;
- :mod:`.supervisor` -- every greenlet is spawned through a
  :class:`Supervisor`, named, with a crash policy (none dies silently);
- :mod:`.sockets` -- the only module that imports ``zmq.green``; every
  socket is made by a :class:`SocketFactory`;
- :mod:`.clock` -- ``monotonic()`` for deadlines, ``wall()`` for stamps
  other processes read;
- :mod:`.heap` -- the start-up heap of miyaq's own processes, frozen out of
  the cycle collector's sight;
- :mod:`.http` -- outgoing HTTP (webhooks, the console asking other
  members): the standard library's ``http.client`` over :mod:`.green`'s
  sockets.

Rules (docs/architecture.md): nothing outside this package imports gevent
or ``zmq.green``; nothing calls ``gevent.spawn``; deadlines use ``monotonic()``.
"""
from __future__ import annotations

from .clock import monotonic, wall
from .supervisor import CRITICAL, LOG, RESTART, Policy, Supervisor

__all__ = ["CRITICAL", "LOG", "RESTART", "Policy", "Supervisor", "monotonic", "wall"]
