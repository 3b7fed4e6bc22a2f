"""A TCP server on 127.0.0.1 for tests that play a peer over a raw socket
(a webhook's destination, mostly): a random free port, a thread per
connection, everything closed by :meth:`LoopbackServer.close`."""
from __future__ import annotations

import socket
import threading


class LoopbackServer:
    """Accepts connections in a thread and serves each in a thread of its
    own (:meth:`_serve`, which subclasses write). :meth:`_accepted` runs for
    each new connection under :attr:`lock` (for counting). A subclass sets
    what its threads use *before* calling ``super().__init__()``: the first
    connection may be served at once."""

    backlog = 64

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(self.backlog)
        self.port: int = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
                self._accepted(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _accepted(self, conn: socket.socket) -> None:
        """A connection came (under :attr:`lock`)."""

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting and close every connection accepted."""
        self.server.close()
        with self.lock:
            for conn in self.conns:
                try:
                    conn.close()
                except OSError:
                    pass
