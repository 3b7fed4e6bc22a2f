"""miyaq.aio: the asyncio client against real nodes (thread nodes and workers
from the harness), including the faults the threaded client survives."""
from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Callable

import pytest

import miyaq
import miyaq.aio
from apps import basic
from miyaq.client import dialling
from miyaq.logs import LogLimiter
from miyaq.protocol import commands as c
from miyaq.security.keystore import KeyStore
from miyaq.testing.harness import ThreadNode, free_port, refusing_port, wait_for
from own_interpreter import run_script
from raw_nodes import CountingNode, NodesPlayer, no_descriptor_once_for


def run(main: Callable[[], Awaitable[Any]], limit: float = 60.0) -> Any:
    """Run a coroutine in a fresh event loop, bounded so a hang fails the test."""
    return asyncio.run(asyncio.wait_for(main(), limit))


def test_submit_pipelined_flush_and_results(node, thread_worker):
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=8)

    async def main() -> list[int]:
        async with miyaq.aio.Client(node.endpoint) as client:
            handles = [await client.submit("add", [i, i]) for i in range(200)]
            await client.flush()
            assert all(h.accepted for h in handles)
            return [await h.result(timeout=30) for h in handles]

    assert run(main) == [2 * i for i in range(200)]


def test_call_status_cancel_tasks_and_errors(node, thread_worker):
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=4)

    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint) as client:
            assert await client.call("add", [2, 3], timeout=30) == 5
            assert await client.call("add", [1, 1], id="aio-call-1", timeout=30) == 2   # an id of the caller's
            assert (await client.status("aio-call-1"))["state"] == "done"
            later = await client.submit("echo", ["x"], countdown=600, wait=True)
            assert (await later.status())["state"] == "scheduled"
            assert [t["id"] for t in await client.tasks(state="scheduled")] == [later.id]
            assert await later.cancel() is True
            with pytest.raises(miyaq.TaskCancelled):
                await later.result(timeout=5)
            with pytest.raises(miyaq.NotFound):
                await client.status("no-such-task")
            with pytest.raises(miyaq.TaskFailed) as failure:
                await client.call("reject", timeout=30)
            assert failure.value.remote_type == "Reject"
            assert (await client.status())["totals"]["live"] == 0
            dup = await client.submit("echo", [1], key="once", countdown=600, wait=True)
            again = await client.submit("echo", [2], key="once", wait=True)
            assert again.duplicate_of == dup.id and again.task_id == dup.id

    run(main)


def test_pull_consumer_receive_ack_nack(node):
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint) as client:
            assert await client.receive("jobs") is None
            first = await client.submit("job", [1], {"k": "v"}, queue="jobs", wait=True)
            job = await client.receive(["jobs"], timeout=5)
            assert job is not None and job.id == first.id and job.args == [1] and job.kwargs == {"k": "v"}
            assert await job.ack({"ok": True}) is True
            assert await client.result(first.id, timeout=5) == {"ok": True}
            second = await client.submit("job", [2], queue="jobs", max_retries=0, wait=True)
            job = await client.receive("jobs", timeout=5)
            assert job is not None and await job.nack("no", retry=False) is True
            with pytest.raises(miyaq.TaskFailed, match="no"):
                await second.result(timeout=5)

    run(main)


def test_busy_node_is_retried_transparently(make_node, thread_worker):
    """Fault: a BUSY node (max_tasks=5). The asyncio client backs off and
    retries like the threaded one; every submit is accepted once a worker
    drains the node, and the caller never sees BUSY."""
    n = make_node(max_tasks=5)

    async def main() -> list[Any]:
        async with miyaq.aio.Client(n.endpoint, submit_timeout=30.0) as client:
            handles = [await client.submit("echo", [i]) for i in range(25)]
            while client._io.core.submits.busy_replies == 0:
                await asyncio.sleep(0.01)
            assert (await client.status())["totals"]["live"] == 5
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: thread_worker(basic.app, n.endpoint, queues=["default"], concurrency=4))
            await client.flush()
            return [(await h.result(timeout=30))["args"][0] for h in handles]

    assert sorted(run(main)) == list(range(25))


def test_busy_past_the_deadline_raises_busy(make_node, client_for):
    """Fault: the node stays full past submit_timeout. It is filled through
    a patient client: a stall of the loaded machine past 0.5 s failed that
    setup submit (before 2026-12-08)."""
    n = make_node(max_tasks=1)
    client_for(n.endpoint).submit("echo", [0], wait=True)

    async def main() -> None:
        async with miyaq.aio.Client(n.endpoint, submit_timeout=0.5) as client:
            with pytest.raises(miyaq.Busy, match="full"):
                await client.submit("echo", [1], wait=True)

    run(main)


def test_unreachable_node_fails_at_first_contact(short_first_contact):
    """Fault: nothing listens on the endpoint. A request fails after the
    connect wait and a submit after the first-contact wait, both naming it."""
    with refusing_port() as port:
        endpoint = f"tcp://127.0.0.1:{port}"

        async def main() -> None:
            client = miyaq.aio.Client(endpoint, submit_timeout=600.0)
            try:
                with pytest.raises(miyaq.Unavailable, match=f"nothing is listening on {endpoint}"):
                    await client.status()
                with pytest.raises(miyaq.Unavailable, match="is a node running"):
                    await client.submit("echo", [1], wait=True)
            finally:
                await client.close(flush=False)

        run(main)


def test_node_restarting_mid_pipeline_every_submit_is_accepted():
    """Fault: the node stops with submits in flight; a new one comes up on the
    same port. What was not acknowledged is resent there; every handle ends accepted."""
    port = free_port()
    first = ThreadNode(port=port, heartbeat=0.25, shutdown_grace=0.2).start()
    nodes = [first]

    async def main() -> int:
        async with miyaq.aio.Client(first.endpoint, submit_timeout=30.0, ack_timeout=0.5) as client:
            await client.status()
            handles = [await client.submit("echo", [i]) for i in range(2000)]
            await asyncio.get_running_loop().run_in_executor(None, first.stop)
            handles += [await client.submit("echo", [i]) for i in range(2000, 2100)]
            nodes.append(await asyncio.get_running_loop().run_in_executor(
                None, lambda: ThreadNode(port=port, heartbeat=0.25).start()))
            await client.flush(timeout=30)
            assert all(h.accepted for h in handles)
            return int((await client.status())["totals"]["live"])

    try:
        assert 100 <= run(main) <= 2100
    finally:
        for n in nodes:
            n.stop()


def test_wrong_server_key_fails_at_first_contact_naming_the_keys(tmp_path):
    """Fault: the asyncio client has another cluster's public key: the
    handshake never completes, and the error says which keys to check."""
    from curve_server import CurveServer
    store = KeyStore(str(tmp_path / "keys"))
    store.init()
    store.add("app", "producer")
    other = KeyStore(str(tmp_path / "other"))
    other.init()
    server = CurveServer(store).start()
    key = os.path.join(store.dir, "app.key_secret")

    async def main() -> None:
        async with miyaq.aio.Client(server.endpoint, key=key, server_key=os.path.join(store.dir, "node.key")) as good:
            assert (await good.status())["node"] == "curve"
            assert (await good.submit("echo", [1], wait=True)).accepted
        bad = miyaq.aio.Client(server.endpoint, key=key, server_key=os.path.join(other.dir, "node.key"))
        try:
            with pytest.raises(miyaq.Unavailable, match=r"is the node's public key right \(--server-key\)"):
                await bad.status()
        finally:
            await bad.close(flush=False)

    try:
        run(main)
    finally:
        server.stop()


def test_a_client_belongs_to_the_loop_that_first_used_it(node):
    """Fault: one client shared between two event loops: a clear error, not a hang."""
    client = miyaq.aio.Client(node.endpoint)

    async def first() -> None:
        await client.status()

    async def second() -> None:
        with pytest.raises(miyaq.MiyaqError, match="belongs to the event loop"):
            await client.status()

    run(first)
    run(second)

    async def closed() -> None:
        await client.close(flush=False)
        with pytest.raises(miyaq.MiyaqError, match="client is closed"):
            await client.submit("echo", [1])

    run(closed)


def test_a_client_dropped_unclosed_after_its_loop_ended_is_collected_without_hanging(node):
    """Fault: a client never closed, dropped once its event loop ended (a
    script's ``asyncio.run(main())`` that forgot ``close()``), or never used
    at all. Before, the process hung for good at its next garbage
    collection: pyzmq's context finalizer waited for the sockets of the same
    garbage cycle, which the collector had already cut it off from. Run in
    an interpreter of its own, bounded, so a hang fails the test."""
    script = (
        "import asyncio, gc, sys, miyaq.aio\n"
        "async def main():\n"
        "    client = miyaq.aio.Client(sys.argv[1])\n"
        "    await client.submit('echo', [1], countdown=60, wait=True)\n"
        "    await client.submit('echo', [2], countdown=60)\n"
        "asyncio.run(asyncio.wait_for(main(), 30))\n"
        "miyaq.aio.Client(sys.argv[1])\n"
        "gc.collect()\n"
        "print('collected')\n")
    code, out, err = run_script(script, node.endpoint, timeout=30,
                                hung="the process hung collecting an unclosed asyncio client")
    assert code == 0, err
    assert out.split() == ["collected"], out


def test_a_handle_awaited_in_another_event_loop_is_refused_instead_of_waiting_for_ever():
    """Fault: a submit not yet acknowledged when its loop ended (a node that
    acknowledges nothing here), its handle then awaited -- or the client
    flushed -- in another event loop. Nothing there would resolve it: before,
    ``wait_accepted()`` waited for ever and ``flush()`` its whole timeout,
    then blamed the submit; now both raise the error every other call from
    a second loop raises."""
    silent = CountingNode()
    client = miyaq.aio.Client(silent.endpoint, ack_timeout=60.0)
    try:
        async def first() -> Any:
            return await client.submit("echo", [1])

        handle = run(first)

        async def second() -> None:
            with pytest.raises(miyaq.MiyaqError, match="belongs to the event loop"):
                await handle.wait_accepted()
            with pytest.raises(miyaq.MiyaqError, match="belongs to the event loop"):
                await client.flush()

        run(second, limit=30.0)
    finally:
        asyncio.run(client.close(flush=False))
        silent.close()


def test_a_close_from_another_event_loop_says_it_dropped_the_unacknowledged_submits():
    """Fault: submits not yet acknowledged when their loop ended (a node that
    acknowledges nothing here), then ``close()`` -- flush by default -- from
    another event loop, which can wait for nothing. It closed and returned
    as if every submit had been flushed: they were dropped without a word.
    Now it closes and raises MiyaqError saying how many; ``close(flush=False)``
    drops them quietly, as asked."""
    silent = CountingNode()
    loud, quiet = (miyaq.aio.Client(silent.endpoint, ack_timeout=60.0) for _ in range(2))
    try:
        async def first() -> None:
            for client in (loud, quiet):
                for i in range(3):
                    await client.submit("echo", [i])

        run(first)

        async def second() -> None:
            with pytest.raises(miyaq.MiyaqError, match="3 submits never answered were dropped"):
                await loud.close()
            await loud.close()              # closed: nothing more to say
            await quiet.close(flush=False)

        run(second, limit=30.0)
    finally:
        asyncio.run(loud.close(flush=False))
        asyncio.run(quiet.close(flush=False))
        silent.close()


def test_a_close_from_another_event_loop_tells_refused_submits_apart_from_unanswered_ones(node):
    """Fault (a review audit): a submit the node refused (answered, surely
    not stored), never flushed, then ``close()`` from another event loop:
    it was counted among those "a node may or may not have stored". Now it
    is told as failed, and a submit acknowledged is not counted at all."""
    client = miyaq.aio.Client(node.endpoint)

    async def first() -> None:
        await client.submit_url("http://127.0.0.1:0/x")               # refused: port 0
        await client.submit("echo", [1], wait=True)                    # read after the refusal: in order

    run(first)

    async def second() -> None:
        with pytest.raises(miyaq.MiyaqError) as raised:
            await client.close()
        assert "1 submit failed" in str(raised.value) and "never answered" not in str(raised.value)

    run(second)


def test_a_submit_with_an_id_that_is_not_a_string_is_refused_at_once(node):
    """Bad input: an id that is not a string. Before, the node's refusal
    matched no submit and the caller waited its whole ``submit_timeout``;
    now InvalidField naming ``id``, at once, nothing sent."""
    async def main() -> None:
        async with miyaq.aio.Client(node.endpoint, submit_timeout=600.0) as client:
            with pytest.raises(miyaq.errors.InvalidField, match="'id' must be a string"):
                await client.submit("echo", [1], id=5, wait=True)      # type: ignore[arg-type]
            assert (await client.status())["totals"]["live"] == 0

    run(main, limit=30.0)


MADE_BEFORE_A_FORK = """
import asyncio, os, sys
import miyaq.aio
client = miyaq.aio.Client(sys.argv[1])      # at import time, before the server forks its workers
pid = os.fork()
if pid == 0:
    async def main():
        handle = await client.submit("echo", [1], countdown=60, wait=True)
        print((await client.status(handle.id))["state"])
        await client.close()
    asyncio.run(asyncio.wait_for(main(), 20))
    sys.stdout.flush()
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def test_a_client_made_before_a_fork_and_first_used_in_the_child_works_there(node):
    """Fault: the client is made at import time, as the docs allow, and the
    process forks before using it (a pre-forking server: gunicorn --preload
    with uvicorn workers). Its sockets were made in the parent's ZeroMQ
    context, which does not work in a child: before, the child's first call
    spun in the client's reader and never returned. Now a client first used
    in a forked child opens its sockets there. In an interpreter of its
    own, bounded."""
    code, out, err = run_script(MADE_BEFORE_A_FORK, node.endpoint, timeout=40,
                                hung="the forked child's first call hung")
    assert code == 0, err
    assert out.split() == ["scheduled", "child", "0"], (out, err)


def test_task_submit_async_and_call_async(node, thread_worker):
    app = miyaq.App(node.endpoint)

    @app.task(name="add")
    def add(a, b):
        return a + b

    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=4)

    async def main() -> tuple[int, bool]:
        handle = await add.submit_async(1, 2)
        total = await add.call_async(20, 22, timeout=30)
        await handle.wait_accepted()
        await app.aclose()
        return total, handle.accepted

    assert run(main) == (42, True)
    app.close()


def test_submits_a_node_read_before_it_exited_are_sent_to_another_node_at_once():
    """Fault: a node reads submits and exits before acknowledging them. The
    asyncio client sees the connection close and sends them to the other
    node at once (ack_timeout is 60 s: only that acknowledges them in time)."""
    exiting, other = CountingNode(), CountingNode()

    def read(n: int) -> list[str]:
        wait_for(lambda: exiting.pump(20) or other.pump(20) or
                 sum(len(ids) for _, ids in exiting.batches + other.batches) == n, what=f"{n} tasks read")
        return [i for _, ids in exiting.batches for i in ids]

    async def main() -> None:
        async with miyaq.aio.Client([exiting.endpoint, other.endpoint], ack_timeout=60.0,
                                    submit_timeout=30.0) as client:
            handles = [await client.submit("echo", [i]) for i in range(4)]
            read_by_exiting = await asyncio.to_thread(read, 4)
            assert read_by_exiting, "the first node read none of the submits"
            exiting.close()
            await asyncio.to_thread(wait_for, lambda: other.pump(20) or set(read_by_exiting) <= {
                i for _, ids in other.batches for i in ids}, 20, 0.02, "the exited node's submits elsewhere")
            other.ack_all()
            await client.flush()
            assert all(h.accepted and h.node == other.endpoint for h in handles)

    try:
        run(main, limit=45)
    finally:
        other.close()
        if not exiting.sock.closed:
            exiting.close()


def test_a_connection_that_loops_back_to_the_client_is_made_again():
    """Fault: the asyncio client's connection loops back to its own socket
    (a TCP self-connect): it reads its own SUBMIT. It connects again, and
    the submit is accepted once a node answers on the fresh connection."""
    node = CountingNode()
    node.echo = True

    async def main() -> bool:
        # Unacknowledged, the submit is sent again after ack_timeout (5 s by
        # default): 1 s, what it goes on is the point.
        async with miyaq.aio.Client(node.endpoint, submit_timeout=30.0, ack_timeout=1.0) as client:
            handle = await client.submit("echo", [1])
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: wait_for(
                lambda: node.pump() or len({peer for peer, _ in node.echoed}) >= 2,
                what="the submit sent again on a fresh connection"))
            node.echo = False
            await loop.run_in_executor(None, lambda: wait_for(
                lambda: node.pump() or node.batches, timeout=30, what="the submit on a connection that works"))
            node.ack_all()
            await client.flush(timeout=10)
            return handle.accepted

    try:
        assert run(main)
    finally:
        node.close()


def test_a_ring_naming_an_endpoint_libzmq_refuses_leaves_the_client_working(caplog, monkeypatch):
    """Fault: a buggy or hostile node answers RING with a member whose
    service endpoint libzmq refuses to dial (``"tcp://no port here"``). The
    asyncio client logs it, dials the member it can, and goes on (before,
    the refusal raised in its reader and no later submit was answered)."""
    # A limiter of its own: the process's may be spent by earlier tests' refusals.
    monkeypatch.setattr(dialling, "_log", LogLimiter(dialling.logger))
    other = CountingNode()
    ring = {"epoch": 1, "members": {"n9": {"service": "tcp://no port here"}, "n1": {"service": other.endpoint}}}
    asked = CountingNode(replies={c.RING: ring})

    async def main() -> list[str]:
        async with miyaq.aio.Client(asked.endpoint, submit_timeout=20.0) as client:
            handles = [await client.submit("echo", [i]) for i in range(4)]
            await client.flush(timeout=20)
            assert all(h.accepted for h in handles)
            return list(client._io.nodes.endpoints)

    with NodesPlayer([asked, other], tasks=4, asked=(c.RING,)) as player:
        endpoints = run(main, limit=40)
        assert not player.problems, player.problems
    assert endpoints == [asked.endpoint, other.endpoint]
    assert any("tcp://no port here" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_a_client_out_of_file_descriptors_when_the_ring_names_a_node_dials_it_at_the_next_ring(caplog, monkeypatch):
    """Fault: the process has no file descriptor left (simulated: libzmq's
    EMFILE for the new node's socket, once) when a RING reply names a node.
    The asyncio client logs it, goes on, and dials the node at the next RING
    reply (before, the error ended its reader)."""
    monkeypatch.setattr(dialling, "_log", LogLimiter(dialling.logger))
    other = CountingNode()
    asked = CountingNode(replies={c.RING: {"epoch": 1, "members": {"n1": {"service": other.endpoint}}}})
    failures = no_descriptor_once_for(monkeypatch, other.endpoint)

    async def main() -> list[str]:
        async with miyaq.aio.Client(asked.endpoint, submit_timeout=20.0) as client:
            handles = [await client.submit("echo", [i]) for i in range(4)]
            await client.flush(timeout=20)
            assert all(h.accepted for h in handles)
            for _ in range(1000):
                if len(client._io.nodes.endpoints) == 2:
                    break
                await asyncio.sleep(0.02)
            assert not client._io.nodes.refused
            return list(client._io.nodes.endpoints)

    with NodesPlayer([asked, other], tasks=4, asked=(c.RING,)) as player:
        endpoints = run(main, limit=40)
        assert not player.problems, player.problems
    assert failures == [other.endpoint] and endpoints == [asked.endpoint, other.endpoint]
    assert any("cannot open a socket to" in r.getMessage() for r in caplog.records)


def test_a_client_given_an_endpoint_libzmq_refuses_says_which():
    """Fault: a user passes something that is not an endpoint: a ConfigError names it."""
    with pytest.raises(miyaq.ConfigError, match=r"cannot connect to 'ipc://'"):
        miyaq.aio.Client(["tcp://127.0.0.1:1", "ipc://"])


def test_the_asyncio_client_never_imports_gevent(node):
    """An asyncio application that imports ``miyaq.aio``, submits a task and
    reads its status, in an interpreter of its own, has not imported gevent
    (the runtime's hub sockets and supervisor are imported only by what
    uses them)."""
    script = (
        "import asyncio, sys, miyaq.aio\n"
        "async def main():\n"
        "    async with miyaq.aio.Client(sys.argv[1]) as client:\n"
        "        handle = await client.submit('echo', [1], countdown=60, wait=True)\n"
        "        print((await client.status(handle.id))['state'])\n"
        "asyncio.run(asyncio.wait_for(main(), 30))\n"
        "print(sorted(m for m in sys.modules if m == 'gevent' or m.startswith(('gevent.', 'zmq.green'))))\n")
    code, out, err = run_script(script, node.endpoint, timeout=60, hung="the asyncio client's script hung")
    assert code == 0, err
    assert out.split() == ["scheduled", "[]"], out
