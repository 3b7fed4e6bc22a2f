"""The same operation through miyaq's two front doors -- ZeroMQ
(docs/protocol.md) and the HTTP gateway (docs/http.md) -- gets the same
verdict: mismatches a parity audit found (2026-12-05), one test or more
each, every docstring naming the fault it simulates.

Nodes run in threads of the test process (:mod:`gateway_harness`) on
loopback ports the system picks; each is stopped by its fixture.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from gateway_harness import FIXTURES, Http, NodeThread
from test_log_replayed_state import T0, durable_engine, written

import miyaq
from miyaq.config import NodeConfig
from miyaq.errors import InvalidField
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.outbound import Outbound, Outcome, request_target
from miyaq.protocol.commands import ACCEPTED
from miyaq.protocol.recordspec import task_from_record
from miyaq.store.records import task_record, transfer_record
from miyaq.store.task import Task
from miyaq.testing.harness import in_own_hub

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(90)


def zmq_client(node: NodeThread) -> miyaq.Client:
    return miyaq.Client(f"tcp://127.0.0.1:{node.config.port}", request_timeout=5.0)


# -- 1. webhook URLs: one check at every submit ------------------------------------------------

#: URLs no request can be sent to; before the fix a ZeroMQ SUBMIT stored each.
UNSENDABLE_URLS = [
    "http://", "https://", "http://:80/x", "http://127.0.0.1:0/x", "http://127.0.0.1:99999/x",
    "http://127.0.0.1:abc/", "http://[::1/x", "http://" + "a" * 2040, "http://a..b/x",
]


def test_a_webhook_url_no_request_can_go_to_is_refused_through_both_doors(make_http_node):
    """Fault: ``POST /queue`` refused these URLs (no host, port 0 or out of
    range, a broken IPv6 literal, a host name no DNS can hold) while a
    ZeroMQ SUBMIT (the Python client's ``submit_url``) stored them: each
    was dead-lettered at its first attempt (InvalidURL, InvalidRequest),
    and ``http://127.0.0.1:0/x`` was sent to port 80 and retried until
    dead. Both doors refuse them now, naming ``url``; nothing is stored."""
    node = make_http_node(webhook_allow_private=True)
    http = Http(node.url)
    client = zmq_client(node)
    try:
        stored = []
        for url in UNSENDABLE_URLS:
            status, answer, _ = http.post("/queue", {"url": url})
            assert (status, answer["error"]["field"]) == (400, "url"), (url, answer)
            with pytest.raises(InvalidField) as info:
                client.submit_url(url, b"{}", wait=True)
            assert info.value.details.get("field") == "url", (url, info.value)
            if client.status()["totals"]["live"]:
                stored.append(url)
        assert stored == []
        status, answer, _ = http.post("/queue", raw=b"task.url=http://127.0.0.1:0/x",
                                      content_type="application/x-www-form-urlencoded")
        assert (status, answer["error"]["field"]) == (400, "task.url"), answer
    finally:
        client.close(flush=False)
        http.close()


def test_a_webhook_url_with_a_port_and_a_host_is_still_taken_through_both_doors(make_http_node):
    """The check refuses no URL a request can go to: a port from 1 to
    65535, an IPv6 literal, a host in another script, credentials."""
    node = make_http_node(webhook_allow_private=True)
    http = Http(node.url)
    client = zmq_client(node)
    urls = ["http://127.0.0.1:1/x", "https://127.0.0.1:65535/x", "http://[::1]:9/x", "http://bücher.example/x",
            "http://user:pw@127.0.0.1:9/x", "http://127.0.0.1:9"]
    try:
        for url in urls:
            status, answer, _ = http.post("/queue", {"url": url, "countdown": 1000})
            assert status == 200, (url, answer)
            client.submit_url(url, b"{}", countdown=1000, wait=True).wait_accepted()
    finally:
        client.close(flush=False)
        http.close()


def deliver_one(task: Task) -> Outcome:
    """One attempt at ``task`` through an Outbound, in a hub of its own."""
    def run() -> Outcome:
        outbound = Outbound(1, 5.0, Destinations("", True))
        try:
            return outbound.send(task, 5.0)
        finally:
            outbound.close()

    return in_own_hub(run)


def test_a_stored_webhook_to_port_0_is_an_invalid_url_at_delivery_not_a_request_to_port_80():
    """Fault: a task stored with ``http://127.0.0.1:0/x`` (over ZeroMQ
    before the fix, or by an older node) was sent to port 80 -- ``port or
    80`` -- and retried as a ConnectionError until dead. Port 0 is no
    destination: InvalidURL, not retried, nothing sent."""
    with pytest.raises(ValueError):
        request_target("http://127.0.0.1:0/x")
    outcome = deliver_one(Task("port0", "hooks", None, b"", url="http://127.0.0.1:0/x"))
    assert (outcome.kind, outcome.retryable, outcome.error["type"]) == ("invalid", False, "InvalidURL"), outcome


@pytest.mark.parametrize("url", ["http://127.0.0.1:0/x", "http://", "http://127.0.0.1:99999/x", "http://[::1/x"])
def test_a_stored_record_with_a_url_a_new_submit_may_not_have_is_still_taken(url):
    """Fault simulated: an older node stored (and replicates, or replays
    from its log) a webhook task whose URL the submit check now refuses.
    Its record is still taken -- from the log and from a peer
    (``task_from_record`` reads both) -- so the check never drops a stored
    task or fails a peer's request; its delivery dead-letters it."""
    task = Task("old-hook", "hooks", None, b"", url=url)
    assert task_from_record(task_record(task), NodeConfig()).url == url
    assert task_from_record(transfer_record(task), NodeConfig()).url == url


def test_a_logged_webhook_with_a_url_a_new_submit_may_not_have_comes_back_after_a_restart(tmp_path: Path):
    """Fault simulated: the log of a node holds a webhook task to port 0
    (stored before the check); the node restarts. The task is replayed as
    it was, not refused (a refused record is a lost task)."""
    config = NodeConfig(node_id="n")
    engine, part = durable_engine(tmp_path, config, T0)
    task = Task("logged-hook", "hooks", None, b"", url="http://127.0.0.1:0/x", created=T0, eta=T0 + 1000)
    assert engine.submit(task, T0)[0] == ACCEPTED
    written(part)
    part.stop()
    again, part2 = durable_engine(tmp_path, config, T0 + 1)
    try:
        info = again.info("logged-hook")
        assert info is not None and info["url"] == "http://127.0.0.1:0/x", info
    finally:
        part2.stop()
