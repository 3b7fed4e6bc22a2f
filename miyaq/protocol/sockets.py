"""The ROUTER every node binds (service and peer): one recipe.

``ROUTER_MANDATORY`` so a send to a gone or full peer fails instead of
vanishing, ``ROUTER_HANDOVER`` so a peer that reconnects with its identity
takes over, ``LINGER`` 0 so closing never hangs, and high-water marks
raised well above any credit window (nothing relies on them).
"""
from __future__ import annotations

from typing import Any

HWM = 100_000


def bind_router(zmq: Any, ctx: Any, bind: str, options: dict[int, int] | None = None) -> Any:
    """A bound ROUTER from ``ctx``; ``zmq`` is the module (``zmq.green``).
    ``options`` are set before binding: libzmq copies a listener's options
    when it binds, so an option set afterwards would not reach connections."""
    sock = ctx.socket(zmq.ROUTER)
    for option, value in (options or {}).items():
        sock.setsockopt(option, value)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.bind(bind)
    return sock
