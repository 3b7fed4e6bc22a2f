"""A caller that stops waiting for a long-poll -- a cancelled asyncio
``result()``/``receive()``, a ``gevent.Timeout`` around ``result()`` --
withdraws it (WITHDRAW): the node drops the wait instead of holding it to
its timeout for nobody, and a task a withdrawn RECEIVE brings anyway goes
back unstarted (NACK ``returned``: no attempt spent).

Before 2026-12-04 each cancelled wait kept one of the connection's
``max_waiters_per_connection`` places until its own timeout (1,000
cancelled waits and that client's result()/receive() got ``busy``), and a
cancelled receive() leased the next task to nobody until its lease ran out."""
from __future__ import annotations

import asyncio
import time

import pytest

import miyaq
import miyaq.aio
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for

from secure_harness import Speaker, submit, task


def waiters(node) -> dict:
    return node.node.status(time.time())["waiters"]


def run(main, limit: float = 60.0):
    return asyncio.run(asyncio.wait_for(main(), limit))


def test_a_withdraw_drops_the_connections_named_waits_and_no_other(ctx, make_node):
    """Played with raw connections: WITHDRAW names the waits by ``req``; a
    ``req`` of another connection, or of nothing, is passed over."""
    node = make_node()
    one, other = Speaker(ctx, node.endpoint), Speaker(ctx, node.endpoint)
    submit(one, task("w" * 32, eta=time.time() + 3600))
    for req in (1, 2, 3):
        one.send(c.RESULT, {"req": req, "id": "w" * 32, "timeout": 3600})
    other.send(c.RESULT, {"req": 1, "id": "w" * 32, "timeout": 3600})
    one.send(c.RECEIVE, {"req": 4, "queues": ["jobs"], "timeout": 3600})
    wait_for(lambda: waiters(node)["pending"] == 5, timeout=10)
    one.send(c.WITHDRAW, {"reqs": [1, 3, 4, 99]})
    wait_for(lambda: waiters(node)["pending"] == 2, timeout=10)
    assert waiters(node)["withdrawn"] == 3
    submit(one, task("j" * 32, queue="jobs"))           # the withdrawn RECEIVE takes nothing
    assert node.node.status(time.time())["queues"]["jobs"]["ready"] == 1
    got = one.recv(0.3)                                   # a WITHDRAW is not answered (a probe may come)
    assert got is None or (got[0] == c.REPLY and "req" not in got[1]), got


@pytest.mark.parametrize("body", [{}, {"reqs": "1"}, {"reqs": [1, "2"]}, {"reqs": list(range(1001))}])
def test_a_malformed_withdraw_is_refused_and_changes_nothing(ctx, make_node, body):
    node = make_node()
    speaker = Speaker(ctx, node.endpoint)
    submit(speaker, task("w" * 32, eta=time.time() + 3600))
    speaker.send(c.RESULT, {"req": 1, "id": "w" * 32, "timeout": 3600})
    wait_for(lambda: waiters(node)["pending"] == 1, timeout=10)
    assert "reqs" in speaker.refused(c.WITHDRAW, body, code="invalid_field")["message"]
    assert waiters(node)["pending"] == 1


def test_cancelled_aio_result_waits_are_withdrawn_and_never_fill_the_connections_places(make_node):
    """Fault: 30 ``asyncio.wait_for(client.result(...), 0.01)`` against a node
    allowing 10 long-polls a connection. Before: the eleventh got ``busy``."""
    node = make_node(max_waiters_per_connection=10)

    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint) as client:
            held = await client.submit("echo", [1], countdown=3600, wait=True)
            for _ in range(30):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.result(held.id, timeout=600), 0.01)
            await asyncio.sleep(0)
            assert (await client.status(held.id))["state"] == "scheduled"
            wait = asyncio.ensure_future(client.result(held.id, timeout=600))
            await asyncio.sleep(0.2)
            assert not wait.done()                        # waiting, not refused busy
            wait.cancel()

    run(main)
    wait_for(lambda: waiters(node)["pending"] == 0, timeout=10, what="every cancelled wait withdrawn")
    assert waiters(node)["withdrawn"] >= 30


def test_a_cancelled_aio_receive_gives_back_the_task_it_brings_without_spending_an_attempt(make_node):
    """Fault: a receive() cancelled while the node holds it, then a task
    submitted. Before: the task went to the withdrawn request, running with
    nobody holding it until its lease (``timeout``) ran out."""
    node = make_node()

    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint) as client:
            waiting = asyncio.ensure_future(client.receive("jobs", timeout=600))
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            handle = await client.submit("job", [1], queue="jobs", timeout=3600, wait=True)
            job = await client.receive("jobs", timeout=10)
            assert job is not None and job.id == handle.id and job.attempt == 1
            assert await job.ack("done") is True

    run(main)
    assert waiters(node)["withdrawn"] == 1


def test_a_receive_answered_before_its_withdraw_arrived_is_given_back(make_node):
    """The race: the node leased a task to the RECEIVE before the WITHDRAW
    came. The client gives it back unstarted (NACK ``returned``): ready
    again, attempt 1 for the next consumer."""
    node = make_node()

    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint) as client:
            handle = await client.submit("job", [1], queue="jobs", timeout=3600, wait=True)
            io = client._io
            req = io.core.next_req()
            future = miyaq.aio.client.AioFuture()
            io.request(0, c.RECEIVE, {"req": req, "queues": ["jobs"], "timeout": 0}, future,
                       time.monotonic() + 10)
            io.withdraw(req)                     # withdrawn before its answer (the task) is read
            await asyncio.sleep(0.3)
            assert (await client.status(handle.id))["state"] == "ready"
            job = await client.receive("jobs", timeout=10)
            assert job is not None and job.id == handle.id and job.attempt == 1

    run(main)


@pytest.mark.parametrize("green", [False, True])
def test_a_receive_interrupted_as_its_answer_came_gives_the_task_back(make_node, monkeypatch, green):
    """Fault (review of 2026-12-06): an interrupt (Ctrl-C, a gevent.Timeout)
    that lands in a threaded or gevent client's receive() just as its answer
    resolved the wait: nothing was withdrawn (the wait was done) and the
    task it brought was leased to nobody until its lease ran out, an
    attempt spent. Now it goes back unstarted, attempt 1 for the next
    consumer. The interrupt is made to land right after the wait returned."""
    from miyaq.client import futures
    from miyaq.testing.harness import in_own_hub

    node = make_node()
    kind = futures.Future if green else futures.BlockingFuture
    real_wait = kind.wait
    interrupt = {"armed": False}

    def wait_then_interrupted(self, *args, **kwargs):
        value = real_wait(self, *args, **kwargs)
        if interrupt["armed"] and isinstance(value, dict) and value.get("task"):
            interrupt["armed"] = False
            raise KeyboardInterrupt("landed as the answer came")
        return value

    monkeypatch.setattr(kind, "wait", wait_then_interrupted)

    def body() -> tuple[str, int]:
        client = miyaq.Client(node.endpoint, green=green)
        try:
            held = client.submit("job", [1], queue="jobs", timeout=3600, wait=True)
            interrupt["armed"] = True
            with pytest.raises(KeyboardInterrupt):
                client.receive("jobs", timeout=10)
            wait_for(lambda: client.status(held.id)["state"] == "ready", what="the task given back")
            job = client.receive("jobs", timeout=10)
            assert job is not None and job.id == held.id
            return job.id, job.attempt
        finally:
            client.close(flush=False)

    task_id, attempt = in_own_hub(body) if green else body()
    assert attempt == 1


def test_a_gevent_timeout_around_result_withdraws_the_wait(make_node):
    """A gevent program (a worker's handler) bounding ``result()`` with
    ``gevent.Timeout``: the interrupted wait is withdrawn."""
    import gevent

    from miyaq.testing.harness import in_own_hub

    node = make_node(max_waiters_per_connection=5)

    def body() -> str:
        client = miyaq.Client(node.endpoint, green=True)
        try:
            held = client.submit("echo", [1], countdown=3600, wait=True)
            for _ in range(12):
                with pytest.raises(gevent.Timeout):
                    with gevent.Timeout(0.01):
                        client.result(held.id, timeout=600)
            return client.status(held.id)["state"]
        finally:
            client.close(flush=False)

    assert in_own_hub(body) == "scheduled"
    wait_for(lambda: waiters(node)["pending"] == 0, timeout=10)
    assert waiters(node)["withdrawn"] >= 12



def test_long_polls_whose_req_is_not_an_integer_still_wait_and_are_answered(ctx, make_node):
    """Fault (found by the fuzzer): a RECEIVE whose ``req`` is a list (any
    msgpack value is a valid ``req``) failed the handler (``internal``): the
    node indexed waits by an unhashable key. Only integer reqs are indexed."""
    node = make_node()
    speaker = Speaker(ctx, node.endpoint)
    speaker.send(c.RECEIVE, {"req": [1, 2], "queues": ["jobs"], "timeout": 30})
    speaker.send(c.RESULT, {"req": {"a": 1}, "id": "w" * 32, "timeout": 30})
    got = speaker.recv()
    assert got is not None and got[0] == c.ERROR and got[1]["code"] == "not_found", got
    wait_for(lambda: waiters(node)["pending"] == 1, timeout=10)
    submit(speaker, task("j" * 32, queue="jobs"))
    while True:
        got = speaker.recv()
        assert got is not None, "the RECEIVE was not answered"
        if got[0] == c.REPLY and got[1].get("req") == [1, 2]:
            break
    assert got[1]["task"]["id"] == "j" * 32
    assert node.node.status(time.time())["errors"].get("internal", 0) == 0


CTRL_C_IN_RESULT = r"""
import signal, sys, threading, time
import miyaq

# A program started in the background by a shell inherits SIGINT ignored, and
# Python then installs no KeyboardInterrupt handler: install it (a terminal's Ctrl-C).
signal.signal(signal.SIGINT, signal.default_int_handler)
client = miyaq.Client(sys.argv[1])
if sys.argv[2] == "queued":          # the I/O thread reads the reply: the caller waits in a lock
    client._io._direct = lambda *args, **kwargs: False
held = client.submit("echo", [1], countdown=3600, wait=True)
# A real SIGINT to the main thread: it interrupts a wait in a lock, where
# _thread.interrupt_main() (no signal, a flag) is seen only at the next bytecode.
main = threading.main_thread().ident
threading.Timer(0.5, lambda: signal.pthread_kill(main, signal.SIGINT)).start()
try:
    client.result(held.id, timeout=600)
    print("returned")
except KeyboardInterrupt:
    print("interrupted")
time.sleep(0.5)                      # the withdraw leaves from the client's I/O thread
client.close(flush=False)
"""


@pytest.mark.parametrize("path", ["leading", "queued"])
def test_ctrl_c_in_a_sync_result_withdraws_the_wait(make_node, path):
    """Fault: Ctrl-C (SIGINT) in a program waiting in the threaded client's
    ``result()`` (in an interpreter of its own), whether the caller leads the
    sockets or waits for the I/O thread. The interrupted wait is withdrawn;
    before, the node held it for the whole timeout (600 s here)."""
    from own_interpreter import run_script

    node = make_node()
    code, out, err = run_script(CTRL_C_IN_RESULT, node.endpoint, path, timeout=45, hung="the program did not end")
    assert code == 0 and out.strip() == "interrupted", (code, out, err)
    wait_for(lambda: waiters(node)["withdrawn"] == 1, timeout=10, what="the interrupted wait withdrawn")
    assert waiters(node)["pending"] == 0
