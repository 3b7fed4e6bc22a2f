"""A miyaq node: the lifecycle of its parts.

A node is assembled by :func:`miyaq.node.assemble.build_node` from its core
(:class:`~miyaq.core.core.Core`, driven by its
:class:`~miyaq.core.clockwork.Clockwork`) and its parts: persistence, the
role (standalone or clustered), periodic schedules, metrics and the HTTP
gateway. Each part has the same small lifecycle (:class:`Part`).

* :meth:`Node.start`: every part's ``setup`` in order (the log is replayed,
  the role decides whether to reconcile), then every part's ``start``.
* :meth:`Node.stop` (SIGTERM, SIGINT): stop accepting submits and leasing
  tasks, wait up to ``shutdown_grace`` for running tasks to report, then
  every part's ``stop`` in reverse order (the gateway's waits up to
  ``min(webhook_timeout, shutdown_grace)`` for webhook deliveries in
  flight; a second SIGTERM or SIGINT ends both waits at once; a critical
  greenlet that died, or a failed start, stops with grace 0: no wait),
  the supervisor's greenlets killed, every part's ``kill`` in reverse order
  and the sockets closed. A part that fails to stop is logged and the rest
  still stop; the node always ends stopped.
* SIGHUP: the authorized keys are read again (with keys,
  :meth:`miyaq.security.zap.ZapHandler.reload`): added keys connect,
  revoked ones are refused from their next message, without a restart; and
  the gateway's HTTP tokens file (``http_tokens``), its webhook signing
  secrets (``webhook_signing_secrets``), its HTTPS certificate
  and key, and the CA certificates its console trusts (``http_ca``) likewise.
"""
from __future__ import annotations

import logging
import signal
from typing import Any, Protocol

from miyaq import __version__
from miyaq.config import NodeConfig
from miyaq.constants import DRAIN_POLL
from miyaq.core.binding import remove_unix_sockets
from miyaq.core.clockwork import Clockwork
from miyaq.core.core import Core
from miyaq.core.handles import NodeRole
from miyaq.node.status import NodeStatus
from miyaq.protocol import codec
from miyaq.runtime import LOG, Supervisor, green, heap, monotonic
from miyaq.runtime.sockets import SocketFactory
from miyaq.security.zap import ZapHandler

logger = logging.getLogger(__name__)

#: Seconds the stop waits after answering long-polls ``shutting_down``, so
#: those answers leave before the sockets close with linger 0.
ANSWER_LINGER = 0.05


class Part(Protocol):
    """A part of a node, started and stopped by it.

    ``setup`` prepares (before any part starts; may read disk); ``start``
    begins work (spawns through the node's supervisor); ``stop`` ends it
    gracefully (may wait, bounded); ``kill`` releases what is left at once
    (sockets, files) and never raises. ``stop`` may not have run before
    ``kill`` (a part whose setup failed)."""

    name: str

    def setup(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...


class Node:
    def __init__(self, config: NodeConfig, *, supervisor: Supervisor, sockets: SocketFactory, core: Core,
                 clockwork: Clockwork, role: NodeRole, status: NodeStatus, parts: list[Part],
                 keys: ZapHandler | None = None, hurry: green.Event | None = None) -> None:
        """``hurry``: set by a second SIGTERM or SIGINT while stopping; the
        composition root gives the same event to the parts whose stop waits
        up to ``shutdown_grace`` (the gateway's webhooks), so that wait ends too."""
        self.config = config
        self.id = config.id
        self.supervisor = supervisor
        self.sockets = sockets
        self.core = core
        self.clockwork = clockwork
        self.role = role
        self.report = status
        self.parts = parts
        self.keys = keys
        self.crashed: BaseException | None = None
        self._starting = False
        self._stop_asked = False     # a signal came while starting: stop once start() is done
        self._stopping = False
        # A second signal while stopping: wait no longer for running tasks,
        # nor for webhook deliveries in flight.
        self._hurry = hurry if hurry is not None else green.Event()
        self._stopped = green.Event()
        supervisor.on_fatal = self._fatal

    def part(self, name: str) -> Any:
        """The part called ``name`` (``"gateway"``, ``"periodic"``...), or None."""
        return next((p for p in self.parts if p.name == name), None)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> Node:
        """Set up, then start, every part; a failure stops what started and is
        raised. A stop asked by a signal meanwhile (:meth:`ask_stop`) waits
        for this to end, then stops the node as at any other time; a start-up
        failure after such a request is logged, not raised (the operator
        asked for a stop, and gets one)."""
        self._starting = True
        try:
            for part in self.parts:
                if self._stop_asked:
                    break
                part.setup()
            if not self.config.data_dir and not self.config.zk:
                logger.warning("node %s keeps tasks in memory only (no --data-dir): "
                               "they do not survive a restart", self.id)
            for part in self.parts:
                if self._stop_asked:
                    break
                part.start()
        except BaseException as exc:
            self._starting = False
            self.stop(0)
            if self._stop_asked and isinstance(exc, Exception):
                logger.info("node %s: start-up ended by the stop asked meanwhile (%s)", self.id, exc)
                return self
            raise
        self._starting = False
        if self._stop_asked:
            self.stop()
            return self
        config = self.config
        also = "".join(f" and {ipc}" for ipc in config.ipc_endpoints)
        logger.info("miyaq %s node %s serving on %s%s", __version__, self.id, config.bind_endpoint(config.port), also)
        if config.advertise:
            logger.info("node %s advertises %s (service %s)", self.id, config.advertise, config.endpoint(config.port))
        return self

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            green.on_signal(sig, lambda: self.supervisor.spawn("signal stop", self.ask_stop, policy=LOG))
        green.on_signal(signal.SIGHUP, self.reload)

    def ask_stop(self) -> None:
        """SIGTERM, SIGINT: stop -- at once, or, during :meth:`start`, as soon
        as the part being set up or started is done. Before 2026-12-05 the stop
        ran beside the start: it closed the log a replay was still reading
        (a traceback, exit status 1) or the parts started after "stopped"."""
        if self._starting:
            if not self._stop_asked:
                self._stop_asked = True
                logger.info("node %s: stop asked while starting; stopping once the part at hand is up", self.id)
            return
        if self._stopping:
            self._hurry_stop()
            return
        self.stop()

    def _hurry_stop(self) -> None:
        """A second SIGTERM or Ctrl-C while the node stops: wait no longer --
        for running tasks (``shutdown_grace``) nor, after them, for webhook
        deliveries in flight. Their leases run out as after any stop; each
        runs again (a replica, or this node after a restart with
        ``--data-dir``). Before 2026-12-05 the node waited the whole grace
        whatever was sent, and then (that fixed) still the deliveries'."""
        if not self._hurry.is_set():
            self._hurry.set()
            logger.warning("node %s: asked again to stop: not waiting for the %d running task(s) nor for webhook "
                           "deliveries in flight any longer", self.id, self.core.running())

    def reload(self) -> None:
        """SIGHUP: read the authorized keys, the HTTP tokens, the webhook signing secrets, the HTTPS
        certificate and http_ca again."""
        self.reload_keys()
        gateway = self.part("gateway")
        if gateway is not None:
            gateway.reload("SIGHUP")

    def reload_keys(self) -> bool:
        """Read the authorized keys again (SIGHUP). False without keys, or
        when the directory could not be read (the previous set is kept)."""
        if self.keys is None:
            gateway = self.part("gateway")
            console = gateway is not None and gateway.console is not None
            files = [what for what, given in (("the HTTP tokens file", self.config.http_tokens),
                                               ("the webhook signing secrets", self.config.webhook_signing_secrets),
                                               ("the HTTPS certificate and key", self.config.http_cert),
                                               ("the CA certificates of http_ca", console and self.config.http_ca))
                     if given and gateway is not None]
            listed = ", ".join(files[:-1]) + " and " + files[-1] if len(files) > 1 else "".join(files)
            logger.info("node %s: SIGHUP: no authorized keys to read again (no --keys); %s", self.id,
                        f"reading {listed} again" if files else "nothing else to read again")
            return False
        return self.keys.reload("SIGHUP")

    def serve_forever(self) -> None:
        """Start, keep the start-up heap out of the cycle collector's way
        (:mod:`miyaq.runtime.heap`: this is the node's own process), log
        what its hub would print to stderr (:func:`green.log_hub_errors`),
        and serve until stopped."""
        green.log_hub_errors()
        self.start()
        heap.freeze_startup_heap()
        codec.pause_collector_from(codec.NODE_PAUSE_FROM)    # large bodies decoded without the collector's walks
        self._stopped.wait()

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._stopped.wait(timeout))

    def _fatal(self, name: str, exc: BaseException) -> None:
        """A critical greenlet died (the supervisor logged it): stop loudly."""
        self.crashed = exc
        self.stop(0)

    def stop(self, grace: float | None = None) -> None:
        """Drain and stop. Idempotent; never raises; the node ends stopped.
        ``grace`` 0 (a crash, a failed start) waits for nothing: neither
        running tasks nor webhook deliveries in flight (those waited up to
        min(webhook_timeout, shutdown_grace) before 2026-12-05's review)."""
        if self._stopping:
            self._stopped.wait()
            return
        self._stopping = True
        if grace is not None and grace <= 0:
            self._hurry.set()
        try:
            self._drain(self.config.shutdown_grace if grace is None else grace)
            for part in reversed(self.parts):
                self._guarded(part.name, "stop", part.stop)
            self.supervisor.kill()
            for part in reversed(self.parts):
                self._guarded(part.name, "kill", part.kill)
            live = len(self.core.engine.table.live)
            if live and not self.config.data_dir:
                logger.warning("node %s stopped holding %d unfinished task(s) in memory only", self.id, live)
        finally:
            self.sockets.close()
            remove_unix_sockets(self.config.ipc_endpoints)
            logger.info("node %s stopped", self.id)
            self._stopped.set()

    def _drain(self, grace: float) -> None:
        """Nothing new is accepted or leased, and the long-polls that cannot
        be answered otherwise now are answered ``shutting_down``; wait for
        running tasks -- on workers, and leased to pull consumers -- to
        report; then answer ``shutting_down`` to the RESULT waits left (of
        tasks still running) and give those answers a moment to leave
        before the sockets close (linger 0)."""
        core = self.core
        answered = core.drain()
        logger.info("node %s stopping: %d running task(s) (%d on workers, %d leased to pull consumers), "
                    "%d long-poll(s) answered shutting_down, grace %.1fs", self.id, core.running(),
                    core.running_on_workers(), core.leased_to_pulls(), answered, grace)
        deadline = monotonic() + grace
        while monotonic() < deadline and core.running() and not self._hurry.is_set():
            self._hurry.wait(DRAIN_POLL)
        left = core.drained()
        if left:
            logger.info("node %s: %d result wait(s) answered shutting_down (their tasks still run)", self.id, left)
        if answered or left:
            green.sleep(ANSWER_LINGER)

    def _guarded(self, name: str, step: str, fn: Any) -> None:
        try:
            fn()
        except Exception:
            logger.exception("node %s: %s of part %s failed; stopping the others", self.id, step, name)

    # -- views -------------------------------------------------------------------
    def status(self, now: float) -> dict[str, Any]:
        """STATUS and ``GET /status``."""
        return self.report(now)
