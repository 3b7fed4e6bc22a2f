"""A client whose key a node refuses while it is connected (revoked, then
reloaded): the node answers its SUBMIT with ERROR ``forbidden`` without a
``req`` (a SUBMIT has none), and the client's submits and requests waiting
for that node fail with ``Forbidden`` at once -- not ``Timeout`` at their
deadline. The threaded and the asyncio clients share the core that does it
(miyaq.client.core): played by hand once, then against a real node with
keys for both clients."""
from __future__ import annotations

import asyncio
import os

import pytest

import miyaq
import miyaq.aio
from miyaq.errors import Forbidden, Unavailable
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

from secure_harness import Keys, make_keys
from test_client_core import make, pending

REVOKED = "this connection's key is no longer authorized (revoked); ask the operator for a new key"
LONG = 30.0      # submit_timeout: a client still waiting for its acknowledgement fails with Timeout


def error(code: str, message: str, req: int | None = None) -> list[bytes]:
    body: dict[str, object] = {"code": code, "message": message}
    if req is not None:
        body["req"] = req
    return codec.encode(c.ERROR, body)


class Waiter:
    def __init__(self) -> None:
        self.value: object = None
        self.error: miyaq.MiyaqError | None = None
        self.done = False

    def set(self, value: object) -> None:
        assert not self.done, "resolved twice"
        self.value, self.done = value, True

    def fail(self, error: miyaq.MiyaqError) -> None:
        assert not self.done, "resolved twice"
        self.error, self.done = error, True


def test_a_forbidden_error_without_req_fails_that_nodes_submits_and_requests_at_once() -> None:
    """Fault: the node refuses the client's key (revoked) and answers its
    SUBMIT ``forbidden`` without ``req``. Before 2026-12-05 the client only
    logged it: the submit waited for an acknowledgement until its deadline
    (``Timeout``), and a long-poll on that node until its own. Now the
    unacknowledged submits and open requests to that node fail with
    ``Forbidden``; those to another node, and anything after another ERROR
    without ``req``, are untouched."""
    core, transport = make(2)
    first, first_waiter = pending("a", timeout=LONG)
    other, other_waiter = pending("b", timeout=LONG)
    first.node, other.node = 0, 1                     # one submit to each node
    core.submit(first, now=0.0)
    core.submit(other, now=0.0)
    core.on_timer(0.0)
    assert {(node, command) for node, command, _ in transport.take()} == {(0, c.SUBMIT), (1, c.SUBMIT)}
    long_poll = Waiter()
    req = core.next_req()
    core.request(0, c.RESULT, {"req": req, "id": "x", "timeout": LONG}, long_poll, deadline=LONG, now=0.0)
    core.on_frames(0, error("busy", "something else"), 0.1)          # not a refusal of the key
    assert not first_waiter.done and not long_poll.done
    core.on_frames(0, error("forbidden", REVOKED), 0.2)
    assert isinstance(first_waiter.error, Forbidden) and first_waiter.error.message == REVOKED
    assert isinstance(long_poll.error, Forbidden)
    assert not other_waiter.done                      # node 1 did not refuse anything
    assert "a" not in core.submits.pending and not core.requests.open
    for now in (LONG / 2, LONG / 2 + 5):              # "a" is not resent; "b", unacknowledged, is
        core.on_timer(now)
    resent = [t["id"] for _, command, body in transport.take() if command == c.SUBMIT for t in body["tasks"]]
    assert resent == ["b"]


@pytest.fixture
def keys(tmp_path) -> Keys:
    return make_keys(os.path.join(str(tmp_path), "keys"))


def _revoke(node, keys: Keys, name: str) -> None:
    keys.store.revoke(name)      # the node sees authorized/ change and reloads (as after SIGHUP)
    wait_for(lambda: node.node.status(0.0)["security"]["authorized"] == 3, timeout=30)


def test_submit_wait_raises_forbidden_once_the_key_is_revoked(quick_key_watch, make_node, keys):
    """Fault: a producer's key is revoked while its client is connected.
    ``status()`` raised ``Forbidden`` at once, but ``submit(wait=True)``
    waited its whole ``submit_timeout`` and raised ``Timeout``; now it raises
    ``Forbidden`` with the node's message (docs/python-api.md)."""
    node = make_node(keys=keys.dir)
    client = miyaq.Client(node.endpoint, key=keys.secret("producer"), server_key=keys.server_key,
                          submit_timeout=LONG)
    try:
        assert client.submit("echo", [1], wait=True).accepted
        _revoke(node, keys, "producer")
        with pytest.raises(Forbidden, match="no longer authorized"):
            client.submit("echo", [2], wait=True)
        with pytest.raises(Forbidden):
            client.status()
    finally:
        client.close(flush=False)


def test_the_asyncio_client_raises_forbidden_too(quick_key_watch, make_node, keys):
    """Fault: as above, with ``miyaq.aio.Client``: its ``await submit(wait=True)``
    waited ``submit_timeout`` and raised ``Timeout``."""
    node = make_node(keys=keys.dir)

    async def scenario() -> None:
        client = miyaq.aio.Client(node.endpoint, key=keys.secret("producer"), server_key=keys.server_key,
                                  submit_timeout=LONG)
        try:
            assert (await client.submit("echo", [1], wait=True)).accepted
            await asyncio.get_running_loop().run_in_executor(None, _revoke, node, keys, "producer")
            with pytest.raises(Forbidden, match="no longer authorized"):
                await client.submit("echo", [2], wait=True)
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 50))


def test_a_forbidden_submit_is_not_taken_for_a_lost_connection() -> None:
    """The refusal is the node's answer, not a dropped connection: the
    submit fails with ``Forbidden`` (not ``Unavailable``) and is not resent
    elsewhere."""
    core, transport = make(2)
    p, waiter = pending("a", timeout=LONG)
    core.submit(p, now=0.0)
    node = transport.take()[0][0]
    core.on_frames(node, error("forbidden", REVOKED), 0.1)
    assert isinstance(waiter.error, Forbidden) and not isinstance(waiter.error, Unavailable)
    core.on_timer(1.0)
    assert transport.take() == []
