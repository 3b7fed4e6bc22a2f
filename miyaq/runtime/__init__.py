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
- :mod:`.http` -- the only module that imports geventhttpclient (the
  gateway's outgoing HTTP).

Rules (docs/architecture.md): nothing outside this package imports gevent,
``zmq.green`` or geventhttpclient; nothing calls ``gevent.spawn``; deadlines use ``monotonic()``.
"""
from __future__ import annotations

from .clock import monotonic, wall
from .supervisor import CRITICAL, LOG, RESTART, Policy, Supervisor

__all__ = ["CRITICAL", "LOG", "RESTART", "Policy", "Supervisor", "monotonic", "wall"]
