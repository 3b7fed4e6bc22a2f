"""Raw ZeroMQ stand-ins for a node, for client tests that play the node's side
message by message (what a real node would never do: hold acknowledgements,
exit right after reading)."""
from __future__ import annotations

import errno
import threading
from typing import Any

import msgpack
import zmq

from miyaq.protocol import codec
from miyaq.protocol import commands as c


class CountingNode:
    """A raw ROUTER that counts the tasks of each SUBMIT and acknowledges them
    only when told; it answers other requests with a REPLY (``replies``:
    what it says per command) unless :attr:`silent`."""

    silent = False
    echo = False          # send every message back to its sender, as a connection looped to itself would

    def __init__(self, replies: dict[bytes, dict[str, Any]] | None = None, bind: str | None = None) -> None:
        self.replies = replies or {}        # command -> what its REPLY says besides req
        self.asked: list[bytes] = []        # the commands of the requests read, in order
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if bind is None:
            port = self.sock.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{port}"
        else:                               # a node restarted on its endpoint
            self.sock.bind(bind)
            self.endpoint = bind
        self.batches: list[tuple[bytes, list[str]]] = []
        self.echoed: list[tuple[bytes, bytes]] = []     # (connection, command) of each message echoed

    def pump(self, timeout_ms: int = 100) -> None:
        while self.sock.poll(timeout_ms):
            peer, tag, command, body = self.sock.recv_multipart()
            data: dict[str, Any] = msgpack.unpackb(body, raw=False)
            if self.echo:
                self.echoed.append((peer, command))
                self.sock.send_multipart([peer, tag, command, body])
                timeout_ms = 50
                continue
            if command == c.SUBMIT:
                self.batches.append((peer, [t["id"] for t in data["tasks"]]))
            else:
                self.asked.append(command)
                if not self.silent:
                    reply = {**self.replies.get(command, {}), "req": data["req"]}
                    self.sock.send_multipart([peer, *codec.encode(c.REPLY, reply)])
            timeout_ms = 50

    def ack_all(self) -> None:
        for peer, ids in self.batches:
            self.sock.send_multipart([peer, *codec.encode(c.SUBMITTED, {"results": [[i, "accepted", None]
                                                                                     for i in ids]})])

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket (``linger_ms``: how long what it still has to send may take to leave)."""
        self.sock.close(linger=linger_ms)
        self.ctx.term()


class NodesPlayer(threading.Thread):
    """Plays :class:`CountingNode` s in a thread of their own until stopped
    (the gevent and asyncio clients run only while the test's thread
    waits): answers every request, and acknowledges every submit once
    ``tasks`` tasks were read and each command in ``asked`` was asked of
    some node. What goes wrong is kept in :attr:`problems`."""

    def __init__(self, nodes: list[CountingNode], tasks: int, asked: tuple[bytes, ...] = ()) -> None:
        super().__init__(name="nodes-player", daemon=True)
        self.nodes, self.tasks, self.wanted = nodes, tasks, asked
        self.acked = False
        self.problems: list[BaseException] = []
        self._stop_playing = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_playing.is_set():
                for node in self.nodes:
                    node.pump(10)
                read = sum(len(ids) for node in self.nodes for _, ids in node.batches)
                asked = {command for node in self.nodes for command in node.asked}
                if not self.acked and read >= self.tasks and set(self.wanted) <= asked:
                    for node in self.nodes:
                        node.ack_all()
                    self.acked = True
        except BaseException as exc:   # reported by the test
            self.problems.append(exc)

    def __enter__(self) -> "NodesPlayer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop_playing.set()
        self.join(10)
        for node in self.nodes:
            node.close()


def no_descriptor_once_for(monkeypatch: Any, endpoint: str) -> list[str]:
    """Simulate a process out of file descriptors for one socket: the first
    socket the clients' factory makes for ``endpoint`` fails with libzmq's
    EMFILE. Returns the list the failed endpoint is put in."""
    from miyaq.runtime.sockets import SocketFactory
    real = SocketFactory.watched_dealer
    failures: list[str] = []

    def out_of_files_once(self: Any, connect: str, **options: Any) -> Any:
        if connect == endpoint and not failures:
            failures.append(connect)
            raise zmq.ZMQError(errno.EMFILE)
        return real(self, connect, **options)

    monkeypatch.setattr(SocketFactory, "watched_dealer", out_of_files_once)
    return failures
