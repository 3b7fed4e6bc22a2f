"""Values the client cannot put on the wire -- above all a string holding a
lone surrogate, what ``os.fsdecode()`` and ``errors="surrogateescape"`` make
of bytes that are not UTF-8 (a file name, an environment variable) -- fail
in the caller with a TypeError naming the field, nothing sent, in the
threaded, gevent and asyncio clients alike; and a message that reaches the
I/O loop unencodable all the same fails only its own calls."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

import miyaq
import miyaq.aio
from miyaq.client import client as client_module
from miyaq.client.arguments import split_endpoints
from miyaq.client import wire
from miyaq.aio import client as aio_client_module

BAD = b"caf\xe9".decode("utf-8", "surrogateescape")      # 'caf\udce9'
KITS = pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])


def run(main: Callable[[], Awaitable[Any]], limit: float = 60.0) -> Any:
    """Run a coroutine in a fresh event loop, bounded so a hang fails the test."""
    return asyncio.run(asyncio.wait_for(main(), limit))


#: A submit with a lone surrogate in one field, by the field it names.
SURROGATE_SUBMITS: dict[str, Callable[[Any], Any]] = {
    "id": lambda c: c.submit("echo", [1], id="order-" + BAD),
    "name": lambda c: c.submit("echo-" + BAD, [1]),
    "queue": lambda c: c.submit("echo", [1], queue=BAD),
    "key": lambda c: c.submit("echo", [1], key=BAD),
    "eta": lambda c: c.submit("echo", [1], eta=BAD),
    "countdown": lambda c: c.submit("echo", [1], countdown=BAD),
    "ttl": lambda c: c.submit("echo", [1], ttl=BAD),
    "timeout": lambda c: c.submit("echo", [1], timeout=BAD),
    "at_most_once": lambda c: c.submit("echo", [1], at_most_once=BAD),
    "offset": lambda c: c.submit("echo", [1], offset=BAD),
    "url": lambda c: c.submit_url("http://example.com/" + BAD),
    "method": lambda c: c.submit_url("http://example.com/hook", method=BAD),
    "headers": lambda c: c.submit_url("http://example.com/hook", headers={"X-Name": BAD}),
}


@KITS
@pytest.mark.parametrize("field", sorted(SURROGATE_SUBMITS))
def test_a_lone_surrogate_in_a_submit_is_a_type_error_naming_the_field_and_the_client_works_on(
        node, client_for, green, field):
    """Fault: a submit with a lone surrogate in a string field (an id or key
    built from a file name). Before, an idle threaded client raised
    UnicodeEncodeError naming nothing; with other submits in flight
    ``submit()`` returned and the I/O loop died encoding the batch -- every
    submit in flight failed and every later call raised "the client was
    closed" (a gevent client: always; in a gevent worker, every handler's
    ``app.client``). Now TypeError naming the field, idle or busy, nothing
    queued: the other submits are accepted and the client works on."""
    client = client_for(node.endpoint, submit_timeout=60.0, green=green)
    client.status()
    with pytest.raises(TypeError, match=f"field '{field}' .*lone surrogate"):
        SURROGATE_SUBMITS[field](client)                   # idle: the caller would send it itself
    others = [client.submit("echo", [i]) for i in range(200)]
    with pytest.raises(TypeError, match=f"field '{field}' .*lone surrogate"):
        SURROGATE_SUBMITS[field](client)                   # busy: the I/O loop would send it in a batch
    client.flush(timeout=30)
    assert all(h.accepted for h in others)
    assert client.submit("echo", ["after"], wait=True).accepted
    assert client.status()["totals"]["live"] == 201
    assert client._io.in_flight == 0


@KITS
def test_call_with_a_lone_surrogate_raises_at_once_instead_of_waiting(node, client_for, green):
    """Fault: ``call(..., queue=name_from_disk, timeout=1)`` on a gevent
    client was still waiting after 40 s (its I/O loop had died); a threaded
    one raised UnicodeEncodeError. Now TypeError naming the field, at once."""
    client = client_for(node.endpoint, green=green)
    with pytest.raises(TypeError, match="field 'queue'"):
        client.call("echo", [1], queue=BAD, timeout=1)
    with pytest.raises(TypeError, match="field 'id'"):
        client.call("echo", [1], id=BAD, timeout=1)
    assert client.status()["totals"]["live"] == 0


#: A request with a lone surrogate (or a body not a dict), by the field it names.
SURROGATE_REQUESTS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "status": ("id", lambda c: c.status(BAD)),
    "cancel": ("id", lambda c: c.cancel(BAD)),
    "result": ("id", lambda c: c.result(BAD, timeout=1)),
    "tasks": ("queue", lambda c: c.tasks(queue=BAD)),
    "dead": ("op", lambda c: c.dead(op=BAD)),
    "dead-ids": ("ids", lambda c: c.dead("retry", ids=[BAD])),
    "receive": ("queues", lambda c: c.receive([BAD])),
    "request": ("x", lambda c: c.request(b"STATUS", {"x": BAD})),
    "request-key": ("caf", lambda c: c.request(b"STATUS", {BAD: 1})),
}


@KITS
@pytest.mark.parametrize("what", sorted(SURROGATE_REQUESTS))
def test_a_lone_surrogate_in_a_request_is_a_type_error_naming_the_field_and_the_client_works_on(
        node, client_for, green, what):
    """Fault: a status, cancel, result, tasks, dead-letter or receive call
    (or a raw request) with a lone surrogate in a string. Before, the
    threaded client raised UnicodeEncodeError naming nothing, and a gevent
    client's I/O loop died of it: every later call of the client failed.
    Now TypeError naming the field; the client works on."""
    field, call = SURROGATE_REQUESTS[what]
    client = client_for(node.endpoint, request_timeout=5.0, green=green)
    client.status()
    with pytest.raises(TypeError, match=f"field '{field}"):
        call(client)
    assert client.status()["totals"]["live"] == 0


@KITS
def test_a_request_body_that_is_not_a_dict_is_a_type_error(node, client_for, green):
    """Bad input: ``client.request(b"STATUS", None)`` raised AttributeError
    ('NoneType' object has no attribute 'values'). Now TypeError saying so."""
    client = client_for(node.endpoint, green=green)
    for body in (None, [1], "x"):
        with pytest.raises(TypeError, match="body must be a dict"):
            client.request(b"STATUS", body)
    assert client.status()["totals"]["live"] == 0


def test_the_asyncio_client_raises_a_type_error_naming_the_field(node):
    """Fault: the asyncio client raised msgpack's UnicodeEncodeError, naming
    nothing, for a lone surrogate in a submit or a request. Now TypeError
    naming the field, nothing sent; the client works on."""
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint, submit_timeout=30.0) as client:
            others = [await client.submit("echo", [i]) for i in range(200)]
            for field, call in [("queue", client.submit("echo", [1], queue=BAD)),
                                ("id", client.submit("echo", [1], id=BAD)),
                                ("headers", client.submit_url("http://example.com/hook", headers={"X": BAD})),
                                ("id", client.status(BAD)),
                                ("queue", client.tasks(queue=BAD))]:
                with pytest.raises(TypeError, match=f"field '{field}' .*msgpack cannot encode"):
                    await call
            with pytest.raises(TypeError, match="body must be a dict"):
                await client.request(b"STATUS", None)   # type: ignore[arg-type]
            await client.flush(timeout=30)
            assert all(h.accepted for h in others)
            assert (await client.status())["totals"]["live"] == 200

    run(main)


# -- the I/O loop's own defence ----------------------------------------------------------

@pytest.fixture
def unchecked(monkeypatch):
    """The callers' checks switched off: an unencodable value reaches the I/O
    loop (as one changed after the call returned, or a check missing, would)."""
    monkeypatch.setattr(wire, "encodable", lambda fields, what="task": None)
    monkeypatch.setattr(wire, "check_option_values", lambda fields: None)
    monkeypatch.setattr(client_module, "check_request", lambda command, body: None)
    monkeypatch.setattr(aio_client_module, "check_request", lambda command, body: None)


@KITS
def test_a_submit_the_io_loop_cannot_encode_fails_alone_and_the_loop_goes_on(node, client_for, green, unchecked):
    """Fault: a submit msgpack cannot encode reaches the I/O loop, batched
    with others (the callers' checks forced off). Before, the loop died
    encoding the batch ("miyaq client I/O loop failed"): every submit in
    flight failed and every later call raised "the client was closed". Now
    only that submit fails, with InvalidField naming its field; the others
    of its batch are sent, and the client works on."""
    client = client_for(node.endpoint, submit_timeout=60.0, green=green)
    client.status()
    before = [client.submit("echo", [i]) for i in range(200)]
    bad = client.submit("echo", [1], queue=BAD)
    after = [client.submit("echo", [i]) for i in range(200)]
    with pytest.raises(miyaq.InvalidField, match="field 'queue'") as raised:
        bad.wait_accepted(30)
    assert raised.value.details["field"] == "queue"
    client.flush(timeout=30)
    assert all(h.accepted for h in before + after)
    with pytest.raises(miyaq.InvalidField, match="field 'queue'"):
        client.submit("echo", [1], queue=BAD, wait=True)     # idle: the short path, from the caller
    assert client.submit("echo", ["after"], wait=True).accepted
    assert client.status()["totals"]["live"] == 401
    assert client._io.in_flight == 0


@KITS
def test_a_request_the_io_loop_cannot_encode_fails_alone_and_the_loop_goes_on(node, client_for, green, unchecked):
    """Fault: a request msgpack cannot encode reaches the I/O loop (the
    caller's check forced off). Before, the gevent client's loop died of it
    and the threaded one's caller got UnicodeEncodeError. Now that request
    fails with InvalidField naming the field; the client works on."""
    client = client_for(node.endpoint, request_timeout=5.0, green=green)
    handles = [client.submit("echo", [i]) for i in range(50)]
    for _ in range(2):
        with pytest.raises(miyaq.InvalidField, match="field 'id'"):
            client.status(BAD)
        with pytest.raises(miyaq.InvalidField, match="field 'x'"):
            client.request(b"STATUS", {"x": {1, 2}})
    client.flush(timeout=30)
    assert all(h.accepted for h in handles)
    assert client.status()["totals"]["live"] == 50


def test_the_asyncio_loop_survives_a_message_it_cannot_encode(node, unchecked):
    """Fault: as above, for the asyncio client's driver: a submit and a
    request msgpack cannot encode reach it. Only their calls fail
    (InvalidField naming the field); the others go on."""
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint, submit_timeout=30.0, request_timeout=5.0) as client:
            before = [await client.submit("echo", [i]) for i in range(100)]
            bad = await client.submit("echo", [1], key=BAD)
            after = [await client.submit("echo", [i]) for i in range(100)]
            with pytest.raises(miyaq.InvalidField, match="field 'key'"):
                await bad.wait_accepted(30)
            with pytest.raises(miyaq.InvalidField, match="field 'id'"):
                await client.status(BAD)
            await client.flush(timeout=30)
            assert all(h.accepted for h in before + after)
            assert (await client.status())["totals"]["live"] == 200

    run(main)


# -- results -------------------------------------------------------------------------------

def _recursive() -> list:
    loop: list = []
    loop.append(loop)
    return loop


BAD_RESULTS = {
    "int-past-64-bits": lambda: 10 ** 30,
    "list-that-contains-itself": _recursive,
    "lone-surrogate": lambda: BAD,
    "set": lambda: {1, 2},
}


@pytest.mark.parametrize("what", sorted(BAD_RESULTS))
def test_ack_with_a_result_msgpack_cannot_encode_is_a_type_error_and_the_task_is_still_held(node, client_for, what):
    """Bad input: ``Received.ack(result)`` let msgpack's own errors out --
    OverflowError, ValueError, UnicodeEncodeError, TypeError 'can not
    serialize' -- where the docs promise TypeError (``nack`` and ``submit``
    wrap them). Now TypeError naming the result; nothing sent, the task
    still held: a good ack after it succeeds."""
    client = client_for(node.endpoint)
    client.submit("echo", [1], queue="jobs", wait=True)
    job = client.receive("jobs", timeout=5)
    assert job is not None
    with pytest.raises(TypeError, match="^a result msgpack cannot encode"):
        job.ack(BAD_RESULTS[what]())
    assert job.ack("fine") is True


def test_the_asyncio_ack_with_a_result_msgpack_cannot_encode_is_a_type_error(node):
    """Bad input: as above, for ``miyaq.aio``'s ``Received.ack``."""
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint) as client:
            await client.submit("echo", [1], queue="jobs", wait=True)
            job = await client.receive("jobs", timeout=5)
            assert job is not None
            for make in BAD_RESULTS.values():
                with pytest.raises(TypeError, match="^a result msgpack cannot encode"):
                    await job.ack(make())
            assert await job.ack("fine") is True

    run(main)


# -- endpoints -----------------------------------------------------------------------------

BAD_ENDPOINTS = {
    "list-of-ints": [1, 2],
    "bytes": b"tcp://127.0.0.1:7450",
    "set-of-ints": {1, 2},
    "int": 5,
    "list-holding-none": ["tcp://127.0.0.1:7450", None],
}


@pytest.mark.parametrize("what", sorted(BAD_ENDPOINTS))
def test_endpoints_of_the_wrong_type_are_a_config_error_for_every_constructor(what):
    """Bad input: ``Client([1, 2])``, ``Client(b"tcp://...")``, ``Client({1, 2})``
    raised AttributeError ('int' object has no attribute 'startswith'),
    ``App([1, 2])`` AttributeError ('split'), ``Client(5)`` TypeError (not
    iterable). Now ConfigError saying what endpoints must be, from
    ``miyaq.Client``, ``miyaq.App`` and ``miyaq.aio.Client`` alike."""
    endpoints = BAD_ENDPOINTS[what]
    for make in (miyaq.Client, miyaq.App, miyaq.aio.Client):
        with pytest.raises(miyaq.ConfigError, match="^endpoints must be a string or a list of strings, not "):
            make(endpoints)


def test_an_endpoint_with_a_lone_surrogate_is_a_config_error():
    """Bad input: ``Client("tcp://caf\\udce9:7450")`` (an endpoint read from
    a file) raised UnicodeEncodeError naming nothing. Now ConfigError naming
    the endpoint (escaped)."""
    for make in (miyaq.Client, miyaq.App, miyaq.aio.Client):
        with pytest.raises(miyaq.ConfigError, match=r"endpoint 'tcp://caf\\udce9:7450' holds a lone surrogate"):
            make(f"tcp://{BAD}:7450")


def test_endpoints_given_as_strings_still_split_on_commas():
    """The accepted forms stay -- a comma-separated string, a list of strings,
    any iterable of them -- and a list's strings may now hold several,
    comma-separated, as ``App``'s always could (``Client(["a,b"])`` dialled
    one endpoint ``"a,b"`` before)."""
    assert split_endpoints(" tcp://a:1, tcp://b:2 ") == ["tcp://a:1", "tcp://b:2"]
    assert split_endpoints(["tcp://a:1", "tcp://b:2,tcp://c:3"]) == [
        "tcp://a:1", "tcp://b:2", "tcp://c:3"]
    assert split_endpoints(e for e in ("tcp://a:1",)) == ["tcp://a:1"]
    with pytest.raises(miyaq.ConfigError, match="at least one node endpoint"):
        split_endpoints([])


@KITS
def test_a_request_no_node_answers_is_refused_at_once_naming_the_command(node, client_for, green):
    """Bad input: ``client.request(b"NOPE", {})`` (or SUBMIT, or a worker's
    command) -- a node answers it with an ERROR naming no request, so the
    call waited its whole ``request_timeout`` and raised Timeout (review30).
    Now UnknownCommand at once, nothing sent; the client works on."""
    client = client_for(node.endpoint, request_timeout=30.0, green=green)
    for command in (b"NOPE", b"SUBMIT", b"READY", b""):
        with pytest.raises(miyaq.UnknownCommand, match=r"is not a request a node answers \(one of ACK, CANCEL"):
            client.request(command, {})
    assert client.request(b"TASKS", {"limit": 1})["tasks"] == []
    assert client.status()["totals"]["live"] == 0


def test_the_asyncio_client_refuses_a_request_no_node_answers(node):
    """The same in the asyncio client."""
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint, request_timeout=30.0) as client:
            with pytest.raises(miyaq.UnknownCommand, match="is not a request a node answers"):
                await client.request(b"NOPE", {})
            assert (await client.status())["totals"]["live"] == 0

    run(main)


#: Every command python-api.md names as one ``request()`` sends.
DOCUMENTED_REQUESTS = (b"STATUS", b"TASK", b"CANCEL", b"RESULT", b"TASKS", b"DEAD", b"RECEIVE", b"ACK", b"NACK",
                       b"RING", b"TOUCH")


def test_every_request_the_docs_name_reaches_the_node_and_is_answered(node, client_for):
    """Fault guarded against: a command dropped from the client's list of
    requests (``REQUEST_COMMANDS``; mutation: without TOUCH every test
    passed) -- a pull consumer's own ``request(b"TOUCH", ...)``, which
    python-api.md and protocol.md 6.4 describe, would raise UnknownCommand
    without reaching its node. Each documented command is sent with an
    empty or made-up body and answered by the node: a REPLY, or the node's
    error naming the request -- never UnknownCommand, never a Timeout."""
    client = client_for(node.endpoint, request_timeout=10.0)
    bodies = {b"RECEIVE": {"queues": ["nothing-here"], "timeout": 0}, b"RESULT": {"id": "no-such-task", "timeout": 0}}
    for command in DOCUMENTED_REQUESTS:
        try:
            client.request(command, dict(bodies.get(command, {"ids": ["no-such-task"], "attempt": 1})))
        except (miyaq.UnknownCommand, miyaq.Timeout) as err:
            pytest.fail(f"{command!r}: {type(err).__name__}: {err}")
        except miyaq.MiyaqError:
            pass          # the node's answer to a made-up body: it heard the request
