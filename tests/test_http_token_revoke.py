"""HTTP long-polls of a token that a reload of ``http_tokens`` removes, or
whose role it changes (SIGHUP, or the file watched): they end at the reload,
answered as a fresh request with the token would be, and nothing is leased
to them any more -- as a revoked ZeroMQ key's parked RECEIVE is freed
(tests/test_security_node.py, ``Core.revoke``). Each long-poll is a request
in a thread of its own, waited for with a guard far below its timeout; no
test measures a time."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import FIXTURES, Http, NodeThread, RequestInThread, wait_for, write_tokens

from miyaq.gateway.tokens import TokenTable
from miyaq.runtime import wall
from miyaq.security.roles import Role
from miyaq.store.task import Task

http_node, api, make_http_node, make_web_worker = FIXTURES

WORKER = "worker-token-to-revoke-0123456789"
PRODUCER = "producer-token-to-revoke-0123456789"
ADMIN = "admin-token-that-stays-0123456789"
LONG = 3600          # a long-poll's timeout: the test never waits for it
ANSWER = 20.0        # how long an answer is waited for (a guard against a hang, not a measure)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "http-tokens"
    write_tokens(path, f"{WORKER} worker\n{PRODUCER} producer\n{ADMIN} admin\n")
    return path


@pytest.fixture
def node(make_http_node, tokens_file: Path) -> NodeThread:
    return make_http_node(http_tokens=str(tokens_file))


@pytest.fixture
def admin(node: NodeThread):
    client = Http(node.url, token=ADMIN)
    yield client
    client.close()


def LongPoll(node: NodeThread, token: str, method: str, path: str, body: Any = None) -> RequestInThread:
    """One HTTP request with ``token`` in a thread of its own."""
    return RequestInThread(node, method, path, body, token=token, answer_within=ANSWER)


def parked(node: NodeThread) -> int:
    return node.call(lambda: node.node.core.waiters.count)


def submit(admin: Http, queue: str, **options: Any) -> str:
    status, answer, _ = admin.post("/tasks", {"name": "job", "args": ["PAYLOAD"], "queue": queue, **options})
    assert status in (200, 202), answer
    return answer["id"]


def task_view(admin: Http, task_id: str) -> dict[str, Any]:
    status, answer, _ = admin.get(f"/tasks/{task_id}")
    assert status == 200, answer
    return answer["task"]


def test_long_polls_of_a_token_removed_by_a_reload_end_401_and_are_sent_nothing(node, admin, tokens_file):
    """Fault: a worker token parks ``POST /receive`` (up to an hour) and a
    producer token ``GET /tasks/{id}/result``; both tokens are removed from
    the tokens file and the node reloads it (SIGHUP). A fresh request with
    either was refused 401, but the parked RECEIVE was answered the next
    task, payload included, leased to a token whose ack could no longer
    come, and the parked RESULT the task's outcome. Now both end at the
    reload, 401 with the Bearer challenge, and the next task stays ready."""
    later = submit(admin, "other", countdown=LONG)
    receive = LongPoll(node, WORKER, "POST", "/receive", {"queues": ["pq"], "timeout": LONG})
    result = LongPoll(node, PRODUCER, "GET", f"/tasks/{later}/result?timeout={LONG}")
    try:
        wait_for(lambda: parked(node) == 2, "the two long-polls to be parked")
        write_tokens(tokens_file, f"{ADMIN} admin\n")
        node.call(node.node.reload)                                   # what SIGHUP runs
        wait_for(lambda: parked(node) == 0, "the revoked token's long-polls to end")
        for poll in (receive, result):
            status, answer, headers = poll.answer()
            assert status == 401 and answer["error"]["code"] == "unauthorized", answer
            assert headers["www-authenticate"].startswith("Bearer"), headers
        task_id = submit(admin, "pq")
        assert task_view(admin, task_id)["state"] == "ready"
    finally:
        receive.close()
        result.close()


def test_a_worker_token_made_producer_has_its_receive_ended_403_and_keeps_its_result_wait(node, admin, tokens_file):
    """Fault: a worker token's role is lowered to producer in the tokens file;
    its RECEIVE parked before the reload was still answered with the next
    task. Now it ends 403 ``forbidden`` at the reload, as a fresh RECEIVE
    with a producer token; its RESULT wait, which a producer may still make,
    goes on and gets the outcome. A token whose role is raised keeps its
    long-polls."""
    waited = submit(admin, "work")
    receive = LongPoll(node, WORKER, "POST", "/receive", {"queues": ["pq"], "timeout": LONG})
    result = LongPoll(node, WORKER, "GET", f"/tasks/{waited}/result?timeout={LONG}")
    raised = LongPoll(node, PRODUCER, "GET", f"/tasks/{waited}/result?timeout={LONG}")
    try:
        wait_for(lambda: parked(node) == 3, "the three long-polls to be parked")
        write_tokens(tokens_file, f"{WORKER} producer\n{PRODUCER} worker\n{ADMIN} admin\n")
        assert node.call(lambda: node.node.part("gateway").reload_tokens("test")) is True
        status, answer, _ = receive.answer()
        assert status == 403 and answer["error"]["code"] == "forbidden", answer
        assert "producer token may not receive tasks" in answer["error"]["message"]
        assert parked(node) == 2                        # the RESULT waits stay
        task_id = submit(admin, "pq")
        assert task_view(admin, task_id)["state"] == "ready"

        status, answer, _ = admin.post("/receive", {"queues": ["work"]})
        assert status == 200 and answer["task"]["id"] == waited, answer
        status, acked, _ = admin.post(f"/tasks/{waited}/ack", {"attempt": answer["task"]["attempt"],
                                                               "result": "done"})
        assert status == 200 and acked["ok"], acked
        for poll in (result, raised):
            status, answer, _ = poll.answer()
            assert status == 200 and answer["state"] == "done" and answer["result"] == "done", answer
    finally:
        for poll in (receive, result, raised):
            poll.close()


def test_a_task_leased_to_a_receive_just_before_its_token_is_removed_goes_back_unspent(node, admin, tokens_file):
    """Fault: a parked RECEIVE is handed a task, and before its request
    greenlet runs to send the answer, a reload removes its token: the task
    went out (payload included) to a token that can no longer ack it, leased
    for its timeout. Now the request, seeing its token gone when it wakes,
    gives the task back unstarted (no attempt spent) and answers 401."""
    receive = LongPoll(node, WORKER, "POST", "/receive", {"queues": ["pq"], "timeout": LONG})
    task_id = uuid.uuid4().hex
    try:
        wait_for(lambda: parked(node) == 1, "the RECEIVE to be parked")

        def lease_then_revoke() -> None:    # in one turn of the node's hub: the request cannot run between
            core = node.node.core
            now = wall()
            core.engine.submit(Task(task_id, "pq", "job", b"", created=now, eta=now), now)
            core.dispatcher.pump(now)
            assert core.engine.table.live[task_id].state == "running"       # leased to the parked RECEIVE
            write_tokens(tokens_file, f"{ADMIN} admin\n")
            assert node.node.part("gateway").reload_tokens("test") is True

        node.call(lease_then_revoke)
        status, answer, _ = receive.answer()
        assert status == 401 and answer["error"]["code"] == "unauthorized", answer
        view = task_view(admin, task_id)
        assert view["state"] == "ready" and view["attempt"] == 0, view
    finally:
        receive.close()


def test_long_polls_of_tokens_a_reload_keeps_go_on(node, admin, tokens_file):
    """A reload that adds a token, or rewrites the file with the same
    tokens, ends no long-poll: a parked RECEIVE still gets the next task."""
    receive = LongPoll(node, WORKER, "POST", "/receive", {"queues": ["pq"], "timeout": LONG})
    try:
        wait_for(lambda: parked(node) == 1, "the RECEIVE to be parked")
        write_tokens(tokens_file, f"# rewritten\n{ADMIN} admin\n{PRODUCER} producer\n{WORKER} worker\n"
                                  "a-token-added-later-0123456789 producer\n")
        assert node.call(lambda: node.node.part("gateway").reload_tokens("test")) is True
        assert parked(node) == 1
        task_id = submit(admin, "pq")
        status, answer, _ = receive.answer()
        assert status == 200 and answer["task"]["id"] == task_id, answer
    finally:
        receive.close()


def test_a_reload_names_the_tokens_it_removed_or_changed_never_the_tokens(tmp_path):
    """What the ``on_revoked`` hooks are told: each token removed (None) or
    whose role changed, by its wait key, never the token; a token unchanged,
    or the ``http_token`` (admin whatever the file says), is not named; a
    reload that fails tells nothing; a failing hook does not stop the next."""
    path = tmp_path / "http-tokens"
    stays, goes, lowered, raised = (f"{name}-token-0123456789abcdef" for name in ("stays", "goes", "lowered", "raised"))
    write_tokens(path, f"{stays} worker\n{goes} worker\n{lowered} admin\n{raised} producer\n{ADMIN} producer\n")
    table = TokenTable(ADMIN, str(path))
    told: list[dict[str, Role | None]] = []

    def failing(changed: dict[str, Role | None]) -> None:
        raise RuntimeError("a hook's bug")

    table.on_revoked += [failing, told.append]
    write_tokens(path, f"{stays} worker\n{lowered} producer\n{raised} worker\n")
    assert table.reload("test") is True
    assert told == [{table.wait_key(goes): None, table.wait_key(lowered): Role.PRODUCER,
                     table.wait_key(raised): Role.WORKER}]
    assert not any(token in key for key in told[0] for token in (stays, goes, lowered, raised))
    write_tokens(path, f"{stays} superuser\n")
    assert table.reload("test") is False and len(told) == 1


def test_a_reload_that_removes_many_tokens_looks_through_the_parked_long_polls_once():
    """Fault (a review audit: a reload that removed 5,000 tokens holding
    10,000 long-polls held the node's loop 2 s): each removed token's waits
    were released by a pass over every parked long-poll, a pass a token.
    One pass now releases them all, each answered as its token's change
    says."""
    import time
    import types

    from miyaq.core.consumers import Origin
    from miyaq.core.waiters import Waiters
    from miyaq.gateway.server import Gateway
    from miyaq.gateway.tokens import _wait_key

    waiters = Waiters(dispatcher=None, max_waiters=10_000, per_key=5_000)    # type: ignore[arg-type]
    keys = [_wait_key(os.urandom(32)) for _ in range(200)]
    answered: list[Any] = []
    for i, key in enumerate(keys):
        for j in range(3):
            waiters.wait_result(f"task-{i}-{j}", time.monotonic() + 3600, answered.append, Origin(None, key, None),
                                refuse=answered.append)
    passes = 0
    every = waiters._every

    def counted() -> Any:
        nonlocal passes
        passes += 1
        return every()

    waiters._every = counted    # type: ignore[method-assign]
    gateway = types.SimpleNamespace(core=types.SimpleNamespace(waiters=waiters))
    Gateway.tokens_revoked(gateway, {key: None for key in keys})     # type: ignore[arg-type]  (every token removed)
    assert passes == 1
    assert waiters.count == 0 and len(answered) == 600
    assert all(getattr(a, "code", None) == "unauthorized" for a in answered), {type(a).__name__ for a in answered}
