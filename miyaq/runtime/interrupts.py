"""Ctrl-C kept out of the greenlets that must not be cut short.

Python runs a signal's handler in whichever greenlet of the main thread is
running: its own SIGINT handler then raises ``KeyboardInterrupt`` there,
at any bytecode. :func:`shield_from_ctrl_c` names greenlets (the gevent
client's I/O loop) in which it is raised in the main greenlet instead.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

from . import green


class _CtrlCShield:
    """Keeps Python's Ctrl-C out of some greenlets (:func:`shield_from_ctrl_c`).

    Python runs a signal's handler in whichever greenlet of the main thread
    is running, at any bytecode: Python's own SIGINT handler then raises
    ``KeyboardInterrupt`` there, in the middle of whatever it was doing. In
    a greenlet that must go on -- a library's I/O loop, halfway through
    moving a batch from one list to another -- that loses work. While a
    shielded greenlet exists, SIGINT's handler is one that raises the
    interrupt in the main greenlet instead when a shielded one runs (from
    the hub at its next loop iteration, :func:`~miyaq.runtime.green.raise_in_main`), and in place
    otherwise, as Python's does. Installed only over Python's own handler,
    from the main thread; put back when the last shielded greenlet ends, if
    nobody replaced it meanwhile. A program's own handlers are left alone."""

    def __init__(self) -> None:
        self.shielded: set[Any] = set()
        self.installed = False
        # One object, compared by identity with what signal.getsignal returns
        # (each read of a method makes a new bound method: an ``is`` test on
        # ``self._handle`` never held, so the handler was never put back and
        # every later client went unshielded, before 2026-12-05's review).
        self.handler = self._handle

    def add(self, greenlet: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return              # signals land in the main thread only: nothing to keep out here
        if not self.installed:
            if signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, self.handler):
                return          # the program's own handler: not ours to wrap
            signal.signal(signal.SIGINT, self.handler)
            self.installed = True
        self.shielded.add(greenlet)
        greenlet.rawlink(self._ended)

    def _ended(self, greenlet: Any) -> None:
        self.shielded.discard(greenlet)
        if not self.shielded and self.installed:
            self.installed = False
            if signal.getsignal(signal.SIGINT) is self.handler:
                signal.signal(signal.SIGINT, signal.default_int_handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if green.current() in self.shielded:
            green.raise_in_main(KeyboardInterrupt())
            return
        raise KeyboardInterrupt


_ctrl_c_shield = _CtrlCShield()


def shield_from_ctrl_c(greenlet: Any) -> None:
    """Keep Ctrl-C's ``KeyboardInterrupt`` out of ``greenlet`` while it
    lives: raised in the main greenlet instead (:class:`_CtrlCShield`). Call
    from the thread that runs it; a no-op outside the main thread or when
    the program installed a SIGINT handler of its own."""
    _ctrl_c_shield.add(greenlet)
