"""Helpers for the security tests: a key directory with one key per role, and
:class:`Speaker`, a raw DEALER that speaks the wire protocol by hand (with a
key, a stranger's key, or none) -- the way an attacker on the network would.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from miyaq.protocol import commands as c
from miyaq.security import certs
from miyaq.security.keystore import KeyStore

REPLY_WAIT = 10.0   # seconds; a guard against a hang, not a timing assertion
ROLES = ("producer", "worker", "admin")


@dataclass
class Keys:
    """A key directory made by ``miyaq keys``: the cluster key and one key per role."""

    dir: str
    store: KeyStore

    @property
    def server_key(self) -> str:
        return os.path.join(self.dir, "node.key")

    def secret(self, name: str) -> str:
        return os.path.join(self.dir, name + ".key_secret")

    def pair(self, name: str) -> tuple[bytes, bytes]:
        cert = certs.read(self.secret(name))
        assert cert.secret is not None
        return cert.public, cert.secret

    @property
    def server_public(self) -> bytes:
        return certs.read(self.server_key).public


def make_keys(directory: str, *names_and_roles: tuple[str, str]) -> Keys:
    """``miyaq keys init`` then ``add`` for each (name, role); default: one
    key per role, named after it."""
    store = KeyStore(directory)
    store.init()
    for name, role in names_and_roles or tuple((r, r) for r in ROLES):
        store.add(name, role)
    return Keys(directory, store)


class Speaker:
    """One DEALER connection to a node. ``curve`` is (public, secret,
    server_public) or None (plain). Close with :meth:`close`."""

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            public, secret, server = curve
            self.sock.setsockopt(zmq.CURVE_SERVERKEY, server)
            self.sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            self.sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.sock.connect(endpoint)
        self._req = 0
        self.undelivered = 0

    def send(self, command: bytes, body: dict[str, Any]) -> None:
        """Send without blocking. A DEALER whose handshake was refused has no
        connection left to queue on (a blocking send would wait forever, which
        the suite saw under load): that message is dropped, as the network
        would drop it, and counted in ``undelivered``; the sender then gets no
        answer."""
        try:
            self.sock.send_multipart([c.TAG, command, msgpack.packb(body, use_bin_type=True)], zmq.NOBLOCK)
        except zmq.Again:
            self.undelivered += 1

    def try_send(self, command: bytes, body: dict[str, Any]) -> bool:
        """Send without waiting; False when the socket has no connection to
        queue it on (a refused handshake may leave none)."""
        try:
            self.sock.send_multipart([c.TAG, command, msgpack.packb(body, use_bin_type=True)], zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def recv(self, wait: float = REPLY_WAIT,
             skip: tuple[bytes, ...] = (c.HEARTBEAT,)) -> tuple[bytes, dict[str, Any]] | None:
        """The next message (heartbeats skipped), or None if nothing came within ``wait``."""
        deadline = time.monotonic() + wait
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sock.poll(left_ms):
                return None
            frames = self.sock.recv_multipart()
            assert len(frames) == 3 and frames[0] == c.TAG, frames
            if frames[1] in skip:
                continue
            return frames[1], msgpack.unpackb(frames[2], raw=False)

    def request(self, command: bytes, body: dict[str, Any] | None = None, wait: float = REPLY_WAIT
                ) -> tuple[bytes, dict[str, Any]] | None:
        """Send a request (a fresh ``req``) and wait for its REPLY or ERROR (None: no answer)."""
        self._req += 1
        req = self._req
        self.send(command, {**(body or {}), "req": req})
        deadline = time.monotonic() + wait
        while True:
            got = self.recv(max(0.0, deadline - time.monotonic()))
            if got is None or got[1].get("req") == req:
                return got

    def ok(self, command: bytes, body: dict[str, Any] | None = None) -> dict[str, Any]:
        got = self.request(command, body)
        assert got is not None, f"no answer to {command!r}"
        assert got[0] == c.REPLY, got
        return got[1]

    def refused(self, command: bytes, body: dict[str, Any] | None = None, code: str = "forbidden") -> dict[str, Any]:
        got = self.request(command, body)
        assert got is not None, f"no answer to {command!r}"
        assert got[0] == c.ERROR and got[1]["code"] == code, got
        return got[1]

    def close(self) -> None:
        self.sock.close(linger=0)


def task(task_id: str, queue: str = "default", **extra: Any) -> dict[str, Any]:
    """A SUBMIT task map."""
    return {"id": task_id, "queue": queue, "name": "echo", "body": msgpack.packb([[1], {}]), **extra}


def submit(speaker: Speaker, *tasks: dict[str, Any]) -> list[list[Any]]:
    """SUBMIT and wait for SUBMITTED; the results."""
    speaker.send(c.SUBMIT, {"tasks": list(tasks)})
    got = speaker.recv(skip=(c.HEARTBEAT, c.REPLY))
    assert got is not None and got[0] == c.SUBMITTED, got
    return got[1]["results"]
