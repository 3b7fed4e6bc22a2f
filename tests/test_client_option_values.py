"""A task option value the node would refuse fails in the caller, at
``submit()``, with InvalidField naming the option, nothing sent -- threaded,
gevent and asyncio clients, ``TaskDef`` calls and webhook submits alike
(miyaq.client.option_values). The node still checks every submit."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

import miyaq
import miyaq.aio

pytestmark = pytest.mark.timeout(60)

KITS = pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])

#: By the option named: a submit with a value the node refuses.
REFUSED: dict[str, Callable[[Any], Any]] = {
    "countdown": lambda c: c.submit("echo", [1], countdown=-0.5),
    "priority": lambda c: c.submit("echo", [1], priority="high"),
    "ttl": lambda c: c.submit("echo", [1], ttl=0),
    "max_retries": lambda c: c.submit("echo", [1], max_retries=-3),
    "timeout": lambda c: c.submit("echo", [1], timeout=0),
    "queue": lambda c: c.submit("echo", [1], queue="no spaces"),
    "key": lambda c: c.submit("echo", [1], key="k" * 300),
    "at_most_once": lambda c: c.submit("echo", [1], at_most_once="yes"),
    "replicas": lambda c: c.submit("echo", [1], replicas=0),
    "eta": lambda c: c.submit("echo", [1], eta=1.0, countdown=5),
    "backoff": lambda c: c.submit_url("http://127.0.0.1:9/hook", b"", backoff=-1),
}


@KITS
@pytest.mark.parametrize("option", sorted(REFUSED))
def test_a_fire_and_forget_submit_with_a_value_the_node_refuses_raises_at_once(node, client_for, green, option):
    """Fault: a submit nobody waits for (a web handler's) with an option
    value the node refuses (a negative countdown, a priority "high"). Before
    2026-12-07 it returned a handle and the refusal came back to nobody:
    the task was lost, seen only at the next ``flush()`` or at exit. Now
    InvalidField naming the option, nothing sent; the client works on."""
    client = client_for(node.endpoint, green=green)
    with pytest.raises(miyaq.InvalidField, match=f"option '{option}'") as raised:
        REFUSED[option](client)
    assert raised.value.details["field"] == option
    client.flush(timeout=30)
    assert client.submit("echo", ["after"], wait=True).accepted
    assert client.status()["totals"]["live"] == 1


def test_the_asyncio_client_and_a_task_definition_check_the_same(node):
    """Fault: as above, through ``miyaq.aio.Client.submit`` and a
    ``TaskDef``'s ``submit``/``call``: InvalidField at the call, nothing sent."""
    app = miyaq.App(node.endpoint)

    @app.task(name="echo")
    def echo(x: int) -> int:
        return x

    try:
        with pytest.raises(miyaq.InvalidField, match="option 'countdown'"):
            echo.submit(1, countdown=-1)
        with pytest.raises(miyaq.InvalidField, match="option 'priority'"):
            echo.call(1, priority=1.5, timeout=5)

        async def main() -> None:
            async with miyaq.aio.Client(node.endpoint) as client:
                with pytest.raises(miyaq.InvalidField, match="option 'ttl'"):
                    await client.submit("echo", [1], ttl=-5)
                assert (await client.status())["totals"]["live"] == 0

        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        app.close()


def test_an_empty_queue_is_still_the_default_queue(node, client_for):
    """Guard: ``queue=""`` was always the node's ``default`` queue; the check
    in the caller leaves it so."""
    client = client_for(node.endpoint)
    handle = client.submit("echo", [1], queue="", wait=True)
    assert client.status(handle.id)["queue"] == "default"


@pytest.mark.parametrize("queue", [0, False, 0.0, [], {}], ids=["zero", "false", "zero-float", "list", "map"])
def test_the_node_refuses_a_falsy_queue_that_is_not_a_string_as_the_client_does(queue):
    """Fault: a producer that is not this client (another language, a raw
    SUBMIT) sends ``"queue": 0`` or ``false``. The node read any falsy value
    as ``default`` and stored the task there, while this client refuses the
    same option: the two checks disagreed. Now the node refuses it too,
    naming the field; a periodic schedule's queue alike."""
    from miyaq.config import NodeConfig
    from miyaq.protocol.periodic import schedule_from_wire
    from miyaq.protocol.taskspec import task_from_wire

    config = NodeConfig()
    with pytest.raises(miyaq.InvalidField, match="field 'queue'") as refused:
        task_from_wire({"id": "t1", "name": "echo", "queue": queue}, 0.0, config)
    assert refused.value.details["field"] == "queue"
    with pytest.raises(miyaq.InvalidField, match="field 'queue'"):
        schedule_from_wire({"name": "s", "task": "echo", "every": 60, "queue": queue})
    with pytest.raises(miyaq.InvalidField, match="option 'queue'"):
        miyaq.client.option_values.check_option_values({"queue": queue})


@pytest.mark.parametrize("queue", [None, ""], ids=["nil", "empty"])
def test_a_nil_or_empty_queue_is_still_the_default_queue_in_the_node(queue):
    """Guard: an absent, nil or empty ``queue`` was always ``default`` (the
    HTTP form's empty ``task.queue`` among them); refusing ``0`` keeps it."""
    from miyaq.config import NodeConfig
    from miyaq.protocol.periodic import schedule_from_wire
    from miyaq.protocol.taskspec import task_from_wire

    assert task_from_wire({"id": "t1", "name": "echo", "queue": queue}, 0.0, NodeConfig()).queue == "default"
    assert task_from_wire({"id": "t2", "name": "echo"}, 0.0, NodeConfig()).queue == "default"
    assert schedule_from_wire({"name": "s", "task": "echo", "every": 60, "queue": queue}).queue == "default"
