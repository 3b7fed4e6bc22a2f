"""Supervised greenlets: every greenlet of a miyaq process is spawned here.

A :class:`Supervisor` gives each greenlet a name and a crash policy, so that
no greenlet dies silently (nameko's ``spawn_managed_thread``, kazoo's
handler): a greenlet that raises is logged with its traceback and counted by
name, then

- ``CRITICAL``: the process cannot work without it (a socket's reader, the
  timer loop, the log committer). The supervisor's ``on_fatal`` is called,
  which stops the process loudly;
- ``RESTART``: a loop that may be started again (a flusher, a ticker). It is
  restarted after a short backoff; more than ``max_restarts`` crashes within
  ``restart_window`` seconds escalate to ``CRITICAL``;
- ``LOG``: a one-shot job (a callback, a webhook delivery). The failure is
  logged and counted; nothing else depends on it.

A greenlet that returns normally is simply forgotten. :meth:`Supervisor.kill`
kills every greenlet it spawned and never raises.
"""
from __future__ import annotations

import enum
import logging
from collections import Counter, deque
from typing import Any, Callable

from . import green
from .clock import monotonic

logger = logging.getLogger(__name__)

FatalHandler = Callable[[str, BaseException], None]


class Policy(enum.Enum):
    CRITICAL = "critical"
    RESTART = "restart"
    LOG = "log"


CRITICAL = Policy.CRITICAL
RESTART = Policy.RESTART
LOG = Policy.LOG

RESTART_BACKOFF = (0.05, 0.2, 1.0, 5.0)


class Supervisor:
    """Spawns, names, watches and kills the greenlets of one process part.

    One supervisor per process is the usual shape (the node's, the worker's);
    parts are handed it, or its :meth:`spawn`, rather than creating their own.
    ``on_fatal(name, exc)`` runs in a fresh greenlet when a ``CRITICAL``
    greenlet dies while the supervisor is not stopping; it must stop the
    process (or at least make the failure visible to whoever can).
    """

    def __init__(self, name: str, on_fatal: FatalHandler | None = None, *,
                 max_restarts: int = 10, restart_window: float = 60.0) -> None:
        self.name = name
        self.on_fatal = on_fatal
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.crashes: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()
        self.fatal: tuple[str, BaseException] | None = None
        self.stopping = False
        self._live: dict[Any, str] = {}
        self._recent: dict[str, deque[float]] = {}

    # -- spawning --------------------------------------------------------------
    def spawn(self, name: str, fn: Callable[..., Any], *args: Any, policy: Policy = CRITICAL) -> Any:
        """Start ``fn(*args)`` in a greenlet named ``name`` under ``policy``."""
        g = green.Greenlet(self._run, name, policy, fn, args)
        self._track(g, name)
        g.start()
        return g

    def spawn_later(self, delay: float, name: str, fn: Callable[..., Any], *args: Any,
                    policy: Policy = LOG) -> Any:
        """Like :meth:`spawn`, ``delay`` seconds from now (kill the result to cancel)."""
        g = green.Greenlet(self._run, name, policy, fn, args)
        self._track(g, name)
        g.start_later(max(0.0, delay))
        return g

    def pool(self, name: str, size: int, policy: Policy = LOG) -> SupervisedPool:
        """A pool of at most ``size`` greenlets, each this supervisor's, named
        ``name``: for a server that spawns one greenlet per connection (gevent's
        WSGI server takes it as its ``spawn``; it stops accepting while full)."""
        return SupervisedPool(self, name, size, policy)

    def _track(self, g: Any, name: str) -> None:
        g.name = f"{self.name}:{name}"
        self._live[g] = name
        g.rawlink(self._forget)

    def _forget(self, g: Any) -> None:
        self._live.pop(g, None)

    def _run(self, name: str, policy: Policy, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        # The exception is handled here rather than by a link, so it is
        # reported once, through logging, instead of also by the hub's printer.
        try:
            return fn(*args)
        except green.GreenletExit:
            raise
        except Exception as exc:
            self._died(name, policy, fn, args, exc)
            return None

    # -- crashes ---------------------------------------------------------------
    def _died(self, name: str, policy: Policy, fn: Callable[..., Any], args: tuple[Any, ...],
              exc: BaseException) -> None:
        if self.stopping:
            return
        self.crashes[name] += 1
        if policy is RESTART and self._may_restart(name):
            delay = RESTART_BACKOFF[min(len(self._recent[name]) - 1, len(RESTART_BACKOFF) - 1)]
            logger.error("%s: greenlet %s died; restarting it in %.2fs", self.name, name, delay, exc_info=exc)
            self.restarts[name] += 1
            self.spawn_later(delay, name, fn, *args, policy=RESTART)
            return
        if policy is LOG:
            logger.error("%s: greenlet %s failed", self.name, name, exc_info=exc)
            return
        logger.critical("%s: critical greenlet %s died; stopping", self.name, name, exc_info=exc)
        self.fatal = (name, exc)
        if self.on_fatal is not None:
            green.Greenlet.spawn(self._call_fatal, self.on_fatal, name, exc)

    def report(self, name: str, exc: BaseException) -> None:
        """A failure a loop caught and carried on from (a callback it called,
        a handler it ran): logged with its traceback and counted under
        ``name`` like a ``LOG`` greenlet's crash, so it is never silent."""
        if self.stopping:
            return
        self.crashes[name] += 1
        logger.error("%s: %s failed", self.name, name, exc_info=exc)

    def _call_fatal(self, handler: FatalHandler, name: str, exc: BaseException) -> None:
        try:
            handler(name, exc)
        except Exception:
            logger.exception("%s: stopping after the death of %s failed", self.name, name)

    def _may_restart(self, name: str) -> bool:
        now = monotonic()
        recent = self._recent.setdefault(name, deque())
        recent.append(now)
        while recent and now - recent[0] > self.restart_window:
            recent.popleft()
        return len(recent) <= self.max_restarts

    # -- stopping --------------------------------------------------------------
    def live(self) -> list[str]:
        """Names of the greenlets still running (for status and tests)."""
        return sorted(self._live.values())

    def kill_part(self, prefix: str, timeout: float = 2.0) -> None:
        """Kill the greenlets whose name starts with ``prefix``, except the caller:
        one part stopping while the process goes on (a part names its greenlets
        ``"<part>:..."``). A restart still pending is cancelled too. Their deaths
        are not crashes. Never raises."""
        me = green.current()
        victims = [g for g, name in list(self._live.items()) if name.startswith(prefix) and g is not me]
        for g in victims:
            self._live.pop(g, None)
        try:
            green.killall(victims, block=True, timeout=timeout)
        except Exception:
            logger.exception("%s: killing the greenlets of %s failed", self.name, prefix)

    def kill(self, timeout: float = 2.0) -> None:
        """Kill every greenlet this supervisor spawned, except the caller.
        Deaths from here on are expected, not crashes. Never raises."""
        self.stopping = True
        me = green.current()
        victims = [g for g in list(self._live) if g is not me]
        try:
            green.killall(victims, block=True, timeout=timeout)
        except Exception:
            logger.exception("%s: killing greenlets failed", self.name)
        for g in victims:
            self._live.pop(g, None)


class SupervisedPool(green.Pool):
    """A bounded :class:`gevent.pool.Pool` whose greenlets are spawned, named
    and watched by a :class:`Supervisor` (see :meth:`Supervisor.pool`)."""

    def __init__(self, supervisor: Supervisor, name: str, size: int, policy: Policy) -> None:
        super().__init__(size)
        self._supervisor = supervisor
        self._name = name
        self._policy = policy

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start ``fn(*args)`` once the pool has room (it blocks while full)."""
        sup = self._supervisor
        g = green.Greenlet(sup._run, self._name, self._policy, fn, args)
        sup._track(g, self._name)
        self.start(g)
        return g
