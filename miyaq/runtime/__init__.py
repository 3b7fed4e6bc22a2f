"""The runtime: the one package that owns gevent and ZeroMQ.

- :mod:`.green` -- the face over gevent: events, queues, locks,
  timeouts, sleep, pools, the WSGI server, thread-safe wake-ups; with its
  parts :mod:`.waits` (waits on the hub, wake-ups from other threads) and
  :mod:`.fairness` (a reader's share of the hub), the only modules that
  import gevent (setup.cfg's import-linter contract
  ``runtime-gevent-facade``);
- :mod:`.supervisor` -- every greenlet is spawned through a
  :class:`Supervisor`, named, with a crash policy (none dies silently);
- :mod:`.sockets` -- with its part :mod:`.green_sockets` (the green
  sockets a forked copy leaves alone), the only modules that import
  ``zmq.green``; every socket is made by a :class:`SocketFactory`;
- :mod:`.clock` -- ``monotonic()`` for deadlines, ``wall()`` for stamps
  other processes read;
- :mod:`.heap` -- the start-up heap of miyaq's own processes, frozen out of
  the cycle collector's sight;
- :mod:`.http` -- outgoing HTTP (webhooks, the console asking other
  members): the standard library's ``http.client`` over :mod:`.green`'s
  sockets;
- :mod:`.interrupts` -- Ctrl-C kept out of greenlets that must not be cut
  short (the gevent client's I/O loop), through :mod:`.green`.

Rules (docs/architecture.md): nothing outside this package imports gevent
or ``zmq.green``; nothing calls ``gevent.spawn``; deadlines use ``monotonic()``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .clock import monotonic, wall

if TYPE_CHECKING:
    from .supervisor import CRITICAL, LOG, RESTART, Policy, Supervisor

__all__ = ["CRITICAL", "LOG", "RESTART", "Policy", "Supervisor", "monotonic", "wall"]

_FROM_SUPERVISOR = frozenset({"CRITICAL", "LOG", "RESTART", "Policy", "Supervisor"})


def __getattr__(name: str) -> Any:
    """The supervisor's names on first use: importing the runtime for its
    clock or its plain and asyncio sockets (the asyncio client) does not
    import gevent."""
    if name in _FROM_SUPERVISOR:
        from . import supervisor
        return getattr(supervisor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
