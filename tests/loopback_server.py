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


def read_head(conn: socket.socket) -> bytes | None:
    """Read one request's head (through the blank line) from ``conn``;
    None if the peer closed first. What follows the head in the last read
    (a small body) is read with it."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        head += chunk
    return head


def read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """The next HTTP/1.1 request on ``conn``: its head (without the blank
    line) and its body (``Content-Length`` bytes); None once the peer
    closed before a whole one came."""
    data = read_head(conn)
    if data is None:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head, body
