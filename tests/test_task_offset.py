"""A task's own ``offset`` (seconds between its holder ranks' timers;
docs/cluster.md) from every producer: the ZeroMQ SUBMIT always took it, and
now so do ``Client.submit``/``submit_url``, ``miyaq.aio.Client``,
``@app.task(offset=...)`` and ``POST /tasks``, checked as SUBMIT checks it
(0 to a year)."""
from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from gateway_harness import FIXTURES, Http, NodeThread

import miyaq
import miyaq.aio
from miyaq.client.wire import TASK_OPTIONS

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals


def stored(node: NodeThread, task_id: str) -> Any:
    """(offset, payload) of the task the node holds."""
    def read() -> Any:
        task = node.node.part("gateway").core.engine.table.live[task_id]
        return (task.meta or {}).get("offset"), task.body
    return node.call(read)


def endpoint(node: NodeThread) -> str:
    return f"tcp://127.0.0.1:{node.config.port}"


def test_the_python_client_takes_a_tasks_offset(make_http_node):
    """Fault: ``client.submit(..., offset=2.0)`` raised ``TypeError: unknown
    task option(s): offset`` although docs/cluster.md says a task can set
    its own offset (only a raw SUBMIT could)."""
    node = make_http_node()
    with miyaq.Client(endpoint(node), submit_timeout=10) as client:
        named = client.submit("job", [1], countdown=600, offset=2.0, wait=True)
        hook = client.submit_url("https://hooks.example/h", countdown=600, offset=0.5, wait=True)
        with pytest.raises(miyaq.InvalidField, match="'offset'"):
            client.submit("job", offset=-1.0, wait=True)
        with pytest.raises(miyaq.InvalidField, match="'offset'"):
            client.submit("job", offset=2 * 365 * 86400.0, wait=True)
    assert stored(node, named.id)[0] == 2.0
    assert stored(node, hook.id)[0] == 0.5


def test_the_asyncio_client_takes_a_tasks_offset(make_http_node):
    node = make_http_node()

    async def main() -> str:
        async with miyaq.aio.Client(endpoint(node), submit_timeout=10) as client:
            handle = await client.submit("job", countdown=600, offset=1.5, wait=True)
            return handle.id

    assert stored(node, asyncio.run(main()))[0] == 1.5


def test_an_apps_task_takes_offset_as_a_default_and_leaves_the_keyword_to_its_handler(make_http_node):
    """``@app.task(offset=...)`` and ``submit_with(offset=...)`` set the
    task's offset; ``tdef.submit(offset=...)`` still passes ``offset`` to the
    handler, as before it was an option (a paging handler's own parameter)."""
    node = make_http_node()
    app = miyaq.App(endpoint(node), submit_timeout=10)
    try:
        @app.task(name="page", countdown=600, offset=3.0)
        def page(query: str, offset: int = 0) -> list[str]:
            return [query] * offset

        kept = page.submit("q", offset=40, wait=True)
        chosen = page.submit_with(["q"], {"offset": 10}, offset=0.25, wait=True)
    finally:
        app.close()
    for handle, offset, payload in ((kept, 3.0, [["q"], {"offset": 40}]), (chosen, 0.25, [["q"], {"offset": 10}])):
        task_offset, body = stored(node, handle.id)
        assert (task_offset, msgpack.unpackb(body, raw=False)) == (offset, payload)
    assert "offset" in TASK_OPTIONS


def test_post_tasks_takes_a_tasks_offset_checked_as_submit_checks_it(make_http_node):
    """Fault: ``POST /tasks`` with ``"offset"`` was a 400 ``unknown field``."""
    node = make_http_node()
    client = Http(node.url)
    try:
        status, answer, _ = client.post("/tasks", {"name": "job", "countdown": 600, "offset": 2.5})
        assert status == 202, answer
        assert stored(node, answer["id"])[0] == 2.5
        for bad in (-1, "soon", 1e12, True):
            status, answer, _ = client.post("/tasks", {"name": "job", "offset": bad})
            assert status == 400 and answer["error"]["field"] == "offset", (bad, answer)
        assert client.get("/status")[1]["totals"]["live"] == 1
    finally:
        client.close()
