"""A webhook URL with credentials (``http://user:password@host/...``).

The node never sent them -- no ``Authorization`` header reached the
destination -- yet stored the URL with its password and showed it
(``GET /tasks/{id}``, ``/tasks``, ``/dead``, the console, ``miyaq status``)
and logged it. A new one is refused at both doors, naming the field and
pointing at ``headers``; a task an older node stored with one is still
taken and delivered as before; log lines name a URL without its
credentials or query.
"""
from __future__ import annotations

import logging
import time

import pytest

from gateway_harness import FIXTURES, Http, wait_for

import miyaq
from miyaq.protocol.recordspec import task_from_record
from miyaq.protocol.urls import check_new_url

http_node, api, make_http_node, make_web_worker = FIXTURES

SECRET = "URLPASS-SECRET"
WITH_CREDENTIALS = [f"http://hookuser:{SECRET}@hooks.example.test/hook?api_key=QUERY-SECRET",
                    "http://hookuser@hooks.example.test/hook", f"https://:{SECRET}@hooks.example.test/",
                    "http://@hooks.example.test/", f"http://a:{SECRET}@b@hooks.example.test:8443/x"]


def refused_for_credentials(error: dict) -> bool:
    message = error["message"]
    return (error["code"] == "invalid_field" and "credentials" in message and "headers" in message
            and "Authorization" in message and SECRET not in message)


@pytest.mark.parametrize("url", WITH_CREDENTIALS)
def test_a_url_with_credentials_is_refused_at_an_http_enqueue(api, url):
    """Fault: ``POST /queue`` took a URL with ``user:password@``: the
    password was stored and shown with the task and logged, and the request
    went out without it. Now it is a 400 ``invalid_field`` naming the field,
    saying to put the credentials in ``headers``, never repeating them, and
    nothing is stored (a JSON body and a form alike)."""
    status, answer, _ = api.post("/queue", {"url": url, "headers": {"X-Ok": "1"}})
    assert status == 400 and answer["error"]["field"] == "url", answer
    assert refused_for_credentials(answer["error"]), answer
    status, answer, _ = api.request("POST", "/queue", raw=f"task.url={url}".encode(),
                                    content_type="application/x-www-form-urlencoded")
    assert status == 400 and answer["error"]["field"] == "task.url", answer
    assert refused_for_credentials(answer["error"]), answer
    assert api.get("/status")[1]["totals"]["live"] == 0


def test_a_url_with_credentials_is_refused_at_a_zeromq_submit(http_node):
    """Fault: ``submit_url`` took such a URL over ZeroMQ too. Now it is
    refused ``invalid_field`` (field ``url``) and nothing is stored."""
    client = miyaq.Client(f"tcp://127.0.0.1:{http_node.config.port}")
    try:
        with pytest.raises(miyaq.ProtocolError) as info:
            client.submit_url(WITH_CREDENTIALS[0], b"{}", headers={"Authorization": "Bearer x"}, wait=True)
        assert info.value.code == "invalid_field" and info.value.details.get("field") == "url"
        assert "headers" in str(info.value) and SECRET not in str(info.value)
        assert client.status()["totals"]["live"] == 0
    finally:
        client.close()


def test_urls_without_credentials_still_pass():
    """An ``@`` in the path or query is no credential: such URLs still pass."""
    for url in ("http://hooks.example.test/users/@me", "http://hooks.example.test/x?mail=a@b.test",
                "http://hooks.example.test:8080/x#frag@ment"):
        assert check_new_url(url) == url


def test_a_stored_task_whose_url_has_credentials_is_delivered_and_logged_without_them(
        make_http_node, make_web_worker, caplog):
    """Fault: a webhook attempt was logged (DEBUG) with its whole URL --
    ``user:password@`` and the query's ``api_key`` too. A task an older node
    stored with such a URL must not make anything fail: it is taken from its
    record and delivered as before (the credentials not sent); the log line
    of its failed attempt names ``scheme://host:port/path`` only."""
    caplog.set_level(logging.DEBUG, logger="miyaq.gateway.webhooks")
    worker = make_web_worker(script={1: (500, {}, 0.0)})
    node = make_http_node(webhook_allow_private=True, default_backoff=0.0)
    api = Http(node.url)
    url = f"http://hookuser:{SECRET}@127.0.0.1:{worker.port}/hook?api_key=QUERY-SECRET"

    def store() -> str:
        now = time.time()
        task = task_from_record({"id": "stored-credentials", "queue": "default", "url": url, "created": now,
                                 "eta": now, "backoff": 0.0}, node.config)
        node.node.core.engine.submit(task, now)
        node.node.part("gateway").redispatch()
        return task.id

    try:
        task_id = node.call(store)
        wait_for(lambda: api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "done", "the task to be delivered")
        assert [request.path for request in worker.requests] == ["/hook?api_key=QUERY-SECRET"] * 2
        assert all("Authorization" not in request.headers for request in worker.requests)
    finally:
        api.close()
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name == "miyaq.gateway.webhooks")
    assert f"to http://127.0.0.1:{worker.port}/hook: " in logged, logged
    assert SECRET not in logged and "QUERY-SECRET" not in logged and "hookuser" not in logged


def test_url_for_logs_keeps_scheme_host_port_and_path_only():
    """A log line names a URL by scheme, host, port and path: never its
    credentials, query or fragment, nor a control character a URL stored
    before the checks may hold."""
    from miyaq.protocol.urls import url_for_logs    # (here: the module's other tests run on older code)

    assert url_for_logs("https://u:p@Hooks.Example.test:8443/a/b?api_key=k#f") == "https://hooks.example.test:8443/a/b"
    assert url_for_logs("http://[::1]:80/x?q=1") == "http://[::1]:80/x"
    assert url_for_logs("http://h/a b\x01c") == "http://h/a%20b%01c"      # stored before the checks
    assert url_for_logs("http://h:99999/x") == "(a URL that does not parse)"
