"""The node's ZAP handler: which CURVE keys may connect, and who they are.

libzmq asks a node (over ``inproc://zeromq.zap.01`` in the node's context)
during every CURVE handshake on its sockets; a key that is not in the
authorized set (or, on the peer port and the replication stream, whose
domain is ``miyaq-peer``, a key that is not a peer's) fails the handshake, so a stranger's
connection never delivers a message. The User-Id of an accepted connection
is its public key (Z85); the service and peer ports look that up in
:attr:`ZapHandler.identities` on every message, so a key revoked while
connected is refused from the next message on (``forbidden``), without a
restart.

pyzmq ships authenticators for threads and asyncio but not gevent; this one
reuses ``zmq.auth.Authenticator``'s request handling in a supervised
greenlet. The set is re-read by :meth:`reload` (the node calls it on SIGHUP)
and when the ``authorized/`` directory changes (checked every
``WATCH_INTERVAL`` seconds). A reload that fails -- whatever the error: an
unreadable directory, a bad or duplicate certificate, more than ``MAX_KEYS``
of them -- keeps the previous set, logs one line saying why and counts it
(``reloads["failed"]`` in STATUS ``security``).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Callable, Coroutine

from zmq.auth.base import Authenticator

from miyaq.errors import MiyaqError
from miyaq.runtime import RESTART, Supervisor, monotonic
from miyaq.runtime import green
from miyaq.runtime.sockets import SocketFactory

from .curve import ZAP_DOMAINS
from .keystore import Identity, KeyStore
from .roles import Role

logger = logging.getLogger(__name__)

WATCH_INTERVAL = 2.0
LOG_EVERY = 10.0


class _Authenticator(Authenticator):
    """pyzmq's ZAP request handling, deciding with :class:`ZapHandler`'s set."""

    def __init__(self, owner: "ZapHandler", context: Any) -> None:
        super().__init__(context=context, log=logging.getLogger(__name__ + ".zmq"))
        self.owner = owner
        for domain in ZAP_DOMAINS.values():
            self.configure_curve_callback(domain=domain, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        return self.owner.admit(key, peer_only=domain == ZAP_DOMAINS["peer"])


def _run_sync(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (our credentials callback is synchronous)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("the ZAP handler suspended; it must answer synchronously")


class ZapHandler:
    def __init__(self, store: KeyStore, supervisor: Supervisor, factory: SocketFactory) -> None:
        self.store = store
        self.factory = factory
        self.supervisor = supervisor
        self.identities: dict[bytes, Identity] = store.authorized()   # ConfigError: the node does not start
        self.refused = 0
        self.admitted = 0
        self.reloads: Counter[str] = Counter()
        # Called after each reload with the names of the keys revoked (or whose
        # role changed); in the hub, must not block.
        self.on_revoked: list[Callable[[set[str]], None]] = []
        self._refused_since_log = 0
        self._last_log = 0.0
        self._address = ""      # the IP the ZAP request being answered names (libzmq gives no port)
        self._auth = _Authenticator(self, factory.ctx)
        self._signature = self._dir_signature()

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Bind the ZAP endpoint in the factory's context and serve it. Must run
        before any CURVE server socket of that context accepts connections."""
        self._auth.zap_socket = self.factory.zap_socket()
        self.supervisor.spawn("zap", self._serve)
        self.supervisor.spawn("zap-watch", self._watch, policy=RESTART)

    def _serve(self) -> None:
        sock = self._auth.zap_socket
        while True:
            frames = sock.recv_multipart()
            # [version, request id, domain, address, routing id, mechanism, key]:
            # the address is the connecting side's IP, without its port.
            self._address = frames[3].decode("ascii", "replace")[:64] if len(frames) > 3 else ""
            _run_sync(self._auth.handle_zap_message(frames))

    # -- decisions -------------------------------------------------------------------
    def admit(self, public_z85: bytes, peer_only: bool = False) -> bool:
        """May this key connect? On the peer port and stream, only peer keys may.
        A refusal is logged at most every ``LOG_EVERY`` seconds with the key
        and the IP address its ZAP request named (libzmq's ZAP requests
        carry no port)."""
        ident = self.identities.get(bytes(public_z85))
        if ident is not None and (not peer_only or ident.role is Role.PEER):
            self.admitted += 1
            return True
        self.refused += 1
        self._refused_since_log += 1
        now = monotonic()
        if now - self._last_log >= LOG_EVERY:
            logger.warning("refused %d CURVE handshake(s): keys this node does not know, or keys other "
                           "than peers' on the peer port or stream (latest %s from %s, on the %s)",
                           self._refused_since_log, bytes(public_z85).decode("ascii", "replace"),
                           self._address or "an address libzmq did not give",
                           "peer port or stream" if peer_only else "service port")
            self._refused_since_log = 0
            self._last_log = now
        return False

    def identity(self, user_id: str | bytes | None) -> Identity | None:
        """The identity behind a message's User-Id; None if unknown or revoked."""
        if user_id is None:
            return None
        if isinstance(user_id, str):
            user_id = user_id.encode("ascii", "replace")
        return self.identities.get(user_id)

    # -- reloading -----------------------------------------------------------------
    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read ``authorized/``; keeps the previous set if it cannot."""
        try:
            fresh = self.store.authorized()
        except Exception as err:  # noqa: BLE001 - whatever reading the directory meets, the node keeps running
            reason = err.message if isinstance(err, MiyaqError) else (
                f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
            self.reloads["failed"] += 1
            logger.error("keys not reloaded (%s): %s; keeping the %d key(s) already loaded",
                         why, reason, len(self.identities))
            return False
        added = len(set(fresh) - set(self.identities))
        removed = len(set(self.identities) - set(fresh))
        # Names whose key went, or whose role changed: what they were let do
        # is withdrawn from the connections they still hold (Core.revoke).
        revoked = {old.name for public, old in self.identities.items() if fresh.get(public) != old}
        self.identities = fresh
        if revoked:
            self._tell_revoked(revoked)
        self.reloads["ok"] += 1
        logger.info("keys reloaded (%s): %d authorized, %d added, %d revoked", why, len(fresh), added, removed)
        return True

    def _tell_revoked(self, names: set[str]) -> None:
        """Run every ``on_revoked`` hook; one that fails is logged and the
        rest still run (the new keys are in force whatever a hook meets: no
        new connection of a revoked key gets in)."""
        for hook in self.on_revoked:
            try:
                hook(names)
            except Exception:  # noqa: BLE001 - the reload must not die halfway (it runs in the watcher)
                logger.exception("keys reloaded, but withdrawing what %s were let do failed; their open "
                                 "connections may keep it until they reconnect", ", ".join(sorted(names)))

    def _dir_signature(self) -> tuple[Any, ...]:
        directory = self.store.authorized_dir
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
            return tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries)
        except OSError:
            return ()

    def _watch(self) -> None:
        while True:
            green.sleep(WATCH_INTERVAL)
            signature = self._dir_signature()
            if signature != self._signature:
                self._signature = signature
                self.reload("authorized/ changed")

    def stats(self) -> dict[str, Any]:
        roles: Counter[str] = Counter(i.role.value for i in self.identities.values())
        return {"keys": len(self.identities), "roles": dict(roles), "handshakes_refused": self.refused,
                "handshakes_admitted": self.admitted, "reloads": dict(self.reloads)}
