"""A small TCP relay: ``listen`` address to ``target`` address, in threads.

Used by :mod:`.netns` to let nodes in network namespaces reach a ZooKeeper
that listens on 127.0.0.1 only. Bounded: at most ``max_connections`` at
once (more are refused), every socket closed on :meth:`TcpRelay.stop`. When
the target refuses (ZooKeeper stopped by the nemesis), the client's
connection is closed at once, as a refused connection would be.
"""
from __future__ import annotations

import logging
import socket
import threading

logger = logging.getLogger(__name__)

BUFFER = 65536


class TcpRelay:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int], max_connections: int = 256) -> None:
        self.listen = listen
        self.target = target
        self.max_connections = max_connections
        self._server = socket.create_server(listen, reuse_port=False)
        self._server.settimeout(0.5)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, name="chaos-relay", daemon=True)

    def start(self) -> TcpRelay:
        self._thread.start()
        logger.info("relaying %s:%d to %s:%d", *self.listen, *self.target)
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                full = len(self._sockets) >= 2 * self.max_connections
            if full:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="chaos-relay-pump",
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def stop(self) -> None:
        """Close the listener and every relayed connection; never raises."""
        self._stopping.set()
        try:
            self._server.close()
        except OSError:
            pass
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            self._close(s)
        self._thread.join(2.0)
