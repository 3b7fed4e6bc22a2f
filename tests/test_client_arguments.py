"""A caller's bad arguments -- timeouts, the node to ask, a client's options
-- fail in the caller, naming the argument, before anything is sent: the
sync, gevent-free threaded client and the asyncio client alike."""
from __future__ import annotations

import asyncio
import math

import pytest

import miyaq
import miyaq.aio
from miyaq.client.arguments import client_options, seconds
from miyaq.client.nodes import Nodes

BAD_TIMEOUTS = [(-1, ValueError), (-0.001, ValueError), (math.nan, ValueError),
                ("5", TypeError), (True, TypeError), ([1], TypeError)]


@pytest.mark.parametrize("value,error", BAD_TIMEOUTS + [(None, TypeError), (math.inf, ValueError)])
def test_a_required_timeout_must_be_a_finite_number_of_seconds(value, error):
    with pytest.raises(error, match="^wait "):
        seconds(value, "wait")


@pytest.mark.parametrize("value,error", BAD_TIMEOUTS)
def test_an_optional_timeout_must_be_none_or_a_number_of_seconds(value, error):
    with pytest.raises(error, match="^wait "):
        seconds(value, "wait", optional=True)


def test_good_timeouts_are_seconds_and_infinity_means_no_bound_where_none_does():
    assert seconds(0, "wait") == 0.0 and isinstance(seconds(3, "wait"), float)
    assert seconds(2.5, "wait") == 2.5
    assert seconds(None, "wait", optional=True) is None
    assert seconds(math.inf, "wait", optional=True) is None


@pytest.mark.parametrize("options,named", [
    (dict(window=0), "window"), (dict(window=2.5), "window"), (dict(max_batch=0), "max_batch"),
    (dict(max_batch=4097), "max_batch"),
    (dict(submit_timeout=0), "submit_timeout"), (dict(ack_timeout=math.nan), "ack_timeout"),
    (dict(request_timeout=-1), "request_timeout"), (dict(request_timeout=math.inf), "request_timeout"),
    (dict(submit_timeout="30"), "submit_timeout"),
    (dict(heartbeat_timeout=0.1), "heartbeat_timeout"), (dict(heartbeat_timeout=3601), "heartbeat_timeout"),
    (dict(heartbeat_timeout=math.nan), "heartbeat_timeout"), (dict(heartbeat_timeout=True), "heartbeat_timeout"),
])
def test_a_clients_bad_option_is_a_config_error_naming_it(options, named):
    given = dict(window=10, submit_timeout=30.0, ack_timeout=5.0, request_timeout=10.0, max_batch=512,
                 heartbeat_timeout=10.0)
    given.update(options)
    with pytest.raises(miyaq.ConfigError, match=f"^{named} must be"):
        client_options(**given)
    with pytest.raises(miyaq.ConfigError, match=f"^{named} must be"):
        miyaq.Client("tcp://127.0.0.1:1", **options)
    with pytest.raises(miyaq.ConfigError, match=f"^{named} must be"):
        miyaq.aio.Client("tcp://127.0.0.1:1", **options)


def test_a_node_the_client_does_not_know_is_an_error_not_the_first_node():
    nodes = Nodes(["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"])
    assert nodes.index(None) == 0
    assert nodes.index(1) == 1
    assert nodes.index("tcp://127.0.0.1:7002") == 1
    for unknown in (2, -1, "tcp://127.0.0.1:7003"):
        with pytest.raises(ValueError, match=r"is not one this client knows \(it knows tcp://127.0.0.1:7001, "):
            nodes.index(unknown)
    for wrong in (True, 1.0, b"tcp://127.0.0.1:7001"):
        with pytest.raises(TypeError, match="^node must be"):
            nodes.index(wrong)


def test_bad_arguments_against_a_real_node_fail_at_once_and_send_nothing(node):
    """Fault: a caller's mistakes. Before: ``result(timeout=nan)`` waited for
    ever, ``status(node=<unknown>)`` answered with the first node's status as
    if it were the one named, ``call(timeout=-1)`` submitted the task and then
    failed with the node's InvalidField, ``request(timeout=-5)`` raised the
    threading module's "timeout value must be positive"."""
    with miyaq.Client(node.endpoint, request_timeout=5, submit_timeout=5) as client:
        held = client.submit("echo", [1], wait=True)
        with pytest.raises(ValueError, match="^timeout must be at least 0 seconds, not nan"):
            client.result(held.id, timeout=math.nan)
        with pytest.raises(ValueError, match="^timeout must be at least 0 seconds, not nan"):
            held.result(timeout=math.nan)
        with pytest.raises(ValueError, match="^timeout must be at least 0 seconds, not -5"):
            client.request(b"STATUS", {}, timeout=-5)
        with pytest.raises(ValueError, match="not one this client knows"):
            client.status(node="tcp://127.0.0.1:1")
        with pytest.raises(ValueError, match="not one this client knows"):
            client.status(held.id, node=7)
        with pytest.raises(ValueError, match="^timeout must be at least 0 seconds, not -1"):
            client.call("echo", [2], timeout=-1)
        with pytest.raises(TypeError, match="^timeout must be a number of seconds, not str"):
            client.receive("default", timeout="1")
        with pytest.raises(ValueError, match="^timeout must be at least 0 seconds"):
            client.flush(timeout=-1)
        assert client.status()["totals"]["live"] == 1          # the call above submitted nothing
        assert client.status(node=node.endpoint)["node"] == client.status(node=0)["node"]


def test_bad_arguments_to_the_asyncio_client_fail_at_once_and_send_nothing(node):
    async def main() -> int:
        async with miyaq.aio.Client(node.endpoint, request_timeout=5, submit_timeout=5) as client:
            held = await client.submit("echo", [1], wait=True)
            with pytest.raises(ValueError, match="^timeout must be at least 0 seconds, not nan"):
                await client.result(held.id, timeout=math.nan)
            with pytest.raises(ValueError, match="^timeout must be at least 0 seconds, not nan"):
                await held.wait_accepted(math.nan)
            with pytest.raises(ValueError, match="^timeout must be at least 0 seconds, not -5"):
                await client.request(b"STATUS", {}, timeout=-5)
            with pytest.raises(ValueError, match="not one this client knows"):
                await client.status(node="tcp://127.0.0.1:1")
            with pytest.raises(ValueError, match="^timeout must be at least 0 seconds, not -1"):
                await client.call("echo", [2], timeout=-1)
            with pytest.raises(ValueError, match="^timeout must be at least 0 seconds"):
                await client.receive("default", timeout=-1)
            return (await client.status())["totals"]["live"]

    assert asyncio.run(asyncio.wait_for(main(), 60)) == 1


@pytest.mark.parametrize("flavour", ["threads", "gevent", "asyncio"])
def test_heartbeat_timeout_sets_each_connections_zmtp_heartbeats(flavour):
    """``heartbeat_timeout`` reaches every connection of every client flavour:
    a PING every fifth of it, the connection dropped after it (the default,
    10 s, is what clients had before it was an option), and a connect
    attempt given up after it. Fault (the last): a connect begun while a
    partition cut the node off waited on the kernel's SYN backoff, and
    crossed up to about the partition's length after its heal
    (docs/operations.md, "After a partition heals")."""
    import asyncio

    import zmq
    endpoints = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]
    if flavour == "asyncio":
        clients: list = [miyaq.aio.Client(endpoints, heartbeat_timeout=2.5), miyaq.aio.Client(endpoints)]
    else:
        clients = [miyaq.Client(endpoints, heartbeat_timeout=2.5, green=flavour == "gevent"),
                   miyaq.Client(endpoints, green=flavour == "gevent")]
    socks = [c._io.socks for c in clients]
    try:
        for sockets, (ping, timeout) in zip(socks, [(500, 2500), (2000, 10000)]):
            assert [(s.getsockopt(zmq.HEARTBEAT_IVL), s.getsockopt(zmq.HEARTBEAT_TIMEOUT),
                     s.getsockopt(zmq.CONNECT_TIMEOUT)) for s in sockets] == [(ping, timeout, timeout)] * 2
    finally:
        for client in clients:
            if flavour == "asyncio":
                asyncio.run(client.close(flush=False))
            else:
                client.close()
