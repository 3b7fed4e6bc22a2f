"""Webhook faults an audit found (2026-12-05), one test or more each, every
docstring naming the fault it simulates: a lease that runs out while its
request is in flight, an answer cut short of its Content-Length, URLs the
HTTP client cannot send or that lost their parameters, a task's headers
named like the node's own (in another case), and header values outside
Latin-1. The destinations are raw socket servers in threads, on loopback
ports the system picks; each is closed by its fixture."""
from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator

import pytest
from gateway_harness import FIXTURES, Http, NodeThread, metrics_text, wait_for
from loopback_server import LoopbackServer, read_request

from miyaq.config import NodeConfig
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.outbound import Outbound, Outcome
from miyaq.protocol.recordspec import task_from_record
from miyaq.store.records import task_record
from miyaq.store.task import Task
from miyaq.testing.harness import in_own_hub

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Answer = Callable[[bytes], "bytes | None"]


def _header(head: bytes, wanted: bytes) -> bytes:
    """The first value of header ``wanted`` (lower case) in a request head, b"" if none."""
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            return value.strip()
    return b""


def _closed(conn: socket.socket) -> bool:
    """Has the peer closed ``conn`` (its FIN or RST already here)? Never blocks."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Destination(LoopbackServer):
    """A loopback HTTP destination: each request head is kept (its body read
    past) and answered with ``answer(head)``'s bytes, then the
    connection closed if ``close_after``; None answers nothing and holds the
    request until the node closes its connection. For each task (its
    ``X-Task-Id``) it counts the requests that arrived while an earlier one
    of the same task was still open."""

    def __init__(self, answer: Answer, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.heads: list[bytes] = []
        self.open_by_task: dict[str, list[socket.socket]] = {}
        self.overlaps = 0
        self.held = 0
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            while (request := read_request(conn)) is not None:
                head = request[0]
                task_id = _header(head, b"x-task-id").decode("latin-1")
                with self.lock:
                    self.heads.append(head + b"\r\n")
                    earlier = self.open_by_task.setdefault(task_id, [])
                    self.overlaps += sum(1 for c in earlier if not _closed(c))
                    earlier.append(conn)
                reply = self.answer(head)
                if reply is None:
                    with self.lock:
                        self.held += 1
                    try:
                        while conn.recv(1):      # until the node gives up on it
                            pass
                    finally:
                        with self.lock:
                            self.held -= 1
                    return
                conn.sendall(reply)
                if self.close_after:
                    return
        except OSError:
            return
        finally:
            conn.close()


@pytest.fixture
def destinations() -> Iterator[Callable[..., Destination]]:
    made: list[Destination] = []

    def make(answer: Answer, close_after: bool = False) -> Destination:
        made.append(Destination(answer, close_after))
        return made[-1]

    yield make
    for destination in made:
        destination.close()


@pytest.fixture
def hook_api(make_http_node) -> Iterator[Http]:
    """A client of a node that delivers to loopback (nothing is delivered
    where it is used: the enqueues are refused, or meant to be)."""
    _, client = open_node(make_http_node)
    yield client
    client.close()


def open_node(make_http_node, **settings) -> tuple[NodeThread, Http]:
    settings.setdefault("default_backoff", 0.01)
    settings.setdefault("webhook_allow_private", True)   # the destinations are on loopback
    node = make_http_node(**settings)
    return node, Http(node.url)


def enqueue(api: Http, body: dict) -> str:
    status, answer, _ = api.post("/queue", body)
    assert status == 200, answer
    return answer["id"]


def task_of(api: Http, task_id: str) -> dict:
    return api.get(f"/tasks/{task_id}")[1]["task"]


def in_flight(node: NodeThread) -> int:
    return node.call(lambda: node.node.part("gateway").deliverer.in_flight_total())   # type: ignore[union-attr]


def deliver_one(task: Task, timeout: float = 5.0) -> Outcome:
    """One attempt at ``task`` through an Outbound, in a hub of its own."""
    def run() -> Outcome:
        outbound = Outbound(1, 5.0, Destinations("", True))
        try:
            return outbound.send(task, timeout)
        finally:
            outbound.close()

    return in_own_hub(run)


# -- 1. a lease that runs out mid-delivery -------------------------------------------------------


def test_a_lease_that_runs_out_mid_delivery_stops_its_request_and_gives_its_slot_back(make_http_node,
                                                                                      destinations):
    """Fault: the destination accepts every request and never answers, and
    the tasks' ``timeout`` (their lease, 1 s) is shorter than
    ``webhook_timeout`` (30 s), so each lease runs out mid-request. Before
    the fix the request went on after the lease, the task was leased again
    at once (two requests of one task in flight), the next attempt's books
    overwrote the first's, and the node's slots leaked for good (3 of 4
    here: later webhooks ran one at a time); the error said ``Lost``. Now
    each attempt's request is closed at its lease's end and fails as a
    ``Timeout``, one request per task at a time, every slot comes back,
    and afterwards the node holds as many deliveries at once as before."""
    silent = destinations(lambda head: None)
    node, api = open_node(make_http_node, webhook_max_in_flight=4, webhook_timeout=30.0)
    try:
        ids = [enqueue(api, {"url": f"{silent.url}/hang/{n}", "queue": "slow", "timeout": 1, "max_retries": 1})
               for n in range(3)]
        wait_for(lambda: all(task_of(api, i)["state"] == "dead" for i in ids), "every lease to run out twice")
        for task_id in ids:
            task = task_of(api, task_id)
            assert task["attempt"] == 2, task
            assert task["error"]["type"] == "Timeout", task["error"]
        wait_for(lambda: in_flight(node) == 0, "every slot to be given back")
        wait_for(lambda: silent.held == 0, "every request to be closed")
        assert len(silent.heads) == 6
        assert silent.overlaps == 0, "two requests of one task were in flight at once"

        later = [enqueue(api, {"url": f"{silent.url}/hold/{n}", "queue": "other", "timeout": 300})
                 for n in range(4)]
        wait_for(lambda: silent.held == 4, "four deliveries in flight at once, the node's bound")
        assert in_flight(node) == 4
        for task_id in later:
            assert api.request("DELETE", f"/tasks/{task_id}")[1]["cancelled"] is True
        wait_for(lambda: in_flight(node) == 0, "the cancelled deliveries' slots to be given back")
    finally:
        api.close()


def test_an_attempt_whose_lease_runs_out_is_counted_once_in_the_metrics(make_http_node, destinations):
    """Fault: an attempt whose lease ran out mid-request (the task's
    ``timeout``, 1 s, under ``webhook_timeout``, so the request's own timer
    runs out with the lease) was counted twice in
    ``miyaq_webhook_deliveries_total{result="timeout"}``: once by the lease's
    end, and again by its request's own timeout, which came before the
    kill that stopped it (the engine ignored the second report; the metric
    did not): an alert on the timeout rate read double. Each attempt counts
    once now."""
    silent = destinations(lambda head: None)
    node, api = open_node(make_http_node, webhook_timeout=30.0)
    try:
        ids = [enqueue(api, {"url": f"{silent.url}/hang/{n}", "queue": "slow", "timeout": 1, "max_retries": 1})
               for n in range(2)]
        wait_for(lambda: all(task_of(api, i)["state"] == "dead" for i in ids), "every lease to run out twice")
        wait_for(lambda: in_flight(node) == 0, "every delivery to end")
        counted = re.search(r'^miyaq_webhook_deliveries_total\{queue="slow",result="timeout"\} (\S+)$',
                            metrics_text(node.url), re.M)
        assert counted is not None and float(counted.group(1)) == 4.0, counted   # 2 tasks x 2 attempts
    finally:
        api.close()


# -- 2. an answer cut short ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [b"200 OK", b"404 Not Found"])
def test_an_answer_cut_short_of_its_content_length_is_a_connection_error(destinations, status):
    """Fault: the destination promises ``Content-Length: 100``, sends 3
    bytes and closes the connection. ``http.client``'s ``read(amt)``
    returns ``b""`` there without ``IncompleteRead``: before the fix a 200
    cut short was a success (result ``abc``) and a 404 a final failure. An
    answer cut short is not HTTP: retried (``ConnectionError``)."""
    cut = destinations(lambda head: b"HTTP/1.1 " + status + b"\r\nContent-Length: 100\r\n\r\nabc", close_after=True)
    outcome = deliver_one(Task("cut", "hooks", None, b"", url=f"{cut.url}/cut"))
    assert (outcome.ok, outcome.kind, outcome.retryable) == (False, "connection", True), outcome
    assert outcome.error["type"] == "ConnectionError" and "IncompleteRead" in outcome.error["message"]


def test_an_answer_without_a_length_that_closes_its_connection_is_whole(destinations):
    """No fault: an answer with no Content-Length ends where its connection
    closes; that end is its end, not a cut."""
    whole = destinations(lambda head: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc", close_after=True)
    outcome = deliver_one(Task("whole", "hooks", None, b"", url=f"{whole.url}/whole"))
    assert (outcome.ok, outcome.kind) == (True, "2xx"), outcome


# -- 3. URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/a b", "http://127.0.0.1:9/a\tb", "http://127.0.0.1:9/a\x7f"])
def test_a_url_with_a_space_or_control_character_is_refused_at_enqueue(hook_api, url):
    """Fault: a producer enqueues a URL holding a space (or a tab, a DEL).
    Before the fix it was stored, and every attempt failed ``InvalidURL``
    as a transport error, retried until dead (a tab ``urlsplit`` silently
    dropped). It is refused: 400 naming the URL."""
    status, answer, _ = hook_api.post("/queue", {"url": url})
    assert status == 400, answer
    assert answer["error"]["field"] == "url"


def test_a_stored_url_with_a_space_is_dead_lettered_at_its_first_attempt():
    """Fault: a task stored with a space in its URL (over ZeroMQ, or before
    the enqueue check): before the fix ``http.client.InvalidURL`` (an
    HTTPException) was taken for a transport error and retried. It can
    never be sent: a final failure, nothing sent."""
    outcome = deliver_one(Task("space", "hooks", None, b"", url="http://127.0.0.1:9/a b"))
    assert (outcome.kind, outcome.retryable, outcome.error["type"]) == ("invalid", False, "InvalidURL"), outcome


@pytest.mark.parametrize("url, sent", [
    ("/frag#top", "/frag?user=7"),
    ("/emptyq?", "/emptyq?user=7"),
    ("/amp?a=1&", "/amp?a=1&user=7"),
    ("/query?a=1#x", "/query?a=1&user=7"),
])
def test_get_parameters_join_the_query_before_the_fragment(make_http_node, destinations, url, sent):
    """Fault: a GET webhook's URL ends in a fragment, or in ``?`` or ``&``.
    Before the fix its parameters went after the ``#`` (never sent: lost),
    or after a second ``?`` (``??user=7``). They join the query, before
    the fragment."""
    dest = destinations(lambda head: OK)
    _, api = open_node(make_http_node)
    try:
        task_id = enqueue(api, {"url": dest.url + url, "method": "GET", "params": {"user": "7"}})
        wait_for(lambda: task_of(api, task_id)["state"] == "done", "the delivery")
        assert dest.heads[0].split(b"\r\n", 1)[0] == f"GET {sent} HTTP/1.1".encode()
    finally:
        api.close()


# -- 4. headers named like the node's own ----------------------------------------------------------


@pytest.mark.parametrize("name", ["x-task-id", "X-TASK-QUEUE", "x-Task-Retry-Count"])
def test_a_task_header_named_like_the_nodes_own_is_refused_at_submit(hook_api, name):
    """Fault: a producer sets ``x-task-id: other`` (another case than the
    node's ``X-Task-Id``). Before the fix both were sent, the producer's
    first: a worker reading the first value took the producer's id for the
    task's (and deduplicated on it). Refused: 400, field ``headers``."""
    status, answer, _ = hook_api.post("/queue", {"url": "http://127.0.0.1:9/h", "headers": {name: "other"}})
    assert status == 400, answer
    assert answer["error"]["field"] == "headers" and name in answer["error"]["message"]


def test_header_names_that_differ_only_in_case_are_refused_at_submit(hook_api):
    """Fault: a producer names one header twice, in two cases: both would
    be sent, and a worker would read one of them. Refused: 400."""
    status, answer, _ = hook_api.post("/queue", {"url": "http://127.0.0.1:9/h",
                                                 "headers": {"X-Tenant": "a", "x-tenant": "b"}})
    assert status == 400 and answer["error"]["field"] == "headers", answer


def test_a_stored_task_with_headers_a_new_one_may_not_have_is_still_read_back():
    """Fault: the log (or another node, in a record) holds a task stored
    before the submit checks grew: an ``x-task-id`` of its own, a value
    outside Latin-1. Its record is still taken -- refusing it would drop the
    task at the next start; its delivery sends the node's ``X-Task-Id`` or
    dead-letters it (the two tests around this one)."""
    task = Task("old", "hooks", None, b"", url="http://127.0.0.1:9/h")
    task.meta = {"headers": {"x-task-id": "other", "X-Price": "5 \u20ac"}}
    back = task_from_record(task_record(task), NodeConfig())
    assert back.meta == task.meta


def test_a_stored_task_header_named_like_the_nodes_own_is_not_sent(destinations):
    """Fault: a task stored before the submit check (or by a peer) holds
    ``x-task-id``, ``X-TASK-QUEUE`` and ``user-agent`` of its own. It is
    delivered (nothing stored makes a request fail), with the node's
    values only."""
    dest = destinations(lambda head: OK)
    task = Task("real-task", "hooks", None, b"", url=f"{dest.url}/hook")
    task.meta = {"headers": {"x-task-id": "other", "X-TASK-QUEUE": "elsewhere", "user-agent": "me", "X-Kept": "1"}}
    outcome = deliver_one(task)
    assert outcome.ok, outcome
    head = dest.heads[0].lower()
    assert head.count(b"\r\nx-task-id: ") == 1 and b"\r\nx-task-id: real-task\r\n" in head
    assert head.count(b"\r\nx-task-queue: ") == 1 and b"\r\nx-task-queue: hooks\r\n" in head
    assert head.count(b"\r\nuser-agent: ") == 1 and b"\r\nuser-agent: miyaq/" in head
    assert b"\r\nx-kept: 1\r\n" in head


def test_a_tasks_own_content_type_in_another_case_replaces_the_nodes(make_http_node, destinations):
    """Fault: a JSON enqueue with params names ``content-type: text/plain``.
    Before the fix the node added its ``Content-Type: application/json``
    next to it (two, the producer's first). The task's own is the one sent."""
    dest = destinations(lambda head: OK)
    _, api = open_node(make_http_node)
    try:
        task_id = enqueue(api, {"url": f"{dest.url}/ct", "params": {"a": 1}, "headers": {"content-type": "text/plain"}})
        wait_for(lambda: task_of(api, task_id)["state"] == "done", "the delivery")
        head = dest.heads[0].lower()
        assert head.count(b"\r\ncontent-type: ") == 1 and b"\r\ncontent-type: text/plain\r\n" in head
    finally:
        api.close()


# -- 5. header values outside Latin-1 ------------------------------------------------------------


def test_a_header_value_outside_latin_1_is_refused_at_submit(hook_api):
    """Fault: a producer sets ``X-Price: 5 €``. A header is sent as Latin-1,
    which has no €: before the fix the task was accepted and dead-lettered
    at its first attempt (InvalidRequest). Refused at submit: 400, field
    ``headers``, naming the header."""
    status, answer, _ = hook_api.post("/queue", {"url": "http://127.0.0.1:9/h", "headers": {"X-Price": "5 \u20ac"}})
    assert status == 400, answer
    assert answer["error"]["field"] == "headers" and "X-Price" in answer["error"]["message"]


def test_a_stored_header_value_outside_latin_1_is_an_invalid_header_before_any_byte_is_sent(destinations):
    """Fault: such a header in a task stored before the check: the task is
    dead-lettered as ``InvalidHeader``, and nothing reaches the destination."""
    dest = destinations(lambda head: OK)
    task = Task("euro", "hooks", None, b"", url=f"{dest.url}/h")
    task.meta = {"headers": {"X-Price": "5 \u20ac"}}
    outcome = deliver_one(task)
    assert (outcome.kind, outcome.retryable, outcome.error["type"]) == ("invalid", False, "InvalidHeader"), outcome
    assert dest.heads == []


@pytest.mark.parametrize("url, headers, field", [
    ("http://127.0.0.1:9/a b", None, "url"),
    ("http://127.0.0.1:9/hook", {"X-Price": "5 \u20ac"}, "headers"),
    ("http://127.0.0.1:9/hook", {"x-task-id": "another-task"}, "headers"),
], ids=["url-with-a-space", "header-outside-latin-1", "header-named-like-the-nodes"])
def test_a_webhook_the_node_could_never_send_is_refused_at_a_zeromq_submit_too(node, url, headers, field):
    """Bad input: the same webhooks as above, submitted over ZeroMQ (the
    Python client's ``submit_url``) rather than HTTP. The HTTP gateway
    refused them; a ZeroMQ SUBMIT stored them, and they were dead-lettered
    at their first attempt (or sent without the task's header). Now every
    submit refuses them, naming the field; nothing is stored."""
    import miyaq
    from miyaq.errors import InvalidField
    client = miyaq.Client(node.endpoint, request_timeout=5.0)
    try:
        with pytest.raises(InvalidField) as info:
            client.submit_url(url, b"{}", headers=headers, wait=True)
        assert info.value.details.get("field") == field
        assert client.status()["totals"]["live"] == 0
    finally:
        client.close(flush=False)


def test_a_stored_url_without_a_host_fails_without_its_credentials_or_query():
    """Fault (review16): a task stored by an older node with a URL that has
    no host failed ``InvalidURL: cannot deliver to '<the whole URL>'`` --
    its query's token too -- and the dead-letter line logs that error.
    The error now names the URL as log lines do (no credentials, no query)."""
    outcome = deliver_one(Task("nohost", "hooks", None, b"", url="ftp://user:pw@files.example/x?token=s3cret"))
    assert (outcome.kind, outcome.retryable, outcome.error["type"]) == ("invalid", False, "InvalidURL"), outcome
    message = outcome.error["message"]
    assert "s3cret" not in message and "pw@" not in message and "files.example/x" in message, message
