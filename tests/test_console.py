"""The web console over plain HTTP (no browser): every page renders from a
live node, everything producers and workers send is escaped, callers need
the gateway's token (or a session signed after typing it), every POST needs
its CSRF token, a read-only console refuses actions, and the pieces that
keep state (the activity ring buffer, the attempt log, previews) stay
bounded. tests/test_console_browser.py drives the same pages in Chromium."""
from __future__ import annotations

import json
import re
import socket
import threading
from typing import Any
from urllib.parse import urlencode

import msgpack
import pytest
import zmq
from gateway_harness import FIXTURES, Http, free_port, wait_for
from test_gateway_admin import make_dead

from miyaq.gateway.console import access as access_module
from miyaq.gateway.console import attempts as attempts_module
from miyaq.gateway.console.activity import Activity
from miyaq.gateway.console.attempts import AttemptLog
from miyaq.gateway.console.data import PAYLOAD_SHOWN, preview
from miyaq.gateway.console.peers import Peers
from miyaq.gateway.console.render import CSP
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.store.task import Task

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

PAGES = ("/ui", "/ui/queues", "/ui/workers", "/ui/ring", "/ui/dead", "/ui/periodic")
EVIL = '<script>alert("x")</script>'
TOKEN = "s3cret-token-0123456789"    # http_token: 16 characters or more


def page(api: Http, path: str, **kw: Any) -> tuple[int, str, dict[str, str]]:
    status, body, headers = api.get(path, **kw)
    return status, body.decode() if isinstance(body, bytes) else body, headers


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([0-9a-f]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def cookie_of(headers: dict[str, str]) -> str:
    return headers["set-cookie"].split(";", 1)[0]


def post_form(api: Http, path: str, fields: dict[str, str], cookie: str,
              headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    return api.request("POST", path, raw=urlencode(fields).encode(),
                       content_type="application/x-www-form-urlencoded",
                       headers={"Cookie": cookie, **(headers or {})})


class RawWorker:
    """A worker that only says READY (with what it claims about itself) and heartbeats nothing."""

    def __init__(self, port: int, **ready: Any) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.sock.send_multipart(codec.encode(c.READY, {"capacity": 2, **ready}))

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


# -- pages against a live node -------------------------------------------------------------------
def test_every_page_renders_with_a_strict_csp(http_node, api):
    make_dead(api, "mail", 2)
    api.post("/tasks", {"name": "later", "queue": "mail", "countdown": 600})
    worker = RawWorker(http_node.config.port, worker="w-1", queues=["mail"], pid=4242, host="box-7", concurrency=3)
    try:
        wait_for(lambda: api.get("/workers")[1]["workers"], "the worker to register")
        for path in PAGES:
            status, html, headers = page(api, path)
            assert status == 200, (path, html)
            assert headers["content-type"] == "text/html; charset=utf-8"
            assert headers["content-security-policy"] == CSP and "script-src 'self'" in CSP
            assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
            assert "<script>" not in html and " style=" not in html and "onclick" not in html
        assert "box-7" in page(api, "/ui/workers")[1] and "4242" in page(api, "/ui/workers")[1]
        queues = page(api, "/ui/queues")[1]
        assert 'data-queue="mail"' in queues and ">Pause</button>" in queues
        ring = page(api, "/ui/ring")[1]
        assert "t1" in ring and "100.0%" in ring
        assert page(api, "/ui/dead")[1].count("<tr data-task=") == 2
    finally:
        worker.close()


def test_static_files_and_chart_data(http_node, api):
    status, body, headers = api.get("/ui/static/htmx-2.0.11.min.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and len(body) > 40_000
    assert api.get("/ui/static/nope.js")[0] == 404
    api.post("/tasks", {"name": "job"})
    series = wait_for(lambda: (s := api.get("/ui/activity.json")[1]) and s["t"] and s, "a second sample")
    assert set(series) == {"t", "submitted", "started", "completed", "failed"}
    assert all(len(series[k]) == len(series["t"]) for k in series)


def test_a_task_page_escapes_what_producers_send(http_node, api):
    task_id = api.post("/tasks", {"name": EVIL, "args": [EVIL], "key": EVIL, "countdown": 600})[1]["id"]
    status, html, _ = page(api, f"/ui/tasks/{task_id}")
    assert status == 200
    assert EVIL not in html and "&lt;script&gt;" in html
    assert 'id="task-state">scheduled<' in html and "t1" in html
    # found by key too: the search box redirects to the task's page
    status, _, headers = api.get("/ui/task?" + urlencode({"ref": EVIL}))
    assert status == 303 and headers["location"] == f"/ui/tasks/{task_id}"
    status, html, _ = page(api, "/ui/task?" + urlencode({"ref": "no-such-" + EVIL}))
    assert status == 404 and EVIL not in html


def test_a_dead_task_shows_its_failed_attempts(http_node, api):
    task_id = api.post("/tasks", {"name": "job", "max_retries": 1, "backoff": 0.01})[1]["id"]
    for attempt in (1, 2):
        got = wait_for(lambda: api.post("/receive", {"queues": ["default"]})[1]["task"], "the task again")
        assert api.post(f"/tasks/{task_id}/nack", {"attempt": got["attempt"],
                                                   "error": f"bad {attempt} " + EVIL})[1]["ok"]
    html = page(api, f"/ui/tasks/{task_id}")[1]
    assert 'id="task-state">dead<' in html and EVIL not in html
    assert "bad 1 &lt;script&gt;" in html and "bad 2 &lt;script&gt;" in html


TROJAN = "job\u202egnp.exe\x1b[2J\u2066"     # a right-to-left override, a clear-screen, an isolate


def test_c1_controls_are_escaped_and_html_the_templates_made_is_left_as_it_is():
    """Faults simulated (review29 mutations that passed every test): a C1
    control in what a producer or worker sends (``\x9b``, a terminal's
    CSI; ``\x85``, a line break to some programs) shown as it is, because
    :func:`~miyaq.logs.escape_invisible` left out ``\x80``-``\x9f``; and the
    console's finalize escaping HTML the templates made (a macro's output,
    ``Markup``): ``re.sub`` returns a plain str, which autoescape then wrote
    as text (``&lt;b&gt;``)."""
    from markupsafe import Markup

    from miyaq.gateway.console.render import Renderer
    from miyaq.logs import escape_invisible
    assert escape_invisible("a\x85b\x9b[2Jc\x7f\x80") == "a\\x85b\\x9b[2Jc\\x7f\\x80"
    template = Renderer().env.from_string("{{ made }} {{ sent }}")
    assert template.render(made=Markup("<b>x</b>"), sent="<b>\x9b</b>") == "<b>x</b> &lt;b&gt;\\x9b&lt;/b&gt;"


def test_characters_of_no_width_that_make_look_alike_names_are_escaped():
    """Fault simulated: a producer names a task ``send\u200bmail`` (a
    zero-width space), or puts a word joiner or a byte order mark in a
    worker's name: on a page it read exactly as ``sendmail``, so two
    different names looked the same (review29). They are written as
    escapes; the zero-width joiner and non-joiner stay, as emoji and
    Persian text need them."""
    from miyaq.logs import escape_controls, escape_invisible
    assert escape_controls("send\u200bmail") == "send\\u200bmail"      # the terminal's and the log's too
    assert escape_invisible("send\u200bmail\u2060\u2064\ufeff") == "send\\u200bmail\\u2060\\u2064\\ufeff"
    family, persian = "\U0001f469\u200d\U0001f467", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    assert escape_invisible(family) == family and escape_invisible(persian) == persian
    assert escape_controls(family) == family and escape_controls(persian) == persian


def test_the_other_invisible_characters_that_join_nothing_are_escaped_too():
    """Fault simulated: the same look-alike made with another character a
    page shows as nothing -- ``send\\xadmail`` (a soft hyphen), the combining
    grapheme joiner, the deprecated format characters U+206A-206F, the
    interlinear annotation marks, or Unicode tag characters (U+E0000-E007F,
    invisible: "ASCII smuggling") -- read as ``sendmail`` on a page. Only
    the zero-width space and its kin were escaped. A tag character after
    the black flag (an England or Scotland flag emoji is one, then tags)
    stays: emoji are left as they are."""
    from miyaq.logs import escape_controls, escape_invisible
    for hidden, escape in (("\xad", r"\xad"), ("\u034f", r"\u034f"), ("\u206a", r"\u206a"), ("\u206f", r"\u206f"),
                           ("\ufff9", r"\ufff9"), ("\ufffb", r"\ufffb"), ("\U000e0001", r"\U000e0001"),
                           ("\U000e0073", r"\U000e0073")):
        name = f"send{hidden}mail"
        assert escape_invisible(name) == f"send{escape}mail", escape_invisible(name)
        assert escape_controls(name) == f"send{escape}mail", escape_controls(name)
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    assert escape_invisible(england) == england and escape_controls(england) == england


def test_tag_characters_stay_only_where_they_make_a_flag():
    """Fault simulated (review32): tag characters kept wherever one followed
    the black flag or another tag. ``admin`` and two tags read as ``admin``
    and the first tag's escape whatever the second one is (two names alike:
    ``admin\\U000e0061`` then nothing), and the black flag then tags
    spelling ``evil``, never ended by the cancel tag, as the flag alone.
    A tag stays only inside a flag emoji: the black flag, tags (at most 32),
    the cancel tag (U+E007F)."""
    from miyaq.logs import escape_controls, escape_invisible
    tag = "".join(chr(0xE0000 + ord(ch)) for ch in "evil")
    flag = "\U0001f3f4"
    for text, shown in (("admin\U000e0061\U000e0062", r"admin\U000e0061\U000e0062"),
                        (f"go{flag}{tag}", f"go{flag}" + r"\U000e0065\U000e0076\U000e0069\U000e006c"),
                        ("\U000e0067\U000e007f", r"\U000e0067\U000e007f"),
                        (f"{flag}\U000e007f", f"{flag}" + r"\U000e007f"),
                        (flag + "\U000e0061" * 33 + "\U000e007f", flag + r"\U000e0061" * 33 + r"\U000e007f")):
        assert escape_invisible(text) == shown, escape_invisible(text)
        assert escape_controls(text) == shown, escape_controls(text)
    scotland = f"{flag}\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
    for text in (scotland, f"a {scotland}{scotland} b", flag + "\U000e0061" * 32 + "\U000e007f"):
        assert escape_invisible(text) == text and escape_controls(text) == text


def test_what_a_page_would_hide_or_reorder_is_shown_as_escapes(http_node, api):
    """A task name, a failed attempt's message and a worker's declared name
    holding a right-to-left override, an escape sequence or an isolate are
    shown with those written as escapes (``\\u202e``), as ``miyaq status``
    does; a message's line breaks stay (a page shows a traceback's lines).
    Before (audit review28): the characters were on the page as they are,
    the override reversing the rest of its cell."""
    task_id = api.post("/tasks", {"name": TROJAN, "max_retries": 0})[1]["id"]
    got = wait_for(lambda: api.post("/receive", {"queues": ["default"]})[1]["task"], "the task")
    assert api.post(f"/tasks/{task_id}/nack", {"attempt": got["attempt"],
                                               "error": "line one\nline two " + TROJAN})[1]["ok"]
    worker = RawWorker(http_node.config.port, worker="w-trojan", queues=["q"], names=[TROJAN], names_only=True)
    try:
        wait_for(lambda: api.get("/workers")[1]["workers"], "the worker to register")
        for path in (f"/ui/tasks/{task_id}", "/ui/dead", "/ui/workers"):
            html = page(api, path)[1]
            assert not any(ch in html for ch in "\u202e\x1b\u2066"), path
            assert "job\\u202egnp.exe\\x1b[2J\\u2066" in html, path
        assert "line one\nline two job\\u202e" in page(api, f"/ui/tasks/{task_id}")[1]
    finally:
        worker.close()


def test_workers_claims_are_escaped(http_node, api):
    worker = RawWorker(http_node.config.port, worker="w-" + "x" * 8, queues=["q"], host=EVIL, pid=1)
    try:
        wait_for(lambda: api.get("/workers")[1]["workers"], "the worker to register")
        html = page(api, "/ui/workers")[1]
        assert EVIL not in html and "&lt;script&gt;" in html
    finally:
        worker.close()


def test_a_stopping_worker_is_shown_stopping(http_node, api):
    """A worker that said it is stopping (RETURN ``"stopping": true``: it
    is leased nothing more, its running tasks finish) is marked so on the
    Workers page; one that did not is not."""
    stopping = RawWorker(http_node.config.port, worker="w-going", queues=["q"])
    staying = RawWorker(http_node.config.port, worker="w-staying", queues=["q"])
    try:
        wait_for(lambda: len(api.get("/workers")[1]["workers"]) == 2, "the workers to register")
        stopping.sock.send_multipart(codec.encode(c.RETURN, {"ids": [], "credit": False, "stopping": True}))
        wait_for(lambda: [w["stopping"] for w in api.get("/workers")[1]["workers"]
                          if w["worker"] == "w-going"] == [True], "the node to hear it")
        html = page(api, "/ui/workers")[1]
        assert html.count("(stopping)") == 1
        assert html.index("w-going") < html.index("(stopping)") < html.index("w-staying")
    finally:
        stopping.close()
        staying.close()


def _row_of(html: str, wid: str) -> str:
    """The Workers page's table row of worker ``wid``."""
    rows = [row for row in html.split("<tr>") if f"<td>{wid}" in row]
    assert len(rows) == 1, (wid, html[-3000:])
    return rows[0].split("</tr>", 1)[0]


def test_each_worker_shows_the_task_names_it_runs(http_node, api):
    """``GET /workers`` and the Workers page say which task names the node
    sends each worker: ``any`` for one that declared none (no
    ``names_only``: an older worker), the names of one that declared them
    -- on the page the first 5, sorted, and how many more -- escaped.
    Before: no row said."""
    names = [f"app.t{i:02d}" for i in range(11)] + [EVIL]
    declaring = RawWorker(http_node.config.port, worker="w-names", queues=["q"], names=names, names_only=True)
    older = RawWorker(http_node.config.port, worker="w-any", queues=["q"], names=["app.t00"])
    try:
        wait_for(lambda: len(api.get("/workers")[1]["workers"]) == 2, "the workers to register")
        rows = {w["worker"]: w for w in api.get("/workers")[1]["workers"]}
        assert rows["w-names"]["names"] == sorted(names) and rows["w-names"]["names_more"] == 0
        assert rows["w-any"]["names"] == "any" and "names_more" not in rows["w-any"]
        html = page(api, "/ui/workers")[1]
        assert "<th>tasks</th>" in html and EVIL not in html
        shown = _row_of(html, "w-names")
        assert "&lt;script&gt;alert" in shown      # sorted first: '<' before 'a'
        assert "app.t00, app.t01, app.t02, app.t03 and 7 more</td>" in shown, shown
        assert "<td>any</td>" in _row_of(html, "w-any")
    finally:
        declaring.close()
        older.close()


def test_pages_are_paged(http_node, api):
    make_dead(api, "bulk", 55)
    first = page(api, "/ui/dead?queue=bulk")[1]
    assert first.count("<tr data-task=") == 50 and "page 1 of 2" in first
    second = page(api, "/ui/dead?queue=bulk&page=2")[1]
    assert second.count("<tr data-task=") == 5
    assert page(api, "/ui/dead?page=0")[0] == 400
    assert page(api, "/ui/dead?queue=bad@queue")[0] == 400


# -- who may look and act -------------------------------------------------------------------------
def test_a_token_protected_console_signs_in_with_the_token(make_http_node):
    node = make_http_node(http_token=TOKEN)
    anon = Http(node.url)
    try:
        status, _, headers = anon.get("/ui/queues?x=1")
        assert status == 303 and headers["location"] == "/ui/login?next=%2Fui%2Fqueues%3Fx%3D1"
        assert anon.get("/ui/login")[0] == 200
        status, body, headers = post_form(anon, "/ui/login", {"token": "wrong", "next": "/ui"}, "")
        assert status == 401 and "set-cookie" not in headers
        status, _, headers = post_form(anon, "/ui/login", {"token": TOKEN, "next": "/ui/dead"}, "")
        assert status == 303 and headers["location"] == "/ui/dead"
        cookie = cookie_of(headers)
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        assert page(anon, "/ui/dead", headers={"Cookie": cookie})[0] == 200
        # the session opens the console only, not the JSON API
        assert anon.get("/status", headers={"Cookie": cookie})[0] == 401
        # a forged or altered cookie is refused
        name, value = cookie.split("=", 1)
        forged = f"{name}={value[:-1]}{'0' if value[-1] != '0' else '1'}"
        assert anon.get("/ui/dead", headers={"Cookie": forged})[0] == 303
        # the bearer token works as for the API; a redirect never leaves the console
        assert page(anon, "/ui", headers={"Authorization": "Bearer " + TOKEN})[0] == 200
        status, _, headers = post_form(anon, "/ui/login", {"token": TOKEN, "next": "//evil.example/"}, "")
        assert headers["location"] == "/ui"
    finally:
        anon.close()


@pytest.mark.parametrize("target", ["/ui\r\nX-Injected: 1", "/ui\nX-Injected:1", "/ui/\u2028", "/ui/\x00",
                                    "/ui/é", "/ui /dead"])
def test_a_sign_in_whose_next_no_header_can_carry_goes_to_the_console(make_http_node, target):
    """Fault: a sign-in form whose ``next`` holds a line break, a control
    character or text outside latin-1 (a crafted link to the login page).
    The redirect's Location header could not carry it: gevent refused the
    header and the client got a bare 500 with a traceback on stderr (found
    by tests/test_http_fuzz.py's console pass). Now it is a 303 to /ui, with
    no header of the attacker's; so is a ``next`` that is no URI path (a
    space, a non-ASCII letter), which went out as it was."""
    node = make_http_node(http_token=TOKEN)
    anon = Http(node.url)
    try:
        status, _, headers = post_form(anon, "/ui/login", {"token": TOKEN, "next": target}, "")
        assert status == 303 and headers["location"] == "/ui", headers
        assert "x-injected" not in headers
    finally:
        anon.close()


def test_a_header_no_http_can_carry_is_a_console_500_not_gevents(make_http_node, monkeypatch, caplog):
    """Fault: a bug lets a client's text into a response header (simulated:
    the console's redirect without its check). The gateway answers its own
    500 and logs the route, instead of gevent's bare 500 with a traceback
    on stderr, and no forged header goes out. Under /ui that 500 is the
    console's error page with its headers (before 2026-12-05 a JSON one
    without them)."""
    from miyaq.gateway.console.render import Renderer
    from miyaq.gateway.request import Response
    monkeypatch.setattr(Renderer, "redirect", staticmethod(lambda location, cookie="": Response(
        303, b"", [("Location", location)])))
    node = make_http_node(http_token=TOKEN)
    anon = Http(node.url)
    try:
        status, body, headers = post_form(anon, "/ui/login", {"token": TOKEN, "next": "/ui\r\nX-Injected: 1"}, "")
        assert status == 500 and b"Internal error" in body, (status, body)
        assert headers["content-type"] == "text/html; charset=utf-8" and headers["content-security-policy"] == CSP
        assert "x-injected" not in headers and "location" not in headers
        assert any("no header can carry" in r.getMessage() for r in caplog.records)
    finally:
        anon.close()


def test_an_expired_session_is_refused(make_http_node, monkeypatch):
    """Fault: a session cookie older than its lifetime (stolen from an old browser profile, say)."""
    node = make_http_node(http_token=TOKEN)
    anon = Http(node.url)
    try:
        headers = post_form(anon, "/ui/login", {"token": TOKEN}, "")[2]
        cookie = cookie_of(headers)
        monkeypatch.setattr(access_module, "SESSION_TTL", -1.0)
        assert anon.get("/ui", headers={"Cookie": cookie})[0] == 303
    finally:
        anon.close()


def test_posts_need_the_csrf_token_of_their_session(http_node, api):
    """Fault: a cross-site form post, and a post replaying another session's token."""
    make_dead(api, "victim", 1)
    status, html, headers = page(api, "/ui/dead")
    cookie, csrf = cookie_of(headers), csrf_of(html)
    for fields, extra in (({"all": "1"}, {}),                                  # no token
                          ({"all": "1", "csrf": "0" * 40}, {}),                # a wrong one
                          ({"all": "1", "csrf": csrf}, {"Origin": "http://evil.example"}),
                          ({"all": "1", "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"})):
        status, body, _ = post_form(api, "/ui/dead/purge", fields, cookie, extra)
        assert status == 403, (fields, extra)
    other_cookie = cookie_of(page(api, "/ui/dead")[2])
    assert post_form(api, "/ui/dead/purge", {"all": "1", "csrf": csrf}, other_cookie)[0] == 403
    assert len(api.get("/dead")[1]["tasks"]) == 1          # nothing was purged
    status, _, headers = post_form(api, "/ui/dead/purge", {"all": "1", "csrf": csrf}, cookie)
    assert status == 303 and headers["location"].startswith("/ui/dead?done=purged&n=1&flash=")
    assert api.get("/dead")[1]["tasks"] == []


def test_pause_and_resume_from_the_console(http_node, api):
    api.post("/tasks", {"name": "job", "queue": "mail", "countdown": 600})
    status, html, headers = page(api, "/ui/queues")
    cookie, csrf = cookie_of(headers), csrf_of(html)
    status, _, headers = post_form(api, "/ui/queues/mail/pause", {"csrf": csrf, "back": "/ui/queues"}, cookie)
    assert status == 303 and headers["location"].startswith("/ui/queues?done=paused&q=mail&n=1&of=1&flash=")
    assert api.get("/queues/mail")[1]["paused"] is True
    assert "paused on 1 of 1 node" in page(api, headers["location"], headers={"Cookie": cookie})[1]
    post_form(api, "/ui/queues/mail/resume", {"csrf": csrf}, cookie)
    assert api.get("/queues/mail")[1]["paused"] is False
    assert post_form(api, "/ui/queues/bad@q/pause", {"csrf": csrf}, cookie)[0] == 400


def test_a_read_only_console_shows_but_does_not_act(make_http_node):
    node = make_http_node(http_console="read-only")
    api = Http(node.url)
    try:
        make_dead(api, "ro", 1)
        status, html, headers = page(api, "/ui/dead")
        assert status == 200 and "read-only" in html and ">Retry</button>" not in html
        assert ">Pause</button>" not in page(api, "/ui/queues")[1]
        status, body, _ = post_form(api, "/ui/dead/retry", {"all": "1", "csrf": csrf_of(html)},
                                    cookie_of(headers))
        assert status == 403 and b"read-only" in body
        assert len(api.get("/dead")[1]["tasks"]) == 1
    finally:
        api.close()


def test_the_console_can_be_turned_off(make_http_node):
    node = make_http_node(http_console="off")
    api = Http(node.url)
    try:
        assert api.get("/ui")[0] == 404
        assert api.get("/status")[0] == 200
    finally:
        api.close()


# -- bounded state ---------------------------------------------------------------------------------
def test_activity_keeps_a_bounded_history_of_rates():
    outcomes: dict[tuple[str, str], int] = {}
    activity = Activity(outcomes, history=5)
    for second in range(10):
        outcomes[("q", "submitted")] = 10 * second
        outcomes[("q", "started")] = 4 * second
        outcomes[("q", "failed")] = second
        outcomes[("q", "lost")] = second
        activity.sample(float(second))
    series = activity.series()
    assert series["t"] == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert series["submitted"] == [10.0] * 5 and series["started"] == [4.0] * 5
    assert series["failed"] == [2.0] * 5 and series["completed"] == [0.0] * 5
    assert activity.series(since=8.0)["t"] == [9.0]
    activity.sample(60.0)            # a frozen process: the gap is not averaged into a rate
    assert activity.series()["t"][-1] == 9.0


def test_attempt_log_is_bounded(monkeypatch):
    monkeypatch.setattr(attempts_module, "MAX_TASKS", 3)
    log = AttemptLog(lambda: 1.0)
    task = Task("a", "q", "job", b"")
    for attempt in range(1, 15):
        task.attempt = attempt
        task.error = {"type": "E", "message": "m" * 5000}
        log.task_retrying(task, "failed")
    kept = log.of("a")
    assert len(kept) == attempts_module.MAX_PER_TASK
    assert kept[0]["attempt"] == 1 and kept[-1]["attempt"] == 14
    assert len(kept[-1]["message"]) < 2100
    for name in "bcde":
        log.task_dead(Task(name, "q", "job", b""))
    assert list(log.tasks) == ["c", "d", "e"]


def test_previews_are_capped_and_never_fail():
    big = preview(msgpack.packb([["x" * 10_000], {}]))
    assert big is not None and big["cut"] and len(big["text"]) == PAYLOAD_SHOWN
    assert preview(b"\xc1\xff garbage")["format"] == "text"           # not msgpack: shown as text
    deep = b"\x91" * 100_000 + b"\xc0"                                   # nested far beyond recursion
    assert preview(deep)["size"] == 100_001
    assert preview(None) is None


@pytest.mark.parametrize("path", ["/ui/tasks/" + "x" * 300, "/ui/task?ref=" + "y" * 300])
def test_oversized_references_are_refused(api, path):
    assert api.get(path)[0] in (400, 404)


# -- other members ---------------------------------------------------------------------------------
def _two_member_ring(first: Any, second: Any, gone_url: str) -> None:
    """Make ``first`` see a ring of itself, ``second`` and a member whose gateway is down."""
    own = first.node.role.ring_info

    def ring_info() -> dict[str, Any]:
        info = own()
        info["members"] = dict(info["members"])
        info["members"]["t2"] = {"service": "tcp://127.0.0.1:1", "share": 0.3, "weight": 1.0, "http": second.url}
        info["members"]["t3"] = {"service": "tcp://127.0.0.1:2", "share": 0.2, "weight": 1.0, "http": gone_url}
        return info

    first.call(lambda: setattr(first.node.role, "ring_info", ring_info))


def test_pause_reaches_every_member_and_the_ring_page_asks_each(make_http_node):
    """Fault: one member of the ring does not answer (its gateway is down)."""
    first = make_http_node(http_token=TOKEN)
    second = make_http_node(http_token=TOKEN, node_id="t2")
    gone = f"http://127.0.0.1:{free_port()}"
    _two_member_ring(first, second, gone)
    api, api2 = Http(first.url, token=TOKEN), Http(second.url, token=TOKEN)
    try:
        api2.post("/tasks", {"name": "job", "queue": "mail", "countdown": 600})
        ring = page(api, "/ui/ring")[1]
        assert re.search(r"<td>t2</td>.*?<td class=\"num\">1</td>", ring, re.S), "t2's tasks held"
        assert "unreachable" in ring
        status, html, headers = page(api, "/ui/queues")
        status, _, headers = post_form(api, "/ui/queues/mail/pause", {"csrf": csrf_of(html)}, cookie_of(headers))
        assert status == 303 and "n=2&of=3" in headers["location"]
        assert api.get("/queues/mail")[1]["paused"] and api2.get("/queues/mail")[1]["paused"]
        workers = page(api, "/ui/workers")[1]
        assert "node t2" in workers and "unreachable" in workers
    finally:
        api.close()
        api2.close()


def test_a_member_with_another_token_is_reported_not_trusted(make_http_node):
    first = make_http_node()
    second = make_http_node(http_token="another-token-0123456789", node_id="t2")
    _two_member_ring(first, second, "javascript:alert(1)")
    api = Http(first.url)
    try:
        ring = page(api, "/ui/ring")[1]
        assert "HTTP 401" in ring and "no usable gateway address" in ring
        assert 'href="javascript' not in ring
    finally:
        api.close()


def test_a_failing_sample_is_logged_and_the_node_goes_on(make_http_node, monkeypatch, caplog):
    """Fault: a bug in the activity sampler (here: its first sample raises)."""
    real = Activity.sample
    calls = {"n": 0}

    def flaky(self: Activity, now: float) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("sampler bug")
        real(self, now)

    monkeypatch.setattr(Activity, "sample", flaky)
    node = make_http_node()
    api = Http(node.url)
    try:
        wait_for(lambda: calls["n"] >= 3, "the sampler to go on after its failure")
        assert api.get("/ui")[0] == 200 and api.get("/status")[0] == 200
        assert "sampling the node's activity failed" in caplog.text
    finally:
        api.close()


def test_a_member_that_never_answers_costs_one_timeout():
    """Fault: a member's gateway accepts the connection and then hangs (a frozen process)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        answer = Peers("").call(url, "GET", "/status")
        assert isinstance(answer, str) and answer.startswith("unreachable")


def test_a_member_that_drips_its_answer_costs_one_timeout():
    """Fault: a member's gateway answers a byte at a time, each just inside
    the socket's timeout, for longer than the test may run (a slowloris
    peer, or one whose process crawls). The page's call ends at its own
    deadline with an error text; each byte no longer buys it another
    second."""
    with socket.socket() as dripping:
        dripping.bind(("127.0.0.1", 0))
        dripping.listen(8)
        stop = threading.Event()

        def drip() -> None:
            conn, _ = dripping.accept()
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                    for _ in range(1000):   # 200 s at most, far past the test's timeout
                        if stop.wait(0.2):
                            return
                        conn.sendall(b" ")
                except OSError:
                    return   # the caller gave up and closed

        thread = threading.Thread(target=drip, daemon=True)
        thread.start()
        try:
            answer = Peers("").call(f"http://127.0.0.1:{dripping.getsockname()[1]}", "GET", "/status")
        finally:
            stop.set()
            thread.join(5)
    assert isinstance(answer, str) and answer.startswith("unreachable"), answer


class _HostileMember:
    """A member's gateway answering ``/status`` and ``/workers`` with the
    JSON given (a buggy or hostile peer: every answer is 200 and JSON)."""

    def __init__(self, status: Any, workers: Any) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        answers = {"/status": status, "/workers": workers}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:   # noqa: N802 (http.server's name)
                body = json.dumps(answers.get(self.path.split("?")[0], {})).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


GOOD_STATUS = {"totals": {"live": 1, "dead": 0, "workers": 1}}


@pytest.mark.parametrize("status, workers, said", [
    pytest.param({"totals": "x"}, {"workers": "abc"}, "not understood", id="not-maps"),
    pytest.param({"totals": {"live": {"a": 1}, "dead": "<b>", "workers": -3}}, {"workers": [1, "x", None]},
                 "not understood", id="wrong-types-inside"),
    pytest.param({"totals": {"live": 1e300, "dead": True, "workers": 2**70}},
                 {"workers": [{"worker": {"x": 1}, "host": 7, "pid": "p", "last_seen": "yesterday", "queues": 5,
                               "running": [], "capacity": {}, "concurrency": -1}]}, "not understood",
                 id="wrong-fields"),
    pytest.param(GOOD_STATUS,
                 {"workers": [{"worker": "w", "running": 0, "capacity": 1, "queues": ["q"], "last_seen": 1e300}]},
                 "not understood", id="a-time-no-date-shows"),
    pytest.param(GOOD_STATUS,
                 {"workers": [{"worker": "w", "running": 0, "capacity": 1, "queues": ["q"], "last_seen": 1.0,
                               "names": ["a", {"<b>": 1}], "names_more": 0}]},
                 "not understood", id="names-not-names"),
    pytest.param(GOOD_STATUS,
                 {"workers": [{"worker": "w", "running": 0, "capacity": 1, "queues": ["q"], "last_seen": 1.0,
                               "names": ["a"], "names_more": "<b>"}]},
                 "not understood", id="names-more-not-a-count"),
    pytest.param(GOOD_STATUS,
                 {"workers": [{"worker": "w", "running": 0, "capacity": 1, "queues": ["q"], "last_seen": 1.0,
                               "names": "<b>"}]},
                 "not understood", id="names-a-word-not-any"),
    pytest.param([1, 2], [3], "not a JSON object", id="not-objects"),
])
def test_a_member_answering_nonsense_is_shown_as_not_understood(make_http_node, status, workers, said):
    """Fault: another member's gateway answers ``/status`` and ``/workers``
    with JSON of the wrong shape (a buggy or hostile peer). Every console
    page that asks it still answers 200 and says the member's answer was
    not understood; nothing of the nonsense is shown."""
    first = make_http_node()
    hostile = _HostileMember(status, workers)
    _two_member_ring(first, hostile, f"http://127.0.0.1:{free_port()}")
    api = Http(first.url)
    try:
        for path in ("/ui", "/ui/ring", "/ui/workers"):
            code, html = page(api, path)[:2]
            assert code == 200, (path, html[-2000:])
            if path == "/ui/workers" or status != GOOD_STATUS:   # the ring and overview show the status
                assert said in html, path
            assert "yesterday" not in html and "&lt;b&gt;" not in html, path
    finally:
        api.close()
        hostile.close()


def test_a_members_workers_show_their_names_and_an_older_member_says_nothing(make_http_node):
    """Another member's ``/workers`` rows: ``"any"`` and a list (with
    ``names_more``) are shown as this node's are; a row without ``names``
    (a member of before 2026-12-07) shows ``-``, not ``any``, which it did not say;
    a declared name that reads like those words is quoted."""
    first = make_http_node()
    row = {"running": 0, "capacity": 1, "queues": ["q"], "last_seen": 1.0}
    member = _HostileMember(GOOD_STATUS, {"workers": [
        {**row, "worker": "w-old"}, {**row, "worker": "w-any", "names": "any"},
        {**row, "worker": "w-list", "names": ["b", "a", "c", "d", "e", "f"], "names_more": 14},
        {**row, "worker": "w-lookalike", "names": ["any", "x and 9 more"], "names_more": 0}]})
    _two_member_ring(first, member, f"http://127.0.0.1:{free_port()}")
    api = Http(first.url)
    try:
        html = page(api, "/ui/workers")[1]
        assert "<td>-</td>" in _row_of(html, "w-old")
        assert "<td>any</td>" in _row_of(html, "w-any")
        assert ">b, a, c, d, e and 15 more</td>" in _row_of(html, "w-list")
        # A declared name that reads like the row's own words is quoted (audit review27).
        assert ">&#34;any&#34;, &#34;x and 9 more&#34;</td>" in _row_of(html, "w-lookalike")
    finally:
        api.close()
        member.close()


def test_the_queues_page_shows_the_busiest_fifty_a_page(http_node, api):
    """Fault: the Queues page rendered every queue in one go and is
    re-fetched every few seconds: at 10,000 queues a 6 MB page took the
    node's hub 0.3-0.5 s each time (ZeroMQ submits and heartbeats waited).
    It now shows 50 a page, the queues holding most first, with the total
    and a link to the next page."""
    for _ in range(3):
        api.post("/tasks", {"name": "job", "queue": "busy", "countdown": 600})
    for i in range(55):
        api.post("/tasks", {"name": "job", "queue": f"q{i:02d}", "countdown": 600})
    first = page(api, "/ui/queues")[1]
    assert first.count("<tr data-queue=") == 50
    assert first.index('data-queue="busy"') < first.index('data-queue="q00"')     # holds most: first
    assert "(56 in all)" in first and "page 1 of 2" in first and 'href="?page=2"' in first
    second = page(api, "/ui/queues?page=2")[1]
    assert second.count("<tr data-queue=") == 6 and 'data-queue="busy"' not in second


def test_the_overview_counts_the_queues_once(http_node, api):
    """Fault: the Overview (refreshed every few seconds) built the per-queue
    map three times to show a few totals -- in the node's STATUS, again to
    sum it by state, and once more for this node's row of the members: at
    10,000 queues 55-70 ms of the node's hub a refresh. It is built once."""
    api.post("/tasks", {"name": "job", "queue": "mail", "countdown": 600})
    core = http_node.node.core
    engine = core.engine
    calls: dict[str, int] = {"status": 0, "queue_counts": 0}

    def counting(name, real):
        def counted():
            calls[name] += 1
            return real()
        return counted
    # The map is built by the node's status (its rows read from the engine's
    # counts in slices since 2026-12-06), and not counted again.
    http_node.call(lambda: (setattr(engine, "queue_counts", counting("queue_counts", engine.queue_counts)),
                            setattr(core, "status", counting("status", core.status))))
    try:
        status, html, _ = page(api, "/ui")
    finally:
        http_node.call(lambda: (delattr(engine, "queue_counts"), delattr(core, "status")))
    assert status == 200 and calls == {"status": 1, "queue_counts": 0}, calls


def test_the_periodic_page_shows_a_schedules_ttl(http_node, api):
    """Fault: a schedule's ticks expire (its ``ttl``) and the Periodic page,
    where an operator looks for why, did not say so. Now its row says how
    long a tick may wait; a schedule without a ttl says nothing more."""
    worker = RawWorker(http_node.config.port, worker="w-sched", queues=["elsewhere"], names=["sweep"],
                       periodic=[{"name": "with-ttl", "task": "sweep", "every": 3600, "ttl": 90},
                                 {"name": "plain", "task": "sweep", "every": 3600}])
    try:
        wait_for(lambda: api.get("/status")[1]["periodic"]["schedules"] == 2, "the schedules to be declared")
        html = page(api, "/ui/periodic")[1]
        rows = {name: html.split(f'<tr data-schedule="{name}">', 1)[1].split("</tr>", 1)[0]
                for name in ("with-ttl", "plain")}
        assert "every 1.0 h; a tick not started in 1.5 min expires</td>" in rows["with-ttl"], rows["with-ttl"]
        assert "expires" not in rows["plain"]
    finally:
        worker.close()
