"""A slow link on loopback: a TCP relay that passes one direction of each
connection at a bounded rate (bytes a second) and the other at full speed.

It listens where the node advertises itself -- ``127.0.0.2`` on the node's
own port (the node binds ``127.0.0.1``) -- so a client or a worker that
learns the node's endpoint from the node goes through the relay too. A
slow direction sleeps between slices of 1 KiB: a message of N bytes takes
at least N / rate seconds to cross, never less (tests lean on that lower
bound only, never on an upper one). Every socket and thread is closed by
:meth:`SlowLink.close`."""
from __future__ import annotations

import socket
import threading
import time

SLICE = 1024
ADDRESS = "127.0.0.2"       # where the relay listens; nodes under test advertise it


class SlowLink:
    """Relay ``ADDRESS:port`` to ``127.0.0.1:port``: ``up`` bytes a second
    from the connecting side to the node, ``down`` from the node back (0:
    full speed)."""

    def __init__(self, port: int, *, up: int = 0, down: int = 0) -> None:
        self.port, self.up, self.down = port, up, down
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0          # accepted so far
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((ADDRESS, port))
        self.server.listen(16)
        self.server.settimeout(0.1)
        self._start(self._accept)

    @property
    def endpoint(self) -> str:
        return f"tcp://{ADDRESS}:{self.port}"

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                near, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                far = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                near.close()
                continue
            far.settimeout(None)
            for sock in (near, far):      # small buffers: the rate is the link's, not the kernel's
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            with self.lock:
                self.connections += 1
                self.sockets += [near, far]
            self._start(self._pump, near, far, self.up)
            self._start(self._pump, far, near, self.down)
        self.server.close()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: int) -> None:
        try:
            while not self.stopped.is_set():
                data = src.recv(4 * SLICE)
                if not data:
                    break
                if not rate:
                    dst.sendall(data)
                    continue
                for i in range(0, len(data), SLICE):
                    if self.stopped.is_set():
                        return
                    dst.sendall(data[i:i + SLICE])
                    time.sleep(SLICE / rate)
        except OSError:
            pass
        finally:
            for sock in (src, dst):       # one side gone: the connection is gone
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopped.set()
        with self.lock:
            sockets, threads = list(self.sockets), list(self.threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in threads:
            thread.join(timeout=5)
