"""The same operation through miyaq's two front doors -- ZeroMQ
(docs/protocol.md) and the HTTP gateway (docs/http.md) -- gets the same
verdict: mismatches a parity audit found (2026-12-05), one test or more
each, every docstring naming the fault it simulates.

Nodes run in threads of the test process (:mod:`gateway_harness`) on
loopback ports the system picks; each is stopped by its fixture.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import msgpack
import pytest
from gateway_harness import FIXTURES, Http, NodeThread
from test_inproc_standby import at_most_once_started_elsewhere
from test_log_replayed_state import T0, durable_engine, written

import miyaq
from miyaq.config import NodeConfig
from miyaq.errors import InvalidField, MiyaqError
from miyaq.gateway.auth import BearerAuth
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.errors import http_status
from miyaq.gateway.outbound import Outbound, Outcome, request_target
from miyaq.gateway.request import Request
from miyaq.gateway.tasks_api import TasksApi
from miyaq.protocol.commands import ACCEPTED
from miyaq.protocol.recordspec import STARTED_ELSEWHERE, task_from_record
from miyaq.runtime import green
from miyaq.store.records import task_record, transfer_record
from miyaq.store.task import DONE, Task
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
    65535, an IPv6 literal, a host in another script. (A URL with
    credentials, taken here before 2026-12-06, is refused since:
    tests/test_webhook_url_credentials.py.)"""
    node = make_http_node(webhook_allow_private=True)
    http = Http(node.url)
    client = zmq_client(node)
    urls = ["http://127.0.0.1:1/x", "https://127.0.0.1:65535/x", "http://[::1]:9/x", "http://bücher.example/x",
            "http://127.0.0.1:9"]
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


def test_an_ipv6_zone_written_as_a_url_writes_it_reaches_the_resolver_as_a_zone():
    """Fault (a review's observation): ``http://[fe80::1%25eth0]/`` -- an IPv6
    zone as RFC 6874 writes it in a URL -- was taken at submit, and its
    delivery gave the resolver ``fe80::1%25eth0``, which it cannot resolve
    (the raw form ``[fe80::1%eth0]`` worked). Both now reach it as a zone."""
    for url in ("http://[fe80::1%25eth0]:8080/x", "http://[fe80::1%eth0]:8080/x"):
        assert request_target(url) == (("http", "fe80::1%eth0", 8080), "/x"), url
    assert request_target("http://[::1]/%25")[0] == ("http", "::1", 80)     # a path's %25 is left alone


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


# -- 2. ack, nack and touch refuse unknown fields; nack takes returned ------------------------------


def submitted_and_received(api: Http, queue: str) -> dict:
    """A task submitted over HTTP to ``queue`` and received (leased) over HTTP."""
    status, answer, _ = api.post("/tasks", {"name": "job", "queue": queue})
    assert status == 202, answer
    task = api.post("/receive", {"queues": [queue]})[1]["task"]
    assert task is not None and task["id"] == answer["id"]
    return task


@pytest.mark.parametrize("action, body, field", [
    ("touch", {"bogus": 1}, "bogus"),
    ("nack", {"retyr": False, "message": "x"}, "message"),
    ("nack", {"retyr": False}, "retyr"),
    ("ack", {"reslt": 5}, "reslt"),
])
def test_ack_nack_and_touch_refuse_a_field_they_do_not_know(api, action, body, field):
    """Fault: ``POST /tasks/{id}/ack``, ``/nack`` and ``/touch`` dropped
    keys they did not know: a nack with ``retyr: false`` (a typo) retried
    the task instead of dead-lettering it, and lost its ``message``; an ack
    with ``reslt`` finished the task with a null result. OpenAPI says the
    bodies are closed. Now a 400 ``invalid_field`` naming the first unknown
    key, and the lease is as it was."""
    task = submitted_and_received(api, "strict-" + action)
    status, answer, _ = api.post(f"/tasks/{task['id']}/{action}", {"attempt": task["attempt"], **body})
    assert status == 400, answer
    assert (answer["error"]["code"], answer["error"]["field"]) == ("invalid_field", field), answer
    after = api.get(f"/tasks/{task['id']}")[1]["task"]
    assert (after["state"], after["attempt"], after["lease_end"]) == ("running", task["attempt"], task["lease_end"])


def test_a_nack_returned_gives_the_task_back_unstarted_as_over_zeromq(api):
    """Fault: ZeroMQ NACK ``returned: true`` gives a task back unstarted
    (no attempt spent, ready at once); over HTTP ``returned`` was ignored
    and the nack spent the attempt (a retry with backoff, the attempt
    counted towards ``max_retries``). Now it means the same over HTTP."""
    task = submitted_and_received(api, "given-back")
    status, answer, _ = api.post(f"/tasks/{task['id']}/nack", {"attempt": task["attempt"], "returned": True})
    assert (status, answer) == (200, {"ok": True})
    after = api.get(f"/tasks/{task['id']}")[1]["task"]
    assert after["state"] == "ready" and "error" not in after, after
    again = api.post("/receive", {"queues": ["given-back"]})[1]["task"]
    assert (again["id"], again["attempt"]) == (task["id"], task["attempt"])
    # a stale attempt, or one given back already, is ok: false as over ZeroMQ
    assert api.post(f"/tasks/{task['id']}/nack", {"attempt": task["attempt"] + 1, "returned": True})[1]["ok"] is False


# -- 3. a nack's error text is cut, as over ZeroMQ --------------------------------------------------


def test_a_nack_error_over_4096_characters_is_cut_not_refused(api):
    """Fault: a nack whose ``error`` held 5,000 characters was a 400 over
    HTTP (ZeroMQ NACK cuts the message at 4,096: docs/protocol.md 6.3); the
    consumer's failure report was lost, and the task came back only when
    its lease ran out, as lost. Now it is cut to 4,096 characters and the
    failure applies."""
    task = submitted_and_received(api, "long-error")
    status, answer, _ = api.post(f"/tasks/{task['id']}/nack",
                                 {"attempt": task["attempt"], "error": "e" * 5000, "delay": 1000})
    assert (status, answer) == (200, {"ok": True})
    after = api.get(f"/tasks/{task['id']}")[1]["task"]
    assert after["state"] == "retrying", after
    assert (after["error"]["type"], after["error"]["message"]) == ("Nack", "e" * 4096)


def test_a_nack_error_that_is_not_a_string_is_refused(api):
    """Bad input: ``error`` a number. Refused (400, field ``error``), the
    lease as it was."""
    task = submitted_and_received(api, "bad-error")
    status, answer, _ = api.post(f"/tasks/{task['id']}/nack", {"attempt": task["attempt"], "error": 5})
    assert (status, answer["error"]["field"]) == (400, "error"), answer
    assert api.get(f"/tasks/{task['id']}")[1]["task"]["state"] == "running"


# -- 4. POST /queue's JSON body takes numbers as JSON numbers --------------------------------------


@pytest.fixture
def hook_api(make_http_node) -> Iterator[Http]:
    """A client of a node that may deliver to loopback (its webhooks are never due here)."""
    client = Http(make_http_node(webhook_allow_private=True).url)
    yield client
    client.close()


@pytest.mark.parametrize("field, value", [
    ("countdown", "50"), ("priority", "3"), ("max_retries", " 2"), ("ttl", "100"), ("timeout", "5"),
    ("backoff", "1"),
])
def test_a_json_enqueue_refuses_a_number_given_as_a_string(hook_api, field, value):
    """Fault: ``POST /queue`` with a JSON body took ``"countdown": "50"``,
    ``"priority": "3"``, ``"max_retries": " 2"`` (the form body's string
    parsing, reused), while ``POST /tasks`` and a ZeroMQ SUBMIT refuse them
    ("must be a number, not str") and OpenAPI says number or integer. Now
    refused the same way; nothing is stored."""
    status, answer, _ = hook_api.post("/queue", {"url": "http://127.0.0.1:9/x", "id": "strings", field: value})
    assert status == 400, answer
    assert answer["error"]["field"] == field and "not str" in answer["error"]["message"], answer
    assert hook_api.get("/tasks/strings")[0] == 404


def test_a_form_enqueue_still_parses_its_numbers_and_a_json_eta_may_be_iso(hook_api):
    """A form body is all strings: its numbers are still parsed. A JSON
    ``eta`` may be an ISO 8601 string, as for ``POST /tasks``."""
    status, answer, _ = hook_api.post("/queue", raw=b"task.url=http://127.0.0.1:9/x&task.countdown=50&task.priority=3",
                                 content_type="application/x-www-form-urlencoded")
    assert status == 200, answer
    assert hook_api.get(f"/tasks/{answer['id']}")[1]["task"]["priority"] == 3
    status, answer, _ = hook_api.post("/queue", {"url": "http://127.0.0.1:9/x", "eta": "2030-01-02T03:04:05Z"})
    assert status == 200, answer


# -- 5. integer query parameters and an empty state ------------------------------------------------


@pytest.mark.parametrize("path", ["/tasks?limit=1.5", "/dead?limit=1.5", "/workers?limit=1.5", "/tasks?limit=1e2",
                                  "/tasks?limit=1_0", "/dead?limit=1%202"])
def test_an_integer_query_parameter_refuses_a_fraction(api, path):
    """Fault: ``GET /tasks?limit=1.5`` (and ``/dead``, ``/workers``) was
    read as ``int(1.5)`` = 1 and answered 200 with one row; ZeroMQ says
    "must be an integer" and OpenAPI says integer. Now a 400
    ``invalid_field`` naming ``limit``."""
    status, answer, _ = api.get(path)
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, "invalid_field", "limit"), answer


def test_an_integer_query_parameter_still_takes_integers(api):
    """The integer reader takes what it took that was an integer: digits,
    a sign, an empty value (the default); out of range is still a 400.
    Fault (a review audit): ``?limit=+5`` -- a literal ``+`` is a space in a
    query, so the value is ``" 5"`` -- and ``?limit=5%20``, taken before the
    reader was strict, were refused; spaces around the digits are dropped."""
    for path in ("/tasks?limit=5", "/tasks?limit=%2B5", "/tasks?limit=", "/dead?limit=10000", "/workers?limit=1",
                 "/tasks?limit=+5", "/dead?limit=5%20", "/workers?limit=%205"):
        assert api.get(path)[0] == 200, path
    for path in ("/tasks?limit=0", "/tasks?limit=10001", "/tasks?limit=-1", "/tasks?limit=abc"):
        assert api.get(path)[0] == 400, path


def test_an_empty_state_filter_is_refused_not_every_state(api):
    """Fault: ``GET /tasks?state=`` (empty) listed every state, where a
    ZeroMQ TASKS with ``state: ""`` is refused. Now a 400 naming
    ``state``; a state that exists still filters."""
    api.post("/tasks", {"name": "job", "queue": "listed", "countdown": 1000})
    status, answer, _ = api.get("/tasks?state=")
    assert (status, answer["error"]["field"]) == (400, "state"), answer
    status, answer, _ = api.get("/tasks?state=scheduled")
    assert status == 200 and [t["state"] for t in answer["tasks"]] == ["scheduled"], answer


# -- 6. the console finds a key as it was given --------------------------------------------------


def test_the_console_search_finds_a_key_with_spaces_at_its_ends(api):
    """Fault: both doors take the key ``" spaced "``, and the console's
    search stripped what was typed: ``/ui/task?ref=%20spaced%20`` was a
    404. It looks the search up as typed first, then stripped (an id
    pasted with a space still found)."""
    spaced = api.post("/tasks", {"name": "job", "key": " spaced ", "countdown": 600})[1]["id"]
    plain = api.post("/tasks", {"name": "job", "key": "spaced", "countdown": 600})[1]["id"]
    assert spaced != plain
    for ref, task_id in ((" spaced ", spaced), ("spaced", plain), (f" {plain} ", plain), ("  spaced", plain)):
        status, _, headers = api.get("/ui/task?" + urlencode({"ref": ref}))
        assert (status, headers.get("location")) == (303, f"/ui/tasks/{task_id}"), ref
    assert api.get("/ui/task?" + urlencode({"ref": "   "}))[0] == 404
    assert api.get("/ui/task?" + urlencode({"ref": ""}))[0] == 400


# -- 7. a result asked of a holder whose at-most-once copy was dropped ------------------------------


def http_result(node: Any, task_id: str, timeout: float = 0.0) -> tuple[int, dict[str, Any]]:
    """``GET /tasks/{id}/result?timeout=`` through ``node``'s gateway code
    (:class:`~miyaq.gateway.tasks_api.TasksApi`), in the cluster's hub:
    (status, JSON answer). The in-process nodes run no HTTP server; the
    handler needs only the node's core, settings and (open) tokens."""
    gateway = SimpleNamespace(config=node.config, core=node.node.core, long_polls=set(), auth=BearerAuth(""))
    request = Request({"REQUEST_METHOD": "GET", "QUERY_STRING": urlencode({"timeout": timeout})}, 1 << 20)
    request.params["id"] = task_id
    try:
        response = TasksApi(gateway).result(request)  # type: ignore[arg-type]
    except MiyaqError as err:
        return http_status(err), {"error": err.to_wire()}
    return response.status, json.loads(response.body)


def test_http_result_on_a_holder_whose_at_most_once_copy_started_elsewhere_is_not_found(inproc):
    """Fault: an at-most-once task's copy on a holder that does not run it
    is dropped as "started-elsewhere" when the runner starts it. ZeroMQ
    RESULT asked of that holder answers ``not_found`` (the outcome is on
    the runner: a client asks the next node); ``GET /tasks/{id}/result``
    answered 200 ``{"state": "started-elsewhere", "done": false}``, which
    reads as a task still pending here. Now a 404 with RESULT's message;
    once the runner's finish arrives, the outcome, as over ZeroMQ."""
    cluster = inproc(3)
    tid, runner, other, workers = at_most_once_started_elsewhere(cluster)
    status, answer = http_result(cluster[other], tid)
    assert status == 404 and answer["error"]["code"] == "not_found", answer
    assert "another of its holders" in answer["error"]["message"], answer
    assert workers[runner].complete(tid, result=msgpack.packb(42), attempt=1)
    cluster.wait_until(lambda: cluster[other].state(tid) == DONE, what="the holder to hear the finish")
    assert http_result(cluster[other], tid) == (200, {"id": tid, "state": DONE, "done": True, "result": 42})


def test_a_waiting_http_result_whose_copy_is_dropped_as_started_elsewhere_is_not_found(inproc):
    """Fault: the same, for a result that waits (``?timeout=``) while the
    holder's copy is still there: when the runner's STARTED event drops
    it, the wait was answered 200 ``started-elsewhere``, ``done: false``.
    Now 404, as a waiting ZeroMQ RESULT is answered."""
    cluster = inproc(3)
    tid = cluster.task_id()
    holders = cluster.holders(tid)
    runner, other = holders[0], holders[1]
    workers = {h: cluster.worker(h) for h in holders}
    started = cluster.net.hold("EVENTS", src=runner, dst=other, event="S")
    sub = cluster.submit_accepted(other, tid, at_most_once=True)
    cluster.wait_until(lambda: sub.result and workers[runner].runs(tid), what="the runner to start the task")
    waiters = cluster[other].node.core.waiters
    before = waiters.count
    asked = green.Greenlet.spawn(http_result, cluster[other], tid, 30.0)
    cluster.wait_until(lambda: waiters.count > before, what="the result to wait")
    assert started.release()
    cluster.wait_until(asked.ready, what="the wait to be answered")
    status, answer = asked.get()
    assert status == 404 and "another of its holders" in answer["error"]["message"], answer
    assert cluster[other].state(tid) == STARTED_ELSEWHERE
