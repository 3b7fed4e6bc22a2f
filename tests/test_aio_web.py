"""miyaq.aio inside a web framework: a Starlette (FastAPI's base) app submits
from its request handlers, driven in-process by Starlette's TestClient
against a real node and worker -- the example of docs/python-api.md."""
from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import miyaq
import miyaq.aio
from apps import basic


def make_web_app(endpoint: str) -> Starlette:
    client = miyaq.aio.Client(endpoint, submit_timeout=10.0)

    async def enqueue(request: Request) -> JSONResponse:
        body = await request.json()
        handle = await client.submit("add", [body["a"], body["b"]], wait=True)
        return JSONResponse({"id": handle.id}, status_code=202)

    async def outcome(request: Request) -> JSONResponse:
        task_id = request.path_params["task_id"]
        try:
            return JSONResponse({"result": await client.result(task_id, timeout=10)})
        except miyaq.NotFound:
            return JSONResponse({"error": "no such task"}, status_code=404)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.close()

    return Starlette(routes=[Route("/add", enqueue, methods=["POST"]),
                             Route("/result/{task_id}", outcome)], lifespan=lifespan)


def test_a_request_handler_submits_and_another_reads_the_result(node, thread_worker):
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=4)
    with TestClient(make_web_app(node.endpoint)) as http:
        ids: list[Any] = []
        for a in range(5):
            reply = http.post("/add", json={"a": a, "b": 10})
            assert reply.status_code == 202
            ids.append(reply.json()["id"])
        assert [http.get(f"/result/{i}").json()["result"] for i in ids] == [a + 10 for a in range(5)]
        assert http.get("/result/nope").status_code == 404


def test_a_web_app_whose_node_is_down_answers_with_the_first_contact_error(short_first_contact):
    """Fault: the node behind the web app is not running: the handler's submit
    fails at first contact (seconds, not its deadline) with the endpoint named."""
    from miyaq.testing.harness import refusing_port
    with refusing_port() as port:
        endpoint = f"tcp://127.0.0.1:{port}"
        web = make_web_app(endpoint)
        with TestClient(web, raise_server_exceptions=True) as http:
            with pytest.raises(miyaq.Unavailable, match=f"nothing is listening on {endpoint}"):
                http.post("/add", json={"a": 1, "b": 2})


def test_a_client_closed_by_one_lifespan_and_used_by_the_next_says_what_to_do(node, thread_worker):
    """Fault: a web app's client made at import time and closed by its
    lifespan's shutdown (what docs/python-api.md showed until 2026-12-07),
    the app then run again -- a test suite's ``TestClient`` per test. The
    second run's first submit fails; before, with a bare "client is closed"
    that did not say why nor what to do. Now it says a closed client is not
    used again, and how to make one for each run."""
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2)
    web = make_web_app(node.endpoint)
    with TestClient(web) as http:
        assert http.post("/add", json={"a": 1, "b": 2}).status_code == 202
    with TestClient(web) as http:
        with pytest.raises(miyaq.MiyaqError, match=r"^client is closed: .*make one in the lifespan.*app\.aio"):
            http.post("/add", json={"a": 1, "b": 2})


def test_the_documented_app_serves_one_lifespan_after_another(node, thread_worker):
    """The pattern docs/python-api.md shows: the client made in the
    lifespan, for each run of the app, on ``app.state``."""
    thread_worker(basic.app, node.endpoint, queues=["default"], concurrency=2)

    async def enqueue(request: Request) -> JSONResponse:
        body = await request.json()
        handle = await request.app.state.miyaq.submit("add", [body["a"], body["b"]], wait=True)
        return JSONResponse({"id": handle.id}, status_code=202)

    async def outcome(request: Request) -> JSONResponse:
        return JSONResponse({"result": await request.app.state.miyaq.result(request.path_params["task_id"],
                                                                              timeout=10)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with miyaq.aio.Client(node.endpoint, submit_timeout=10.0) as client:
            app.state.miyaq = client
            yield

    web = Starlette(routes=[Route("/add", enqueue, methods=["POST"]), Route("/result/{task_id}", outcome)],
                    lifespan=lifespan)
    for run in range(3):
        with TestClient(web) as http:
            task_id = http.post("/add", json={"a": run, "b": 10}).json()["id"]
            assert http.get(f"/result/{task_id}").json() == {"result": run + 10}
