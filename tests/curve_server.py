"""A bare CURVE service port for client-side key tests: a ROUTER with the
node's cluster key behind the node's own ZapHandler (miyaq.security.zap), in
a thread with its own gevent hub. It answers what a client needs to show
that its keys work: STATUS and RING (REPLY), SUBMIT (SUBMITTED, accepted),
and records the User-Id (the authenticated key) of every message."""
from __future__ import annotations

from typing import Any

from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.runtime import Supervisor, green
from miyaq.runtime.messages import recv_with_user
from miyaq.runtime.sockets import SocketFactory, zmq
from miyaq.security.curve import NodeCurve
from miyaq.security.keystore import KeyStore
from miyaq.security.zap import ZapHandler
from miyaq.testing.harness import _HubThread


class CurveServer:
    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.users: list[str | None] = []
        self.endpoint = ""
        self.zap: ZapHandler | None = None
        self._hub = _HubThread("curve-server")

    def start(self) -> "CurveServer":
        self._hub.run(self._build, self._serve, self._stop)
        return self

    def _build(self) -> dict[str, Any]:
        node = self.store.node_secret()
        sup = Supervisor("curve-server")
        factory = SocketFactory(security=NodeCurve(node.public, node.secret or b""))
        self.zap = ZapHandler(self.store, sup, factory)
        self.zap.start()
        router = factory.router("tcp://127.0.0.1:*")
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        done = green.Event()
        sup.spawn("answer", self._answer, router)
        return {"sup": sup, "factory": factory, "done": done}

    def _answer(self, router: Any) -> None:
        while True:
            frames, user = recv_with_user(router)
            self.users.append(user)
            peer, message = frames[0], frames[1:]
            command, body = codec.decode(message, c.NODE_COMMANDS, c.DEFAULT_MAX_MESSAGE)
            if command == c.SUBMIT:
                reply = codec.encode(c.SUBMITTED, {"results": [[t["id"], c.ACCEPTED, None] for t in body["tasks"]]})
            elif command == c.RING:
                reply = codec.encode(c.REPLY, {"req": body["req"], "epoch": 1, "leader": "curve", "members": {}})
            else:
                reply = codec.encode(c.REPLY, {"req": body.get("req"), "node": "curve", "user": user,
                                               "totals": {"live": 0}})
            router.send_multipart([peer, *reply])

    def _serve(self, parts: dict[str, Any]) -> None:
        parts["done"].wait()

    def _stop(self, parts: dict[str, Any]) -> None:
        parts["sup"].kill()
        parts["factory"].close()
        parts["done"].set()

    def reload(self) -> None:
        """Re-read authorized/ (what SIGHUP does in a node)."""
        assert self.zap is not None
        self.zap.reload("test")

    def stop(self) -> None:
        self._hub.stop()
