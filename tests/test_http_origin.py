"""Other web sites and the gateway (docs/http.md, "Browsers and other web
sites"): a page on another site may make a browser send requests to the
gateway -- plain ``<form method=post>`` submits, no-cors fetches -- from
this machine, where an open gateway (no tokens, the loopback default)
takes every caller for admin; and a page whose name the attacker's DNS
later points at 127.0.0.1 (DNS rebinding) is the gateway's own origin for
the browser. Each test simulates the exact headers a browser sends.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from gateway_harness import FIXTURES, Http, NodeThread
from test_console import cookie_of, csrf_of, page, post_form
from test_gateway_admin import make_dead

from miyaq.gateway.console.render import CSP

pytestmark = pytest.mark.timeout(60)

http_node, api, make_http_node, make_web_worker = FIXTURES

FORM = "application/x-www-form-urlencoded"
EVIL = "http://evil.example"
CROSS_SITE = {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
REBIND = "rebind.attacker.example"


def own_origin(node: NodeThread) -> str:
    return f"http://127.0.0.1:{node.config.http_port}"


def assert_cross_site_refused(status: int, answer: Any) -> None:
    assert status == 403, (status, answer)
    assert answer["error"]["code"] == "forbidden", answer
    assert "cross-site requests are refused" in answer["error"]["message"], answer


# -- cross-site requests (fault 1) -------------------------------------------------------------------
def test_a_cross_site_form_cannot_purge_dead_letters_nor_pause_a_queue(http_node, api):
    """Fault: on an open node, a page on another site purged the dead letters
    and paused a queue through the JSON API with plain auto-submitted
    ``<form method=post>``s (an empty URL-encoded body read as ``{}``: "all").
    Now every state-changing request a browser marks as another site's
    (``Sec-Fetch-Site: cross-site`` or ``same-site``), or whose ``Origin``
    is not the gateway's own, is a 403 ``forbidden``, and changes nothing."""
    make_dead(api, "victim", 2)
    attempts = [CROSS_SITE, {"Origin": EVIL},                     # a browser without Fetch Metadata
                {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},   # another port of this host
                {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{http_node.config.http_port + 1}"},
                {"Origin": f"https://127.0.0.1:{http_node.config.http_port}"}]
    for headers in attempts:
        for path in ("/dead/purge", "/dead/retry", "/queues/mail/pause"):
            status, answer, _ = api.post(path, raw=b"", content_type=FORM, headers=headers)
            assert_cross_site_refused(status, answer)
            status, answer, _ = api.post(path, {"queue": "victim"}, headers=headers)     # JSON alike
            assert_cross_site_refused(status, answer)
    status, answer, _ = api.request("DELETE", "/queues/mail/limits", headers=CROSS_SITE)
    assert_cross_site_refused(status, answer)
    assert len(api.get("/dead")[1]["tasks"]) == 2
    assert api.get("/queues/mail")[1]["paused"] is False


def test_same_origin_and_header_less_clients_still_act(http_node, api):
    """What the check lets through: clients that send neither header (curl,
    the SDKs, ``miyaq queue``), the gateway's own origin (a proxy that
    terminates TLS says ``X-Forwarded-Proto: https``), a typed address
    (``Sec-Fetch-Site: none``), and every GET, whatever site asked."""
    ours, port = own_origin(http_node), http_node.config.http_port
    for headers in ({}, {"Origin": ours, "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                    {"Origin": f"https://127.0.0.1:{port}", "X-Forwarded-Proto": "https"},
                    {"Origin": f"http://LOCALHOST:{port}", "Host": f"localhost:{port}"}):
        status, answer, _ = api.post("/queues/mail/pause", {}, headers=headers)
        assert (status, answer["paused"]) == (200, True), (headers, answer)
    assert api.get("/queues/mail", headers=CROSS_SITE)[0] == 200


def test_cross_site_requests_are_refused_with_a_token_too(make_http_node):
    """The check is not the open node's alone: a token node refuses a
    cross-site POST before it looks at the token (the browser would send
    no token cross-site anyway; nothing of the request is acted on)."""
    node = make_http_node(http_token="s3cret-token-0123456789")
    admin = Http(node.url, token="s3cret-token-0123456789")
    try:
        status, answer, _ = admin.post("/queues/mail/pause", {}, headers=CROSS_SITE)
        assert_cross_site_refused(status, answer)
        assert admin.get("/queues/mail")[1]["paused"] is False
        assert admin.post("/queues/mail/pause", {})[0] == 200
    finally:
        admin.close()


def test_json_endpoints_refuse_what_an_html_form_sends(http_node, api):
    """Fault: a JSON endpoint read an empty ``application/x-www-form-urlencoded``
    body -- what a form without fields sends -- as ``{}`` (for /dead/purge:
    every dead letter), and endpoints that read no body (pause) took any
    form. Now an endpoint that takes no forms answers 415 naming Content-Type
    to an empty or non-JSON URL-encoded body, ``multipart/form-data`` and
    ``text/plain``, even with no Origin at all; a URL-encoded-labelled JSON
    body (``curl -d '{...}'``) is still read, and ``POST /queue`` still takes forms."""
    make_dead(api, "victim", 1)
    bodies = [(FORM, b""), (FORM, b"all=1"), ("multipart/form-data; boundary=x", b"--x--\r\n"),
              ("text/plain", b'{"queue": "victim"}')]
    for path in ("/dead/purge", "/dead/retry", "/queues/mail/pause"):
        for content_type, raw in bodies:
            status, answer, _ = api.post(path, raw=raw, content_type=content_type)
            assert status == 415, (path, content_type, status, answer)
            assert answer["error"]["code"] == "unsupported_media_type"
            assert answer["error"].get("field") == "Content-Type" or "Content-Type" in answer["error"]["message"]
    assert len(api.get("/dead")[1]["tasks"]) == 1 and api.get("/queues/mail")[1]["paused"] is False
    status, answer, _ = api.post("/queues/mail/pause", raw=b"{}", content_type=FORM)       # curl -d '{}'
    assert (status, answer["paused"]) == (200, True)
    status, answer, _ = api.post("/queue", raw=b"task.countdown=5", content_type=FORM)      # a form, read
    assert (status, answer["error"]["field"]) == (400, "task.url"), answer


# -- DNS rebinding: the Host of an open gateway (fault 2) ---------------------------------------------
def rebound(node: NodeThread, name: str = REBIND) -> dict[str, str]:
    """The headers of a page on ``name`` after its DNS points at 127.0.0.1."""
    host = f"{name}:{node.config.http_port}"
    return {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}


def test_an_open_gateway_answers_no_rebound_host_name(http_node, api):
    """Fault: the Host header was never checked, and the console compared
    ``Origin`` with it: a page on the attacker's name, rebound to
    127.0.0.1, read the console's CSRF token and purged the dead letters
    (its Origin matched its own Host). Now an open gateway refuses (403,
    saying why) every request whose Host is not an IP address,
    ``localhost`` or a configured name -- JSON API and console alike,
    with the console's headers under /ui -- and nothing is purged."""
    make_dead(api, "victim", 2)
    headers = rebound(http_node)
    status, answer, _ = api.get("/status", headers=headers)
    assert status == 403 and answer["error"]["code"] == "forbidden", answer
    assert "DNS rebinding" in answer["error"]["message"]
    status, html, out = page(api, "/ui/dead", headers=headers)
    assert status == 403 and "DNS rebinding" in html and 'name="csrf-token"' not in html
    assert out["content-security-policy"] == CSP and out["x-frame-options"] == "DENY"
    assert "set-cookie" not in out
    # with a session and CSRF token from the real address, the rebound page still cannot post
    html, real = page(api, "/ui/dead")[1:]
    status, _, _ = post_form(api, "/ui/dead/purge", {"csrf": csrf_of(html), "all": "1"}, cookie_of(real), headers)
    assert status == 403
    status, answer, _ = api.post("/dead/purge", {}, headers=headers)
    assert status == 403
    assert len(api.get("/dead")[1]["tasks"]) == 2


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LocalHost.", "[::1]", "10.1.2.3", "queue.internal",
                                  "QUEUE.internal."])
def test_an_open_gateway_answers_its_addresses_and_names(make_http_node, host):
    """IP addresses (any: a browser's origin is then the address itself),
    ``localhost`` and the names the node is configured with (here
    ``advertise``), on any port, case and a trailing dot aside."""
    node = make_http_node(advertise="queue.internal")
    client = Http(node.url)
    try:
        for value in (host, f"{host}:{node.config.http_port}", f"{host}:80"):
            assert client.get("/status", headers={"Host": value})[0] == 200, value
    finally:
        client.close()


@pytest.mark.parametrize("host", [REBIND, "localhost.evil.example", "127.0.0.1.nip.io", "x", "evil:port",
                                  "[::1", "a b"])
def test_an_open_gateway_refuses_other_host_names(http_node, api, host):
    status, answer, _ = api.get("/queues", headers={"Host": host})
    assert (status, answer["error"]["code"]) == (403, "forbidden"), (host, answer)


def test_an_open_gateway_bound_beyond_loopback_answers_any_host(make_http_node):
    """An open gateway on all addresses (``--insecure``) answers the names it
    is reached by -- a Kubernetes service's, a scraper's -- which are not
    the node's to know: anyone reaching its port is admin already."""
    node = make_http_node(http_host="0.0.0.0", insecure=True)
    client = Http(f"http://127.0.0.1:{node.config.http_port}")
    try:
        assert client.get("/status", headers={"Host": "miyaq.default.svc.cluster.local:8088"})[0] == 200
    finally:
        client.close()


def test_a_gateway_with_tokens_answers_any_host(make_http_node, tmp_path: Path):
    """With tokens the Host is not restricted: the rebound page has no token
    (401), a client with one is answered whatever name it used."""
    node = make_http_node(http_token="s3cret-token-0123456789")
    anon, admin = Http(node.url), Http(node.url, token="s3cret-token-0123456789")
    try:
        assert anon.get("/status", headers=rebound(node))[0] == 401
        assert admin.get("/status", headers=rebound(node))[0] == 200
        assert admin.get("/ui/queues", headers=rebound(node, "queue.example.com"))[0] == 200
    finally:
        anon.close()
        admin.close()


def test_a_rebound_console_page_gets_no_session(http_node, api):
    """The console's sign-in and pages under a rebound name: refused before
    any cookie is set or any page is drawn."""
    for method, path in (("GET", "/ui"), ("GET", "/ui/login"), ("POST", "/ui/login")):
        raw = urlencode({"token": "x"}).encode() if method == "POST" else None
        status, body, out = api.request(method, path, raw=raw, content_type=FORM if raw else None,
                                        headers=rebound(http_node))
        assert status == 403 and "set-cookie" not in out, (method, path, status)
