"""Messages a newcomer meets in the first hour that said the cause but not
what to do (the newcomer audit of 2026-12-06): each test names the mistake."""
from __future__ import annotations

import datetime
import logging
import socket
import threading
import time

import pytest

from gateway_harness import FIXTURES, Http, wait_for

import miyaq
from miyaq.client.wire import pack_args
from miyaq.errors import Timeout
from miyaq.runtime.connections import CLOSED_IN_HANDSHAKE, explain_handshake
from miyaq.worker.execute import too_large

http_node, api, make_http_node, make_web_worker = FIXTURES


def test_a_webhook_to_this_machine_names_the_flag_that_allows_it(api):
    """Mistake: a webhook to a receiver on localhost, the node started as
    the quickstart starts it. Before: "... localhost is this machine
    (webhook_allow_private is off)", the setting's TOML name alone."""
    status, body, _ = api.post("/queue", {"url": "http://localhost:9099/hook"})
    assert (status, body["error"]["code"]) == (403, "forbidden_destination"), body
    assert "start the node with --webhook-allow-private, or name the host in --webhook-allow-hosts" \
        in body["error"]["message"], body


def test_the_gateway_s_root_points_to_the_console_and_the_endpoints(api):
    """Mistake: http://127.0.0.1:8088/ opened in a browser. Before: "no
    endpoint /; see GET /openapi.json", nothing about the console."""
    status, body, _ = api.get("/")
    assert status == 404, body
    assert body["error"]["message"] == ("no endpoint /; GET /openapi.json lists them (the web console is /ui, "
                                        "unless http_console is off)"), body


def test_a_handshake_closed_without_keys_names_a_port_that_is_not_a_node_s():
    """Mistake: ``miyaq worker --connect tcp://127.0.0.1:8088`` (the HTTP
    port). After its first-contact hint the worker's every later warning
    blamed keys alone ("as a node with --keys does ... pass --key and
    --server-key"), for a standalone node without keys."""
    text = explain_handshake(CLOSED_IN_HANDSHAKE, "tcp://127.0.0.1:8088", False)
    assert "not a miyaq node's service port does (its HTTP port?)" in text, text
    assert "--keys" in text and "stopped just then" in text, text


def test_a_result_wait_on_a_task_no_worker_takes_says_so(node, client):
    """Mistake: the worker not started, or started for other queues: a
    ``call()`` ran out with "task ... is still ready" and nothing more."""
    with pytest.raises(Timeout) as err:
        client.call("nobody.runs.this", [1], queue="no-worker-here", timeout=0.5)
    assert str(err.value).endswith(" is still ready: no worker of its queue took it in time (none running for "
                                   "that queue, or all busy: `miyaq status` lists each queue's workers and idle "
                                   "slots)"), err.value


def big_result_app():
    app = miyaq.App("tcp://127.0.0.1:1")

    @app.task(name="big")
    def big(n):
        return "x" * n

    return app


def test_a_result_over_max_payload_says_what_to_do(node, client, thread_worker):
    """Mistake: a handler returns 2 MB (a report, an image) to a node that
    takes 1 MiB. Before: "result of 2000005 bytes exceeds max_payload
    1048576", the limit's name alone."""
    thread_worker(big_result_app(), node.endpoint)
    with pytest.raises(miyaq.TaskFailed) as err:
        client.call("big", [2_000_000], timeout=20)
    assert err.value.remote_type == "ResultTooLarge"
    assert err.value.remote_message == ("result of 2000005 bytes exceeds max_payload 1048576 (the node's "
                                        "--max-payload; keep large data elsewhere and return where it is)")


def test_a_result_no_message_can_carry_says_what_to_do():
    """Mistake: a result past what one message carries, refused by the
    worker itself before it is sent: the same remedy."""
    assert too_large(20_000_005, 16_711_680, "one message to a node can carry")["message"].endswith(
        "exceeds the 16711680 bytes one message to a node can carry (keep large data elsewhere and return where "
        "it is)")


@pytest.mark.parametrize("value", [datetime.datetime(2026, 12, 6), {1, 2}, object()],
                         ids=["datetime", "set", "object"])
def test_arguments_msgpack_cannot_encode_say_what_to_pass(value):
    """Mistake: a datetime, a set or an object of the app's passed to a
    task. Before: "task arguments msgpack cannot encode: can not serialize
    'datetime.datetime' object", nothing about what to pass instead."""
    with pytest.raises(TypeError) as err:
        pack_args([value])
    text = str(err.value)
    assert text.startswith("task arguments msgpack cannot encode: can not serialize "), text
    assert text.endswith("; pass plain data -- None, bool, int (64 bits), float, str, bytes, lists and dicts of "
                         "them: a datetime as .isoformat() or .timestamp(), a set as a list, an object by its id"), text


def sleeping_app(started: threading.Event | None = None):
    app = miyaq.App("tcp://127.0.0.1:1")

    @app.task(name="nap")
    def nap(seconds):
        if started is not None:
            started.set()
        time.sleep(seconds)
        return seconds

    return app


def test_a_worker_stopping_with_running_tasks_says_how_to_stop_at_once(node, client, thread_worker, caplog):
    """Mistake: Ctrl-C on a worker whose handler runs for minutes; the
    worker waits up to its grace (30 s by default) and said only "stopping:
    1 running task(s) ... grace 30.0s", not that a second Ctrl-C ends the
    wait."""
    started = threading.Event()
    worker = thread_worker(sleeping_app(started), node.endpoint, pool="threads")
    client.submit("nap", [1.5], wait=True)      # still running when the stop comes, on a slow host too
    # the handler itself, not the node's "running" (leased: the worker may
    # not have started it yet, and a stop then gives it back unstarted)
    assert started.wait(20)
    with caplog.at_level(logging.INFO, logger="miyaq.worker.runner"):
        worker.stop()
    line = next(r.getMessage() for r in caplog.records if " stopping: " in r.getMessage())
    assert line.endswith(" stopping: 1 running task(s), 0 given back unstarted, grace 2.0s (a second Ctrl-C or "
                         "SIGTERM stops at once: the running tasks go back to the node, attempt spent)"), line


@pytest.mark.parametrize("path", ["/queues/mail/pause", "/dead/retry"])
def test_an_empty_curl_d_says_to_send_no_body_or_json(api, path):
    """Mistake: an operator's ``curl -d '' .../queues/mail/pause`` (or
    ``/dead/retry``): curl labels the empty body a form, which the gateway
    refuses as what an HTML form sends (415). Before: "... expected
    Content-Type application/json", and the same empty body sent so still
    reads as no JSON. Now the message says what works: no body at all
    (``curl -X POST``) or a JSON one (``-d '{}'``)."""
    status, body, _ = api.post(path, raw=b"", content_type="application/x-www-form-urlencoded")
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type"), body
    assert "curl -X POST" in body["error"]["message"] and "-d '{}'" in body["error"]["message"], body


@pytest.mark.parametrize("path", ["/healthz", "/health"])
def test_a_probe_at_the_usual_names_is_told_the_node_s_probes(make_http_node, path):
    """Mistake: a Kubernetes probe (or a load balancer's health check) at
    ``/healthz``, the name many services use, on a node with tokens.
    Before: 401 "a bearer token is required", so the operator gave the
    probe a token and then met a 404 that named no probe. Now, without a
    token, a 404 naming ``/livez`` and ``/readyz``, which need none."""
    node = make_http_node(http_token="admin-token-0123456789abcdef0123")
    client = Http(node.url)
    try:
        status, body, _ = client.get(path)
    finally:
        client.close()
    assert (status, body["error"]["code"]) == (404, "not_found"), body
    assert "/livez" in body["error"]["message"] and "/readyz" in body["error"]["message"], body


def test_one_connection_too_many_says_which_setting_and_when_to_raise_it(make_http_node):
    """Mistake: consumers behind one NAT or proxy address, each holding a
    long-poll, pass ``http_max_client_connections`` (128). Before: 503
    "too many connections from 10.0.0.5 (http_max_client_connections 128)",
    the setting's TOML name and nothing about the shared address. Now the
    message names the flag and says when to raise it."""
    node = make_http_node(http_max_client_connections=1)
    held = socket.create_connection(("127.0.0.1", node.config.http_port), timeout=15)
    try:
        held.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")       # never finished
        server = node.call(lambda: node.node.part("gateway").server)
        wait_for(lambda: node.call(lambda: server.clients.get("127.0.0.1")) == 1, "the held connection counted")
        client = Http(node.url)
        try:
            status, body, _ = client.get("/status")
        finally:
            client.close()
    finally:
        held.close()
    assert (status, body["error"]["code"]) == (503, "busy"), body
    assert "--http-max-client-connections" in body["error"]["message"], body
    assert "proxy" in body["error"]["message"], body
