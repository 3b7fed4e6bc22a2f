"""The console's sessions and answers against a hostile web (docs/console.md,
"Protection"): sign-in from another site, sign-out, cookies over HTTPS,
flash messages, and the headers of every answer under /ui. Each test names
the fault it simulates with the headers a browser would send."""
from __future__ import annotations

import http.client
import re
import ssl
from pathlib import Path
from urllib.parse import urlencode

import pytest
from gateway_harness import FIXTURES, Http, NodeThread
from test_console import cookie_of, csrf_of, page, post_form
from test_gateway_admin import make_dead
from test_http_tls import make_cert

from miyaq.gateway.console import access
from miyaq.gateway.console.render import CSP

pytestmark = pytest.mark.timeout(60)

http_node, api, make_http_node, make_web_worker = FIXTURES

ADMIN = "hardening-admin-0123456789abcdef"
PRODUCER = "hardening-producer-0123456789abcdef"
FLASH = re.compile(r'<p class="flash[^"]*" role="status">(.*?)</p>', re.S)


@pytest.fixture
def node(make_http_node, tmp_path: Path) -> NodeThread:
    path = tmp_path / "http-tokens"
    path.write_text(f"{ADMIN} admin\n{PRODUCER} producer\n")
    path.chmod(0o600)
    return make_http_node(http_tokens=str(path))


@pytest.fixture
def anon(node: NodeThread):
    client = Http(node.url)
    yield client
    client.close()


def sign_in(client: Http, token: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    status, _, out = post_form(client, "/ui/login", {"token": token, "next": "/ui"}, "", headers)
    return status, out


# -- fault 4: login CSRF -------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
                                     {"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "same-site"},
                                     {"Origin": "null"}])
def test_another_site_cannot_sign_the_browser_in(anon, headers):
    """Fault: POST /ui/login checked neither Origin nor Sec-Fetch-Site, so a
    page on another site signed the victim's browser in with the attacker's
    producer token, replacing the victim's admin session (login CSRF). Now
    it is refused with 403 like every other console POST, and no cookie is set."""
    status, out = sign_in(anon, PRODUCER, headers)
    assert status == 403 and "set-cookie" not in out, (status, out)
    status, out = sign_in(anon, PRODUCER, {"Origin": anon_origin(anon), "Sec-Fetch-Site": "same-origin"})
    assert status == 303 and "set-cookie" in out


def anon_origin(client: Http) -> str:
    return f"http://{client.conn.host}:{client.conn.port}"


# -- fault 5: sign-out ----------------------------------------------------------------------------------
def test_signing_out_ends_every_session_of_that_token_on_the_node(anon):
    """Fault: signing out only told the browser to forget its cookie; the
    cookie itself (copied, or in another browser) stayed valid for its 12
    hours, CSRF token and all. Now signing out ends every console session
    opened with that token on this node before it; another token's
    sessions go on, and signing in again works."""
    first = cookie_of(sign_in(anon, ADMIN)[1])
    second = cookie_of(sign_in(anon, ADMIN)[1])          # the same token in another browser
    other = cookie_of(sign_in(anon, PRODUCER)[1])
    status, html, _ = page(anon, "/ui/dead", headers={"Cookie": first})
    assert status == 200
    csrf = csrf_of(html)
    status, _, out = post_form(anon, "/ui/logout", {"csrf": csrf}, first)
    assert status == 303 and out["location"] == "/ui/login" and "Max-Age=0" in out["set-cookie"]
    for cookie in (first, second):
        status, _, out = page(anon, "/ui/dead", headers={"Cookie": cookie})
        assert status == 303 and out["location"].startswith("/ui/login"), status
        status, body, _ = post_form(anon, "/ui/dead/purge", {"csrf": csrf, "all": "1"}, cookie)
        assert status == 401, status
    assert page(anon, "/ui", headers={"Cookie": other})[0] == 200
    again = cookie_of(sign_in(anon, ADMIN)[1])
    assert page(anon, "/ui/dead", headers={"Cookie": again})[0] == 200


def test_signing_in_again_after_a_sign_out_works_when_the_clock_was_stepped_back(anon, monkeypatch):
    """Fault: the node's wall clock is stepped back an hour (NTP, an
    operator) after a token signed out. Sessions were stamped with the wall
    clock and refused if stamped at or before the sign-out, so signing in
    again answered with a cookie the next page refused -- for an hour, every
    browser of that token locked out; the step also ended every session
    open before it. Now a session is stamped after its token's last
    sign-out, and one stamped ahead of a stepped-back clock still counts;
    a second sign-out still ends it."""
    offset = [0.0]
    real = access.wall
    monkeypatch.setattr(access, "wall", lambda: real() + offset[0])
    before = cookie_of(sign_in(anon, PRODUCER)[1])     # another token's session, open across the step
    first = cookie_of(sign_in(anon, ADMIN)[1])
    status, html, _ = page(anon, "/ui/dead", headers={"Cookie": first})
    assert status == 200
    assert post_form(anon, "/ui/logout", {"csrf": csrf_of(html)}, first)[0] == 303
    offset[0] = -3600.0
    assert page(anon, "/ui", headers={"Cookie": before})[0] == 200
    again = cookie_of(sign_in(anon, ADMIN)[1])
    status, html, out = page(anon, "/ui/dead", headers={"Cookie": again})
    assert status == 200, (status, out.get("location"))
    assert post_form(anon, "/ui/logout", {"csrf": csrf_of(html)}, again)[0] == 303
    status, _, out = page(anon, "/ui/dead", headers={"Cookie": again})
    assert status == 303 and out["location"].startswith("/ui/login")
    assert page(anon, "/ui/dead", headers={"Cookie": cookie_of(sign_in(anon, ADMIN)[1])})[0] == 200


# -- fault 6: Secure cookies over HTTPS -----------------------------------------------------------------
def test_the_session_cookie_is_secure_over_https(make_http_node, tmp_path: Path):
    """Fault: over HTTPS the session cookie had no ``Secure`` flag, so a
    browser would send it over plain HTTP to the same host. Now it has it
    whenever the browser came over HTTPS (the gateway's TLS, or a proxy's
    ``X-Forwarded-Proto: https``). No HSTS header: it would bind every port
    of the host name to HTTPS, other plain-HTTP nodes on it included."""
    cert, key = make_cert(tmp_path, "node")
    node = make_http_node(http_cert=str(cert), http_key=str(key), http_token=ADMIN, http_ca=str(cert))
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", node.config.http_port, context=context, timeout=15)
    try:
        conn.request("POST", "/ui/login", urlencode({"token": ADMIN}),
                     {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        assert response.status == 303
        assert "; Secure" in response.getheader("Set-Cookie", "")
        assert response.getheader("Strict-Transport-Security") is None
    finally:
        conn.close()


def test_the_session_cookie_over_plain_http(anon):
    """Plain HTTP (loopback): no Secure flag, which the browser would refuse
    to store; behind a proxy that says the browser used HTTPS, Secure."""
    assert "Secure" not in sign_in(anon, ADMIN)[1]["set-cookie"]
    assert "; Secure" in sign_in(anon, ADMIN, {"X-Forwarded-Proto": "https"})[1]["set-cookie"]


# -- fault 7: flash messages -----------------------------------------------------------------------------
def flash_of(html: str) -> str | None:
    match = FLASH.search(html)
    return " ".join(re.sub(r"<[^>]+>", "", match.group(1)).split()) if match else None


def test_a_link_cannot_make_the_console_show_a_flash_message(http_node, api):
    """Fault: the "done" message an action leaves ("Queue payments paused on
    3 of 3 nodes", "4182 dead letters purged") was read from the query
    string, so any link could make the console show one in its own words.
    Now the message is signed for the session that acted: an unsigned one,
    a forged signature and one signed for another session show nothing."""
    make_dead(api, "victim", 1)
    html, headers = page(api, "/ui/dead")[1:]
    cookie = cookie_of(headers)
    spoofs = [{"done": "paused", "q": "payments -- ALL NODES COMPROMISED", "n": "3", "of": "3"},
              {"done": "purged", "n": "4182"}, {"done": "purged", "n": "4182", "flash": "0" * 32}]
    for query in spoofs:
        status, html, _ = page(api, "/ui/dead?" + urlencode(query), headers={"Cookie": cookie})
        assert status == 200 and flash_of(html) is None, query
    status, _, out = post_form(api, "/ui/dead/purge", {"csrf": csrf_of(html), "all": "1"}, cookie)
    assert status == 303
    assert flash_of(page(api, out["location"], headers={"Cookie": cookie})[1]) == "1 dead letter purged."
    other = cookie_of(page(api, "/ui")[2])                 # another browser opening the same link
    assert flash_of(page(api, out["location"], headers={"Cookie": other})[1]) is None
    tampered = out["location"].replace("n=1", "n=4182")
    assert flash_of(page(api, tampered, headers={"Cookie": cookie})[1]) is None


# -- fault 8: every answer under /ui has the console's headers -------------------------------------------
@pytest.mark.parametrize("method,path,status", [("GET", "/ui/nope<b>x</b>", 404), ("PUT", "/ui/queues", 405),
                                                ("GET", "/ui/logout", 405), ("GET", "/ui/static/nope.js", 404),
                                                ("DELETE", "/ui", 405), ("GET", "/ui/tasks/a/b", 404)])
def test_every_answer_under_ui_has_the_consoles_headers(http_node, api, method, path, status):
    """Fault: 404 and 405 answers under /ui came from the gateway's JSON
    error path, without the console's Content-Security-Policy,
    X-Frame-Options, nosniff and Cache-Control, and repeated the path the
    client sent. Now they are the console's error page with its headers,
    and never repeat the path."""
    got, body, headers = api.request(method, path, raw=b"" if method != "GET" else None)
    assert got == status
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CSP and headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    assert b"nope" not in body and b"&lt;b&gt;" not in body and b"/ui/tasks/a/b" not in body
    if status == 405:
        assert headers["allow"]
