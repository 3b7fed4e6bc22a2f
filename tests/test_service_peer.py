"""The node's lines about a refused message on its service port name the
connection's IP address, so an operator can tell which machine sent it."""
from __future__ import annotations

import logging

import pytest
import zmq

from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

from secure_harness import make_keys
from test_operator_signs import RawDealer

pytestmark = pytest.mark.timeout(60)


def _lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("frames, code", [
    ([c.TAG, c.STATUS, b"\x80", b"", b"extra"], "bad_frame"),      # a REQ socket's extra frame, and more
    ([c.TAG, c.STATUS, b"\xc1"], "bad_encoding"),                  # not msgpack
    ([b"MQ2", c.STATUS, b"\x80"], "bad_version"),
])
def test_a_refused_message_is_logged_with_its_address(make_node, caplog, frames, code):
    """Fault: a raw TCP connection speaking ZMTP sends the service port a
    message no miyaq client sends. The node's WARNING said what was wrong
    but not who sent it; it names 127.0.0.1:<the connection's port>."""
    node = make_node()
    peer = RawDealer(node.config.port)
    try:
        with caplog.at_level(logging.WARNING, logger="miyaq.core.service"):
            peer.send(frames)
            wait_for(lambda: _lines(caplog, f"code {code}"), what="the refusal's warning")
    finally:
        peer.close()
    line = _lines(caplog, f"code {code}")[0]
    assert f"refused a client's message from 127.0.0.1 (1 so far, code {code})" in line, line


def test_a_key_refused_for_its_role_is_logged_with_its_address(make_node, tmp_path, caplog):
    """Fault: a worker given a producer's key sends READY: the node's line
    named the key and role, not the machine."""
    keys = make_keys(str(tmp_path / "keys"))
    node = make_node(keys=keys.dir)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    public, secret = keys.pair("producer")
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, keys.server_public
    try:
        with caplog.at_level(logging.WARNING, logger="miyaq.core.service"):
            sock.connect(node.endpoint)
            sock.send_multipart([c.TAG, c.READY, b"\x82\xa6worker\xa1w\xa6queues\x91\xa7default"])
            wait_for(lambda: _lines(caplog, "refused a request"), what="the forbidden line")
    finally:
        sock.close()
        ctx.term()
    line = _lines(caplog, "refused a request")[0]
    assert line.startswith("refused a request from 127.0.0.1: key"), line
    assert "role producer" in line, line
