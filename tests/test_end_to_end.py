"""A standalone node with a worker: the user-visible features end to end."""
from __future__ import annotations

import time
import uuid

import msgpack
import pytest
import zmq

import miyaq
from apps import basic
from miyaq.protocol import commands as c
from miyaq.testing.harness import wait_for


@pytest.fixture(autouse=True)
def _clear_events():
    basic.EVENTS.clear()


@pytest.fixture
def worker(node, thread_worker):
    return thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=4)


def test_call_returns_the_result(client, worker):
    assert client.call("add", [2, 3]) == 5


def test_taskdef_submit_and_call_use_the_app(node, worker):
    app = miyaq.App(node.endpoint)
    try:
        add = app.task(basic.add.fn, name="add")
        assert add.call(20, 22) == 42
        handle = add.submit(1, 2, priority=3)
        assert handle.result(10) == 3
    finally:
        app.close()


def test_failure_raises_with_the_remote_type_and_goes_dead(client, worker):
    handle = client.submit("boom", max_retries=2, backoff=0.01, wait=True)
    with pytest.raises(miyaq.TaskFailed) as info:
        handle.result(10)
    assert info.value.remote_type == "ValueError"
    assert "kaboom" in info.value.remote_message
    assert "Traceback" in info.value.traceback
    attempts = [e[2] for e in basic.EVENTS if e[0] == "boom" and e[1] == handle.id]
    assert attempts == [1, 2, 3]          # max_retries=2: three runs in all
    dead = client.dead("list")["tasks"]
    assert [t["id"] for t in dead] == [handle.id]
    assert "kaboom" in dead[0]["error"]["message"]


@pytest.mark.parametrize("body,why", [
    (b'{"args": [2, 3]}', "ExtraData"),                       # JSON, not msgpack
    (b"\xc1", "FormatError"),                                # not msgpack at all
    (msgpack.packb({"args": [2, 3]}), "an array and a map"),
    (msgpack.packb([[2, 3], {}, 1]), "an array and a map"),
    (msgpack.packb([[2], [3]]), "an array and a map"),
    (msgpack.packb([[2], {1: 3}]), "an array and a map"),
])
def test_a_body_that_is_not_args_and_kwargs_fails_for_good(node, client, worker, body, why):
    """Fault: a producer speaking the protocol itself submits a body that is
    not msgpack ``[args, kwargs]`` (JSON, a map, three items, a map with an
    int key). The task fails at once, not retried, as ``BadBody`` naming
    what a body must be. Before, the handler's call raised whatever
    unpacking met (``ValueError: not enough values to unpack``, an empty
    ``FormatError``) and the task was retried for nothing up to its
    ``max_retries``."""
    task_id = uuid.uuid4().hex
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.connect(node.endpoint)
        sock.send_multipart([c.TAG, c.SUBMIT, msgpack.packb({"tasks": [{
            "id": task_id, "name": "add", "body": body, "max_retries": 2, "backoff": 0.01}]}, use_bin_type=True)])
        assert sock.poll(10_000), "the node did not answer the SUBMIT"
        _, command, reply = sock.recv_multipart()
        assert command == c.SUBMITTED and msgpack.unpackb(reply)["results"][0][1] == "accepted"
    finally:
        sock.close(linger=0)
        ctx.term()
    with pytest.raises(miyaq.TaskFailed) as failed:
        client.result(task_id, timeout=20)
    assert failed.value.remote_type == "BadBody"
    assert "the task's body is not msgpack [args, kwargs]" in failed.value.remote_message
    assert why in failed.value.remote_message
    assert client.status(task_id)["attempt"] == 1


def test_retry_then_success(client, worker):
    assert client.call("flaky", [2], max_retries=5) == 3


def test_reject_dead_letters_without_retry(client, worker):
    handle = client.submit("reject", wait=True)
    with pytest.raises(miyaq.TaskFailed) as info:
        handle.result(10)
    assert info.value.remote_type == "Reject"
    assert client.status(handle.id)["attempt"] == 1


def test_dead_letter_retry_and_purge(client, worker):
    ids = [client.submit("reject", wait=True).id for _ in range(3)]
    wait_for(lambda: len(client.dead("list")["tasks"]) == 3, what="three dead tasks")
    assert client.dead("retry", ids=[ids[0]])["retried"] == [ids[0]]
    wait_for(lambda: len(client.dead("list")["tasks"]) == 3 and client.status(ids[0])["attempt"] == 1,
             what="retried task dead again")
    assert client.dead("purge")["purged"] == 3
    assert client.dead("list")["tasks"] == []


def test_queues_are_separate_lanes(node, client, thread_worker):
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2)
    on_other = client.submit("other", [1], queue="other", wait=True)
    assert client.call("add", [1, 1]) == 2
    assert client.status(on_other.id)["state"] == "ready"    # nobody consumes "other"
    thread_worker(basic.app, node.endpoint, queues=["other", "default"], concurrency=2)
    assert on_other.result(10) == 1


def test_priorities_lower_first_fifo_within(node, client, thread_worker):
    handles = []
    for prio, n in [(5, 0), (1, 1), (5, 2), (0, 3), (1, 4)]:
        handles.append(client.submit("echo", [n], priority=prio))
    client.flush()
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=1, prefetch=0)
    for h in handles:
        h.result(10)
    order = [e[5][0] for e in basic.EVENTS if e[0] == "echo"]
    assert order == [3, 1, 4, 0, 2]


def test_countdown_runs_no_earlier_than_its_eta(client, worker):
    submitted = time.time()
    handle = client.submit("echo", ["later"], countdown=0.3, wait=True)
    assert client.status(handle.id)["state"] == "scheduled"
    handle.result(10)
    started = [e[4] for e in basic.EVENTS if e[0] == "echo" and e[1] == handle.id][0]
    assert started >= submitted + 0.3


def test_eta_in_the_past_runs_at_once(client, worker):
    assert client.submit("echo", [1], eta=time.time() - 10, wait=True).result(10)["args"] == [1]


def test_ttl_expires_a_task_not_started(node, client):
    handle = client.submit("echo", [1], ttl=0.2, wait=True)
    with pytest.raises(miyaq.TaskExpired):
        handle.result(10)
    assert client.status(handle.id)["state"] == "expired"


def test_submit_is_idempotent_by_id(node, client):
    first = client.submit("echo", [1], id="fixed-id-1", countdown=60, wait=True)
    again = client.submit("echo", [2], id="fixed-id-1", countdown=60, wait=True)
    assert first.id == again.id == "fixed-id-1"
    assert len(client.tasks()) == 1


def test_key_deduplicates_inside_the_window(client, worker):
    first = client.submit("add", [1, 1], key="welcome-a@b", wait=True)
    second = client.submit("add", [5, 5], key="welcome-a@b", wait=True)
    assert second.duplicate_of == first.id
    assert second.task_id == first.id
    assert second.result(10) == 2          # the first task's result
    third = client.submit("add", [5, 5], key="welcome-a@b", wait=True)   # finished, still in window
    assert third.task_id == first.id


def test_key_is_free_again_after_the_window(make_node, client_for, thread_worker):
    n = make_node(dedup_window=0.0)
    c = client_for(n.endpoint)
    thread_worker(basic.app, n.endpoint, queues=["default"])
    first = c.submit("add", [1, 1], key="k", wait=True)
    assert first.result(10) == 2
    second = c.submit("add", [2, 2], key="k", wait=True)
    assert second.duplicate_of is None and second.result(10) == 4


def test_cancel_scheduled_and_ready(node, client):
    scheduled = client.submit("echo", [1], countdown=60, wait=True)
    ready = client.submit("echo", [2], wait=True)
    assert client.cancel(scheduled.id) and client.cancel(ready.id)
    for h in (scheduled, ready):
        with pytest.raises(miyaq.TaskCancelled):
            h.result(5)
    assert client.cancel(ready.id) is False        # already cancelled


def test_cancel_running_aborts_the_handler(node, client, worker):
    handle = client.submit("sleep", [30], wait=True)
    wait_for(lambda: client.status(handle.id)["state"] == "running", what="task running")
    assert client.cancel(handle.id)
    with pytest.raises(miyaq.TaskCancelled):
        handle.result(5)
    wait_for(lambda: not worker.worker.running, what="handler aborted")
    assert not [e for e in basic.EVENTS if e[0] == "sleep-end"]


def test_unknown_task_id(client):
    with pytest.raises(miyaq.NotFound):
        client.status("no-such-task")
    with pytest.raises(miyaq.NotFound):
        client.cancel("no-such-task")


def test_results_are_dropped_after_their_ttl(make_node, client_for, thread_worker):
    n = make_node(result_ttl=0.2, dedup_window=0.2)
    c = client_for(n.endpoint)
    thread_worker(basic.app, n.endpoint, queues=["default"])
    handle = c.submit("add", [1, 2], wait=True)
    assert handle.result(10) == 3

    def forgotten():
        try:
            c.status(handle.id)
        except miyaq.NotFound:
            return True
        return False
    wait_for(forgotten, what="tombstone swept")


def test_status_counts_per_queue(node, client):
    client.submit("echo", [1], countdown=60, wait=True)
    client.submit("echo", [1], wait=True)
    client.submit("other", [1], queue="other", wait=True)
    status = client.status()
    assert status["queues"]["default"]["scheduled"] == 1
    assert status["queues"]["default"]["ready"] == 1
    assert status["queues"]["other"]["ready"] == 1
    assert status["totals"]["live"] == 3
    assert status["uptime"] >= 0


def test_pull_consumer_nonblocking_and_blocking(node, client):
    assert client.receive("jobs") is None                 # empty: answered at once
    client.submit("echo", [7], queue="jobs", wait=True)
    got = client.receive("jobs")
    assert got is not None and got.args == [7] and got.name == "echo"
    assert client.status(got.id)["state"] == "running"
    assert got.ack({"ok": 1})
    assert client.result(got.id, 5) == {"ok": 1}

    client.submit("echo", [8], queue="jobs", countdown=0.2, wait=True)
    got = client.receive(["jobs"], timeout=10)            # waits until the eta passes
    assert got is not None and got.args == [8]
    assert got.nack("try later", retry=True, delay=0)
    again = client.receive("jobs", timeout=10)
    assert again.id == got.id and again.attempt == 2
    assert again.nack("no", retry=False)
    with pytest.raises(miyaq.TaskFailed):
        client.result(got.id, 5)


def test_blocking_receive_times_out_empty(node, client):
    assert client.receive("nothing-here", timeout=0.3) is None
