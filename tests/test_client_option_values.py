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


_NOW = 1_800_000_000.0
_YEAR = 365 * 86400.0
#: option -> [(value, taken by the node)]: each bound, just inside and just past it.
BOUNDS: dict[str, list[tuple[Any, bool]]] = {
    "countdown": [(0, True), (10 * _YEAR, True), (10 * _YEAR + 1, False), (-0.001, False)],
    "ttl": [(0.001, True), (0.0009, False), (10 * _YEAR, True), (10 * _YEAR + 1, False)],
    "backoff": [(0.0, True), (_YEAR, True), (_YEAR + 1, False), (-1, False)],
    "backoff_max": [(0.0, True), (_YEAR, True), (_YEAR + 1, False), (-1, False), (True, False)],
    "timeout": [(0.01, True), (0.0099, False), (_YEAR, True), (_YEAR + 1, False), (float("nan"), False)],
    "offset": [(0.0, True), (_YEAR, True), (_YEAR + 1, False)],
    "eta": [(0.0, True), (-1.0, False), (_NOW, True), (float("inf"), False)],
    "priority": [(-(2**31), True), (2**31 - 1, True), (2**31, False), (-(2**31) - 1, False), (1.0, False)],
    "max_retries": [(0, True), (10_000, True), (10_001, False), (-1, False)],
    "replicas": [(1, True), (16, True), (17, False), (0, False)],
    "queue": [("q" * 128, True), ("q" * 129, False), ("q\n", False), ("a b", False), ("a:b.c-d_e", True)],
    "key": [("k" * 256, True), ("k" * 257, False), ("", False), (7, False)],
    "at_most_once": [(True, True), (1, False)],
}


@pytest.mark.parametrize("option", sorted(BOUNDS))
def test_the_callers_check_and_the_nodes_take_and_refuse_the_same_values_at_each_bound(option):
    """Bad input: each option's value at its bounds, just past them, and of
    the wrong type, checked by the caller (miyaq.client.option_values) and
    by the node (miyaq.protocol.taskspec). A value the caller passed and the
    node refused is a fire-and-forget task lost; one the caller refused and
    the node takes, a submit refused for nothing (mutation, review37: five
    bounds moved by one -- a key of 257 characters, a countdown of 11
    years, a priority of 2**31, max_retries 10,001, no check of
    backoff_max -- and a queue of 129 characters or ending in a newline
    accepted on both sides, passed every test)."""
    from miyaq.config import NodeConfig
    from miyaq.client.option_values import check_option_values
    from miyaq.protocol.taskspec import task_from_wire

    config = NodeConfig()
    for value, taken in BOUNDS[option]:
        try:
            task_from_wire({"id": "t", "name": "job", "body": b"", option: value}, _NOW, config)
            node = True
        except miyaq.InvalidField:
            node = False
        try:
            check_option_values({option: value})
            caller = True
        except miyaq.InvalidField as err:
            assert err.message.startswith(f"option '{option}'"), err.message
            caller = False
        assert (node, caller) == (taken, taken), (option, value)


@pytest.mark.parametrize("task_id,taken", [("i" * 64, True), ("i" * 65, False), ("id\n", False), ("a:b.c-d_e", True)])
def test_a_task_id_at_its_bounds(task_id, taken):
    """Bad input: a task id of 64 and 65 characters, one ending in a newline
    (``$`` would match before it: mutation, review37, passed every test)."""
    from miyaq.protocol.task_names import check_id, is_id

    assert is_id(task_id) is taken
    if taken:
        assert check_id(task_id) == task_id
    else:
        with pytest.raises(miyaq.InvalidField, match="field 'id' must be 1-64 characters"):
            check_id(task_id)


def test_the_queue_names_a_producer_remembers_are_bounded():
    """Bad input: a producer submitting to 3,000 queues of distinct names
    (one per user). The names it found good are remembered to spare their
    check, at most MAX_QUEUES_SEEN of them (mutation, review37: never
    emptying the set passed every test -- it grew with every name)."""
    from miyaq.client import option_values

    for i in range(3 * option_values.MAX_QUEUES_SEEN):
        option_values.check_option_values({"queue": f"user-{i}"})
    assert 0 < len(option_values._QUEUES_SEEN) <= option_values.MAX_QUEUES_SEEN
