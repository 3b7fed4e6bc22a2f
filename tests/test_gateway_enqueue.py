"""miyamoto-compatible enqueue (POST /queue): the README's curl example word
for word, the form and JSON bodies, and a 400 naming the field for every
malformed input."""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest
from gateway_harness import FIXTURES, WAIT, Http, wait_for

from miyaq import __version__

_, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals


@pytest.fixture
def http_node(make_http_node):
    """A node whose webhooks go to this machine's web workers (loopback: webhook_allow_private)."""
    return make_http_node(webhook_allow_private=True)


README_CURL = ('curl -d "task.url=http://localhost:9099/worker&task.countdown=5&foo=bar" '
               'http://localhost:8088/queue')
FORM = "application/x-www-form-urlencoded"


def task_of(api: Http, task_id: str) -> dict:
    status, body, _ = api.get(f"/tasks/{task_id}")
    assert status == 200, body
    return body["task"]


def test_readme_curl_example_word_for_word(http_node, api, make_web_worker):
    """The README's command, with only the two ports replaced by free ones."""
    assert shutil.which("curl"), "the curl binary is required (apt-get install curl)"
    worker = make_web_worker()
    command = README_CURL.replace("9099", str(worker.port)).replace("8088", str(http_node.config.http_port))
    out = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=WAIT, check=True)
    answer = json.loads(out.stdout)
    assert answer["status"] == "scheduled" and set(answer) == {"status", "id"}
    task = task_of(api, answer["id"])
    assert task["url"] == f"http://localhost:{worker.port}/worker"
    assert task["eta"] - task["created"] == pytest.approx(5.0)
    assert worker.count() == 0                      # not before its countdown
    wait_for(lambda: worker.count() == 1, "the delivery", timeout=WAIT)
    req = worker.requests[0]
    assert (req.method, req.path, req.body) == ("POST", "/worker", b"foo=bar")
    assert req.headers["Content-Type"] == FORM
    assert req.headers["X-Task-Id"] == answer["id"]
    assert req.headers["X-Task-Queue"] == "default"
    assert req.headers["X-Task-Retry-Count"] == "0"
    assert req.headers["User-Agent"] == f"miyaq/{__version__}"
    wait_for(lambda: task_of(api, answer["id"])["state"] == "done", "the task to be done")


def test_queue_in_path_method_and_iso_eta(api, make_web_worker):
    worker = make_web_worker()
    form = f"task.url={worker.url}/put&task.method=put&task.eta=2020-01-01T00:00:00Z&x=1&x=2"
    status, body, _ = api.post("/queue/emails", raw=form.encode(), content_type=FORM)
    assert status == 200 and body["status"] == "scheduled"
    wait_for(lambda: worker.count() == 1, "the delivery")
    req = worker.requests[0]
    assert (req.method, req.path, req.body) == ("PUT", "/put", b"x=1&x=2")
    assert req.headers["X-Task-Queue"] == "emails"


def test_get_task_sends_parameters_in_the_query(api, make_web_worker):
    worker = make_web_worker()
    status, _, _ = api.post("/queue", {"url": f"{worker.url}/hook?a=1", "method": "GET",
                                       "params": {"b": "two", "c": 3}})
    assert status == 200
    wait_for(lambda: worker.count() == 1, "the delivery")
    assert (worker.requests[0].method, worker.requests[0].path) == ("GET", "/hook?a=1&b=two&c=3")
    assert worker.requests[0].body == b""


def test_json_form_is_delivered_as_json(api, make_web_worker):
    worker = make_web_worker()
    params = {"user": "José", "ids": [1, 2], "nested": {"ok": True}}
    status, body, _ = api.post("/queue", {"url": f"{worker.url}/json", "params": params, "countdown": 0,
                                          "headers": {"X-Custom": "yes"}},
                               content_type="application/json; charset=utf-8")
    assert status == 200 and body["status"] == "scheduled"
    wait_for(lambda: worker.count() == 1, "the delivery")
    req = worker.requests[0]
    assert json.loads(req.body) == params
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Custom"] == "yes"


def test_form_with_charset_parameter(api, make_web_worker):
    worker = make_web_worker()
    form = f"task.url={worker.url}/w&name=Jos%C3%A9&empty="
    status, _, _ = api.post("/queue", raw=form.encode(), content_type=f"{FORM}; charset=UTF-8")
    assert status == 200
    wait_for(lambda: worker.count() == 1, "the delivery")
    assert worker.requests[0].body == b"name=Jos%C3%A9&empty="


def test_same_task_id_twice_is_one_task(api):
    form = b"task.url=http://127.0.0.1:9/x&task.id=fixed-1&task.countdown=600"
    first = api.post("/queue", raw=form, content_type=FORM)[1]
    second = api.post("/queue", raw=form, content_type=FORM)[1]
    assert first == {"status": "scheduled", "id": "fixed-1"}
    assert second == {"status": "scheduled", "id": "fixed-1", "duplicate": True}


FORM_ERRORS = [
    ("foo=bar", "task.url"),
    ("task.url=http://h/x&task.countdown=soon", "task.countdown"),
    ("task.url=ftp://h/x", "task.url"),
    ("task.url=http:///nohost", "task.url"),
    ("task.url=http://h:99999/x", "task.url"),
    ("task.url=http://h/x&task.method=FETCH", "task.method"),
    ("task.url=http://h/x&task.countdown=5&task.eta=1700000000", "task.eta"),
    ("task.url=http://h/x&task.eta=yesterday", "task.eta"),
    ("task.url=http://h/x&task.bogus=1", "task.bogus"),
    ("task.url=http://h/x&task.queue=no/slash", "task.queue"),
    ("task.url=http://h/x&task.priority=1.5", "task.priority"),
    ("task.url=http://h/x&task.id=has space", "task.id"),
]


@pytest.mark.parametrize("form,field", FORM_ERRORS)
def test_malformed_form_is_400_naming_the_field(api, form, field):
    status, body, _ = api.post("/queue", raw=form.encode(), content_type=FORM)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_field"
    assert body["error"]["field"] == field


JSON_ERRORS = [
    (b'{"url": "http://h/x", ', "body"),
    (b'["http://h/x"]', "body"),
    (b'{"url": "http://h/x", "params": [1]}', "params"),
    (b'{"url": "http://h/x", "countdown": "soon"}', "countdown"),
    (b'{"url": "http://h/x", "colour": "red"}', "colour"),
    (b'{"url": 5}', "url"),
    (b'{"params": {}}', "url"),
    (b'{"url": "http://h/x", "headers": {"a": 1}}', "headers"),
    (b'{"url": "http://h/x", "method": "GET", "params": {"a": {"b": 1}}}', "params"),
]


@pytest.mark.parametrize("raw,field", JSON_ERRORS)
def test_malformed_json_is_400_naming_the_field(api, raw, field):
    status, body, _ = api.post("/queue", raw=raw, content_type="application/json")
    assert status == 400, body
    assert body["error"]["field"] == field


def test_other_request_errors(make_http_node):
    node = make_http_node(http_max_body=64)
    api = Http(node.url)
    try:
        status, body, _ = api.post("/queue/bad@queue", raw=b"task.url=http://h/x", content_type=FORM)
        assert (status, body["error"]["field"]) == (400, "queue")
        status, body, _ = api.post("/queue", raw=b"task.url=http://h/x", content_type="text/plain")
        assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
        status, body, _ = api.post("/queue", raw=b"task.url=http://h/x", content_type=f"{FORM}; charset=klingon")
        assert (status, body["error"]["field"]) == (400, "Content-Type")
        status, body, _ = api.post("/queue", raw=b"task.url=http://h/" + b"x" * 100, content_type=FORM)
        assert (status, body["error"]["code"]) == (413, "too_large")
    finally:
        api.close()


def test_allow_list_refuses_other_hosts(make_http_node, make_web_worker):
    worker = make_web_worker()
    node = make_http_node(webhook_allow_hosts=f"127.0.0.1:{worker.port}, *.example.org")
    api = Http(node.url)
    try:
        status, body, _ = api.post("/queue", raw=b"task.url=http://169.254.169.254/latest", content_type=FORM)
        assert (status, body["error"]["code"], body["error"]["field"]) == (403, "forbidden_destination", "task.url")
        status, _, _ = api.post("/queue", raw=f"task.url={worker.url}/ok".encode(), content_type=FORM)
        assert status == 200
        status, _, _ = api.post("/queue", {"url": "https://hooks.example.org/x", "countdown": 600})
        assert status == 200
        wait_for(lambda: worker.count() == 1, "the allowed delivery")
    finally:
        api.close()


def test_enqueue_is_refused_while_busy(make_http_node):
    node = make_http_node(max_tasks=1, webhook_allow_private=True)
    api = Http(node.url)
    try:
        form = b"task.url=http://127.0.0.1:9/x&task.countdown=600"
        assert api.post("/queue", raw=form, content_type=FORM)[0] == 200
        status, body, headers = api.post("/queue", raw=form, content_type=FORM)
        assert (status, body["error"]["code"], headers["retry-after"]) == (503, "busy", "1")
    finally:
        api.close()
