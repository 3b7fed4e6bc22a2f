"""A Python pull consumer extends its lease: ``Received.touch()`` on the
threaded and the asyncio client (a TOUCH with ``req``, docs/protocol.md
section 6.4), True while the attempt it received holds the task and False,
as ``ack``'s, once it does not. Each fault test's docstring names the fault.

A lease runs out either for real (the smallest task ``timeout`` the node
accepts, 0.01 s, and a bounded wait for the node to take the task back) or,
where a lease must run out and a touched one must not, by firing the node's
timers as if the clock said a given time: no test depends on how soon a
consumer gets to touch.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import msgpack
import pytest
import zmq
from gateway_harness import FIXTURES, NodeThread

import miyaq
import miyaq.aio
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

pytestmark = pytest.mark.timeout(60)

#: The smallest task timeout (lease) a node accepts: a lease that runs out at once.
SMALLEST_TIMEOUT = 0.01


def run(main: Callable[[], Awaitable[Any]], limit: float = 60.0) -> Any:
    """Run a coroutine in a fresh event loop, bounded so a hang fails the test."""
    return asyncio.run(asyncio.wait_for(main(), limit))


def endpoint_of(node: NodeThread) -> str:
    return f"tcp://127.0.0.1:{node.config.port}"


def fire_timers_at(node: NodeThread, when: float) -> None:
    """Fire the node's timers, in its thread, as if the wall clock said
    ``when``: a lease that ends before then runs out, a later one does not
    (no test waits for a real timeout)."""
    engine = node.node.core.engine   # type: ignore[union-attr]
    node.call(lambda: engine.fire_due(when))


def run_out_leases(node: NodeThread) -> None:
    """Make every lease on the node run out now: its timers fire as if 400 s
    had passed (the tasks' timeout is 300 s)."""
    fire_timers_at(node, time.time() + 400)


def test_a_pull_consumer_that_touches_keeps_its_task_past_the_timeout(make_http_node):
    """Fault: a Python pull consumer whose work outlasted the task's
    ``timeout`` could not extend its lease (``Received`` had ``ack`` and
    ``nack`` only): at the timeout the node took the task back and leased it
    to the next consumer, and the work ran twice. Now the consumer touches:
    once the node's timers fire past the original lease end (and before
    the touched one), the task is still its attempt 1, running, another
    consumer receives nothing, and its ack succeeds."""
    node = make_http_node()
    with miyaq.Client(endpoint_of(node), submit_timeout=10.0) as consumer, \
            miyaq.Client(endpoint_of(node), submit_timeout=10.0) as other:
        consumer.submit("render", ["film"], queue="long", timeout=300, max_retries=3, wait=True)
        job = consumer.receive("long", timeout=10)
        assert job is not None and job.attempt == 1
        first_end = job.info["lease_end"]
        wait_for(lambda: time.time() > first_end - 300 + 0.05, what="the clock to move past the receive")
        assert job.touch() is True
        touched_end = consumer.status(job.id)["lease_end"]
        assert touched_end > first_end
        fire_timers_at(node, (first_end + touched_end) / 2)     # past the timeout the lease is still attempt 1's

        assert other.receive("long", timeout=0) is None
        task = consumer.status(job.id)
        assert (task["state"], task["attempt"], task["lease_end"]) == ("running", 1, touched_end)
        assert job.touch() is True
        assert job.ack("rendered") is True
        assert consumer.result(job.id, timeout=10) == "rendered"
        assert consumer.status(job.id)["attempt"] == 1    # never leased a second time


def test_a_touch_after_the_lease_ran_out_is_false_and_changes_nothing(node, client_for):
    """Fault: a consumer touches a task whose lease ran out (the node took
    it back): the touch must say the work is no longer its own (False), not
    raise, and must not revive the lease -- the task stays where the node
    put it, dead-lettered here (no retries left)."""
    client = client_for(node.endpoint)
    client.submit("render", [], queue="lapsed", timeout=SMALLEST_TIMEOUT, max_retries=0, wait=True)
    job = client.receive("lapsed", timeout=10)
    assert job is not None
    wait_for(lambda: client.status(job.id)["state"] == "dead", what="the lease to run out")
    assert job.touch() is False
    assert client.status(job.id)["state"] == "dead"
    assert job.ack("late") is True         # ACK's rule, unchanged: the work did run (docs/protocol.md 6.2)


def test_a_touch_of_a_lease_received_by_another_consumer_is_false(node, client_for):
    """Fault: a consumer touches a task another consumer received (a
    ``Received`` built from that one's task map): the node must not extend a
    lease that is not the caller's. False, the receiver's ``lease_end`` as it
    was; the receiver's own touch is True."""
    receiver, stranger = client_for(node.endpoint), client_for(node.endpoint)
    receiver.submit("render", [], queue="theirs", timeout=300, wait=True)
    job = receiver.receive("theirs", timeout=10)
    assert job is not None
    leased_until = receiver.status(job.id)["lease_end"]
    assert miyaq.Received(stranger, job.info).touch() is False
    assert receiver.status(job.id)["lease_end"] == leased_until
    assert receiver.status()["ignored"]["not_leased"] == 1
    assert job.touch() is True
    assert receiver.status(job.id)["lease_end"] >= leased_until


def test_a_touch_from_an_attempt_whose_lease_ran_out_does_not_extend_the_next(make_http_node):
    """Fault: the same client receives attempt 1, stalls past its lease,
    then receives the task again as attempt 2 (the same connection: the
    same pull consumer to the node). Attempt 1's ``touch()`` must not extend
    attempt 2's lease -- the node checks the attempt the touch names, as the
    HTTP touch does. False; attempt 2's touch is True."""
    node = make_http_node()
    with miyaq.Client(endpoint_of(node), submit_timeout=10.0) as client:
        client.submit("render", [], queue="again", timeout=300, max_retries=3, wait=True)
        first = client.receive("again", timeout=10)
        assert first is not None and first.attempt == 1
        run_out_leases(node)
        second = client.receive("again", timeout=10)
        assert second is not None and (second.id, second.attempt) == (first.id, 2)
        assert first.touch() is False
        assert client.status(second.id)["lease_end"] == second.info["lease_end"]
        assert second.touch() is True


def test_a_touch_of_a_finished_or_cancelled_task_is_false(node, client_for):
    """Fault: a touch after the task was acked, or cancelled while the
    consumer worked on it: False (the task is not running), never an error."""
    client = client_for(node.endpoint)
    client.submit("render", [], queue="over", timeout=300, wait=True)
    client.submit("render", [], queue="over", timeout=300, wait=True)
    acked = client.receive("over", timeout=10)
    cancelled = client.receive("over", timeout=10)
    assert acked is not None and cancelled is not None
    assert acked.ack("done") is True
    assert acked.touch() is False
    assert client.cancel(cancelled.id) is True
    assert cancelled.touch() is False


@pytest.mark.parametrize("body,field", [
    ({"ids": ["a", "b"], "attempt": 1}, "ids"),
    ({"ids": [], "attempt": 1}, "ids"),
    ({"ids": ["{id}"], "attempt": "1"}, "attempt"),
    ({"ids": ["{id}"], "attempt": -1}, "attempt"),
], ids=["two-ids", "no-id", "attempt-text", "attempt-negative"])
def test_a_malformed_touch_request_is_refused_and_extends_nothing(node, client_for, body, field):
    """Fault: a TOUCH request (with ``req``) that names other than one task,
    or an attempt that is no attempt: ERROR ``invalid_field`` naming the
    field, and the lease stays as it was."""
    client = client_for(node.endpoint)
    client.submit("render", [], queue="bad", timeout=300, wait=True)
    job = client.receive("bad", timeout=10)
    assert job is not None
    leased_until = client.status(job.id)["lease_end"]
    body = {**body, "ids": [job.id if i == "{id}" else i for i in body["ids"]]}
    with pytest.raises(miyaq.InvalidField) as refused:
        client.request(c.TOUCH, body)
    assert refused.value.details["field"] == field
    assert client.status(job.id)["lease_end"] == leased_until


def test_a_touch_request_is_answered_and_never_told_reconnect(node, ctx):
    """Fault: the node answered a pull consumer's TOUCH with RECONNECT (it is
    no registered worker) -- a command the clients do not know, logged as
    a malformed reply at every touch. A TOUCH with ``req`` is a request:
    its REPLY, and nothing else, comes before the answer of the request
    sent after it."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.endpoint)
    try:
        def send(command: bytes, body: dict[str, Any]) -> None:
            sock.send_multipart([c.TAG, command, msgpack.packb(body, use_bin_type=True)])

        def answers_until(last: Callable[[bytes, dict[str, Any]], bool]) -> list[tuple[bytes, dict[str, Any]]]:
            seen = []
            while True:
                assert sock.poll(10_000), "no answer from the node"
                _, command, body = sock.recv_multipart()
                answer = msgpack.unpackb(body, raw=False)
                seen.append((command, answer))
                if last(command, answer):
                    return seen

        def answer_to(req: int) -> Callable[[bytes, dict[str, Any]], bool]:
            return lambda command, answer: answer.get("req") == req

        send(c.SUBMIT, {"tasks": [{"id": "wire-touch", "name": "render", "queue": "wire", "timeout": 300}]})
        assert answers_until(lambda command, _: command == c.SUBMITTED)[-1][1]["results"][0][1] == c.ACCEPTED
        send(c.RECEIVE, {"req": 1, "queues": ["wire"], "timeout": 10})
        task = answers_until(answer_to(1))[-1][1]["task"]
        assert task["id"] == "wire-touch"
        send(c.TOUCH, {"req": 2, "ids": ["wire-touch"], "attempt": task["attempt"]})
        send(c.STATUS, {"req": 3})
        seen = answers_until(answer_to(3))
        assert [command for command, _ in seen] == [c.REPLY, c.REPLY]
        touched = seen[0][1]
        assert touched["req"] == 2 and touched["ok"] is True and touched["lease_end"] >= task["lease_end"]
    finally:
        sock.close()


def test_asyncio_touch_keeps_the_lease_past_the_timeout_and_is_false_once_it_is_gone(make_http_node):
    """Fault: as for the threaded client, ``miyaq.aio.Received`` had no
    ``touch()``: an asyncio pull consumer whose work outlasted the task's
    timeout had it leased again and run twice. Now its touch keeps the task
    past the timeout (the node's timers fired past the original lease end:
    another consumer receives nothing, the ack succeeds in attempt 1), and
    a touch after the lease ran out is False."""
    node = make_http_node()
    endpoint = endpoint_of(node)

    async def main() -> None:
        async with miyaq.aio.Client(endpoint) as consumer, miyaq.aio.Client(endpoint) as other:
            await consumer.submit("render", [], queue="aio-long", timeout=300, max_retries=3, wait=True)
            job = await consumer.receive("aio-long", timeout=10)
            assert job is not None and job.attempt == 1
            first_end = job.info["lease_end"]
            while time.time() <= first_end - 300 + 0.05:
                await asyncio.sleep(0.01)     # the clock past the receive, so the touched lease ends later
            assert await job.touch() is True
            touched_end = (await consumer.status(job.id))["lease_end"]
            assert touched_end > first_end
            await asyncio.to_thread(fire_timers_at, node, (first_end + touched_end) / 2)
            assert await other.receive("aio-long", timeout=0) is None
            task = await consumer.status(job.id)
            assert (task["state"], task["attempt"]) == ("running", 1)
            assert await job.ack("rendered") is True
            assert await consumer.result(job.id, timeout=10) == "rendered"
            assert (await consumer.status(job.id))["attempt"] == 1

            await consumer.submit("render", [], queue="aio-lapsed", timeout=300, max_retries=0, wait=True)
            lapsed = await consumer.receive("aio-lapsed", timeout=10)
            assert lapsed is not None
            await asyncio.to_thread(run_out_leases, node)
            assert (await consumer.status(lapsed.id))["state"] == "dead"
            assert await lapsed.touch() is False
            assert (await consumer.status(lapsed.id))["state"] == "dead"

    run(main)
