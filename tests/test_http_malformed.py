"""Every malformed HTTP request is answered 4xx, never 500 (issue 9).

Each test plays a client sending what a parser could choke on -- a charset
that is a codec but not a text encoding, JSON nested 1,000 deep, a bad chunk
size, too many query fields, a broken request line or header -- and checks
the answer is a 4xx in the gateway's JSON error shape, that nothing was
stored, and that the node still serves the next request.
"""
from __future__ import annotations

import random
import socket
from typing import Any

import pytest

from gateway_harness import FIXTURES, Http, NodeThread

http_node, api, make_http_node, make_web_worker = FIXTURES

FORM = "application/x-www-form-urlencoded"
ENDPOINTS = [("POST", "/queue"), ("POST", "/tasks"), ("POST", "/receive"), ("PUT", "/queues/q/limits"),
             ("POST", "/dead/retry"), ("POST", "/tasks/t1/ack")]


def raw_exchange(node: NodeThread, data: bytes) -> tuple[int, bytes]:
    """Send ``data`` on a fresh connection; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", node.config.http_port), timeout=15) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received or len(received) < _expected_length(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def _expected_length(received: bytes) -> int:
    head, sep, _ = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + len(sep) + int(value)
    return 1 << 30   # no length: read to the end


def assert_still_serving(api: Http) -> None:
    status, body, _ = api.get("/status")
    assert status == 200 and body["totals"]["live"] == 0, body


def assert_error(status: int, body: Any, code: str | None = None, field: str | None = None) -> None:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and "error" in body, body
    if code is not None:
        assert body["error"]["code"] == code, body
    if field is not None:
        assert body["error"].get("field") == field, body


@pytest.mark.parametrize("charset", ["rot13", "base64", "zlib", "hex", "bz2", "uu", "klingon"])
@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_charset_500_a_codec_that_is_no_text_encoding_is_400(api, charset, method, path):
    """The charset 500: Python knows rot13, base64 and zlib as codecs, but
    they do not decode bytes to text (LookupError); every endpoint with a
    body refuses them like an unknown charset, naming Content-Type."""
    status, body, _ = api.request(method, path, raw=b'{"url": "http://h/x", "name": "n"}',
                                  content_type=f"application/json; charset={charset}")
    assert_error(status, body, "invalid_field", "Content-Type")
    assert charset in body["error"]["message"]
    status, body, _ = api.request(method, path, raw=b"task.url=http://h/x", content_type=f"{FORM}; charset={charset}")
    assert_error(status, body, "invalid_field", "Content-Type")
    assert_still_serving(api)


@pytest.mark.parametrize("charset", ["idna", "punycode", "utf-16", "utf_8_sig"])
def test_a_body_its_text_charset_cannot_decode_is_400(api, charset):
    """Text codecs with their own failures (idna and punycode raise
    UnicodeError, utf-16 an odd length) are a 400 naming the body."""
    for content_type in (f"application/json; charset={charset}", f"{FORM}; charset={charset}"):
        status, body, _ = api.post("/queue", raw=b"task.url=\xff\xfe\xfd", content_type=content_type)
        assert_error(status, body)
    assert_still_serving(api)


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_json_depth_500_deep_json_is_400(api, depth, method, path):
    """The JSON depth 500: a body nested 1,000 deep made json.loads raise
    RecursionError. Nesting beyond 64 levels is a 400 naming the body."""
    raw = b'{"params": ' + b"[" * depth + b"]" * depth + b"}"
    status, body, _ = api.request(method, path, raw=raw, content_type="application/json")
    assert_error(status, body, "invalid_field", "body")
    assert "nested deeper than 64" in body["error"]["message"]
    assert_still_serving(api)


def test_json_nested_64_deep_is_accepted(api):
    """The depth limit leaves ordinary nesting alone: 63 levels inside the body object pass."""
    args = "[" * 62 + "1" + "]" * 62
    status, body, _ = api.post("/tasks", raw=f'{{"name": "deep", "args": [{args}]}}'.encode(),
                               content_type="application/json")
    assert status == 202, body


@pytest.mark.parametrize("raw", [b'{"name": "n", "args": [NaN]}', b'{"name": "n", "args": [Infinity]}',
                                 b'{"name": "n", "args": [' + b"9" * 5000 + b"]}",
                                 b'{"name": "n", "args": [1e999]}', b'{"name": "n", "kwargs": {"a": -1e999}}'])
def test_json_numbers_python_would_take_but_json_has_not_are_400(api, raw):
    """NaN, Infinity, a number that overflows to it (1e999: was stored
    as infinity) and an integer of 5,000 digits (Python's conversion limit)
    are refused as JSON, not stored to fail later."""
    status, body, _ = api.post("/tasks", raw=raw, content_type="application/json")
    assert_error(status, body, "invalid_field", "body")
    assert_still_serving(api)


SURROGATE = '"\\udc80"'    # JSON's escape for a lone UTF-16 surrogate: valid JSON, not Unicode text


@pytest.mark.parametrize("path,raw", [
    ("/tasks", '{"name": %s}' % SURROGATE),
    ("/tasks", '{"name": "n", "args": [%s]}' % SURROGATE),
    ("/tasks", '{"name": "n", "kwargs": {%s: 1}}' % SURROGATE),
    ("/tasks", '{"name": "n", "key": %s}' % SURROGATE),
    ("/queue", '{"url": "http://127.0.0.1:9/%s"}' % SURROGATE[1:-1]),
    ("/queue", '{"url": "http://127.0.0.1:9/", "headers": {"X-A": %s}}' % SURROGATE),
    ("/tasks/t1/ack", '{"attempt": 1, "result": [%s]}' % SURROGATE),
])
def test_json_with_a_lone_surrogate_is_400_and_nothing_is_stored(api, path, raw):
    """Fault: a client's JSON spells a lone UTF-16 surrogate with an escape
    (found by tests/test_http_fuzz.py). It is valid JSON but not text:
    stored as a task's name or key it would fail every later answer that
    shows it and every log write; packed as arguments or a result it was a
    500. Now a 400 naming the body, and nothing is stored."""
    status, body, _ = api.post(path, raw=raw.encode(), content_type="application/json")
    assert_error(status, body, "invalid_field", "body")
    assert "surrogate" in body["error"]["message"]
    assert_still_serving(api)


@pytest.mark.parametrize("content_type,raw", [
    (FORM + "; charset=utf-7", b"url=http://127.0.0.1:9/+2D0-"),
    (FORM + "; charset=unicode_escape", b"url=http://127.0.0.1:9/\\ud83d"),
    ("application/json; charset=utf-7", b'{"url": "http://127.0.0.1:9/+2D0-"}'),
])
def test_a_charset_that_decodes_to_a_lone_surrogate_is_400(api, content_type, raw):
    """Fault: a body in a charset that can spell a lone UTF-16 surrogate
    (utf-7, unicode_escape), so that a form field -- here a webhook's URL --
    would be stored holding one. A 400 naming the body, nothing stored."""
    status, body, _ = api.post("/queue", raw=raw, content_type=content_type)
    assert_error(status, body, "invalid_field", "body")
    assert "surrogate" in body["error"]["message"]
    assert_still_serving(api)


@pytest.mark.parametrize("path,raw", [
    ("/tasks", '{"name": "n", "args": [%d]}' % 2 ** 64),
    ("/tasks", '{"name": "n", "kwargs": {"a": [%d]}}' % -(2 ** 63 + 1)),
    ("/tasks/t1/ack", '{"attempt": 1, "result": %d}' % 10 ** 30),
])
def test_json_integers_beyond_64_bits_are_400(api, path, raw):
    """Fault: a client sends an integer msgpack cannot carry (found by
    tests/test_http_fuzz.py): packing the task's arguments or the result
    raised OverflowError, a 500. Now a 400 naming the body."""
    status, body, _ = api.post(path, raw=raw.encode(), content_type="application/json")
    assert_error(status, body, "invalid_field", "body")
    assert "64-bit" in body["error"]["message"]
    assert_still_serving(api)


def test_json_integers_at_the_64_bit_bounds_are_accepted(api):
    """The bounds themselves pass: int64's least and uint64's greatest."""
    status, body, _ = api.post("/tasks", {"name": "n", "args": [-(2 ** 63), 2 ** 64 - 1]})
    assert status == 202, body


@pytest.mark.parametrize("chunk", [b"zz\r\nabc\r\n0\r\n\r\n", b"FFFFFFFFFFFFFFFFFFFF\r\n", b"3\r\nabcXY0\r\n\r\n",
                                   b"3;" + b"x" * 9000 + b"\r\n", b"0\r\nbad trailer\x01\r\n\r\n"])
def test_chunk_500_a_bad_chunk_size_is_400(http_node, api, chunk):
    """The chunk 500: a bad chunk size made reading the body raise OSError.
    A body that cannot be read is a 400 in the JSON shape, and the connection
    is closed (the stream is mid-body)."""
    request = (b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunk)
    status, body = raw_exchange(http_node, request)
    assert 400 <= status < 500, (status, body)
    assert b'"error"' in body
    assert_still_serving(api)


def test_a_body_cut_short_is_400(http_node, api):
    """A client that announces 100 bytes, sends 10 and closes its side gets a
    400 (the body cannot be read), not a 500."""
    with socket.create_connection(("127.0.0.1", http_node.config.http_port), timeout=15) as sock:
        sock.sendall(b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert_still_serving(api)


@pytest.mark.parametrize("request_bytes", [
    b"GET\r\n\r\n",
    b"GET / HTTP/7.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: many\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
])  # one header line of 70,000 bytes: 431 (test_http_hostile_streams.py)
def test_malformed_request_line_or_headers_are_400_in_the_json_shape(http_node, api, request_bytes):
    """What the HTTP parser itself refuses (a bad version, a negative or
    non-numeric Content-Length, too many or too
    long headers) is a 400 with the JSON error body, counted as malformed."""
    status, body = raw_exchange(http_node, request_bytes)
    assert status == 400, (status, body)
    assert b'"code":"protocol"' in body
    assert_still_serving(api)
    metrics = api.get("/metrics")[1].decode()
    assert 'miyaq_http_refused_total{reason="malformed"}' in metrics


def test_too_many_query_fields_is_400(api):
    """parse_qs raises ValueError beyond its field limit: a 400 naming the query."""
    status, body, _ = api.get("/tasks?" + "&".join("f" * 1500))
    assert_error(status, body, "invalid_field", "query")


def test_a_request_line_over_8_kib_is_414_in_the_json_shape(http_node, api):
    """A request line longer than the parser takes is a 414 with the JSON error body."""
    status, body = raw_exchange(http_node, b"GET /tasks?" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert status == 414 and b'"code":"too_large"' in body, (status, body)
    assert_still_serving(api)


@pytest.mark.parametrize("path", ["/tasks/%FF%FE", "/tasks/%00", "/queues/%0d%0a/limits", "/tasks/" + "a" * 5000,
                                  "/queue/..%2f..", "/tasks/%C0%AF/ack"])
def test_path_parameters_with_odd_bytes_are_4xx(api, path):
    """Path parameters are percent-decoded: control bytes, invalid UTF-8 and
    overlong values are refused by the id and queue checks, never a 500."""
    for method in ("GET", "POST", "PUT", "DELETE"):
        status, body, _ = api.request(method, path, raw=b"{}", content_type="application/json")
        assert 400 <= status < 500, (method, path, status, body)
    assert_still_serving(api)


def test_random_garbage_requests_never_answer_500(http_node, api):
    """A seeded generator of broken requests (request lines, headers,
    content types, bodies) over every endpoint: every answer is below 500 and
    the node serves afterwards."""
    rng = random.Random(9)
    paths = ["/queue", "/queue/q", "/tasks", "/tasks/x", "/tasks/x/result?timeout=abc", "/receive", "/dead/retry",
             "/queues/q/limits", "/tasks?limit=-1&state=%ff", "/ui/login", "/nope"]
    types = ["application/json", FORM, "application/json; charset=zlib", "text/plain", "", "*/*;;;=",
             "application/json; charset=\"utf-16\"", "application/vnd.x+json; charset=idna"]
    pieces = [b"{", b"}", b"[", b"]", b'"', b"\\u", b"\xff", b"\x00", b"%", b"&", b"=", b"task.url=", b"1e999",
              b"NaN", b"null", b'{"url":', b'"http://h"', b",", b":"]
    for _ in range(300):
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "BREW"])
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))
        status, answer, _ = api.request(method, rng.choice(paths), raw=body, content_type=rng.choice(types))
        assert status < 500, (status, answer)
    assert_still_serving(api)
