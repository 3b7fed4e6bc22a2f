"""A client sends a new submit to its task's first holder on the ring
(miyaq.client.placement), learnt from the RING replies of discovery; a
retry, an unknown or unreachable first holder and a ring it may not build
leave the submit round-robin. Driven through the sans-I/O core by hand."""
from __future__ import annotations

import math
from typing import Any

import msgpack

from miyaq.client.core import ClientCore
from miyaq.client.nodes import Nodes
from miyaq.client.placement import MAX_POINTS
from miyaq.client.pending import Pending
from miyaq.protocol import codec
from miyaq.protocol import commands as c
from miyaq.protocol.ring import DEFAULT_VNODES, Ring
from test_client_core import FakeTransport

ENDPOINTS = [f"tcp://127.0.0.1:{7450 + i}" for i in range(3)]
# The client knows the endpoints in another order than the node ids sort:
# the mapping from member to connection is what is under test, not the order.
MEMBERS = {"n-a": ENDPOINTS[2], "n-b": ENDPOINTS[0], "n-c": ENDPOINTS[1]}


class Sent(FakeTransport):
    """The core's fake transport (test_client_core), every node connected."""

    def __init__(self) -> None:
        super().__init__()
        self.connected = set(range(8))

    def reconnect(self, node: int) -> None:
        pass

    def submits(self) -> dict[str, int]:
        """Task id -> the node its SUBMIT went to (and forgets them)."""
        return {t["id"]: node for node, command, body in self.take() if command == c.SUBMIT for t in body["tasks"]}


class Waiter:
    def set(self, value: Any) -> None:
        pass

    def fail(self, error: Any) -> None:
        pass


def ring_reply(req: int, members: dict[str, str] = MEMBERS, *, weights: dict[str, Any] | None = None,
               vnodes: Any = DEFAULT_VNODES, node: str | None = None) -> list[bytes]:
    weights = weights or {}
    body = {"req": req, "epoch": 3, "leader": "n-a", "vnodes": vnodes, "node": node,
            "members": {m: {"service": s, "weight": weights.get(m, 1.0), "share": 0.3} for m, s in members.items()}}
    return codec.encode(c.REPLY, body)


def discovered(endpoints: list[str] = ENDPOINTS, **reply: Any) -> tuple[ClientCore, Sent]:
    """A core that asked for the ring and got ``reply``'s answer."""
    sent = Sent()
    core = ClientCore(sent, Nodes(list(endpoints)), max_batch=512, ack_timeout=5.0, max_message=1 << 24)
    core.on_timer(0.0)
    (node, command, body), = sent.take()
    assert command == c.RING
    core.on_frames(node, ring_reply(body["req"], **reply), 0.01)
    return core, sent


def submit(core: ClientCore, task_id: str, **wire: Any) -> None:
    core.submit(Pending({"id": task_id, "name": "echo", "body": b"", **wire}, Waiter(), 0.0, 30.0))


def first_holders(keys: list[str], weights: dict[str, float] | None = None) -> dict[str, int]:
    """What the nodes compute: each key's rank-0 holder, as the client's node index."""
    ring = Ring({m: (weights or {}).get(m, 1.0) for m in MEMBERS}, DEFAULT_VNODES)
    return {k: ENDPOINTS.index(MEMBERS[ring.preference_list(k, 3)[0]]) for k in keys}


def test_each_new_submit_goes_to_its_tasks_first_holder_on_the_nodes_ring() -> None:
    """The client's ring places every task where the nodes' own ring
    (``preference_list``, rank 0) does, through the connection to that member."""
    core, sent = discovered()
    ids = [f"task-{i}" for i in range(300)]
    for task_id in ids:
        submit(core, task_id)
    core.on_timer(0.1)
    where = sent.submits()
    assert where == first_holders(ids)
    assert set(where.values()) == {0, 1, 2}        # all three nodes are someone's first holder


def test_a_task_with_a_key_goes_to_the_first_holder_of_its_key() -> None:
    core, sent = discovered()
    keys = [f"customer-{i}" for i in range(60)]
    for i, key in enumerate(keys):
        submit(core, f"t{i}", key=key)
    core.on_timer(0.1)
    expected = first_holders(keys)
    assert sent.submits() == {f"t{i}": expected[key] for i, key in enumerate(keys)}


def test_weights_move_placement_as_they_move_the_ring() -> None:
    weights = {"n-a": 3.0, "n-b": 0.5, "n-c": 1.0}
    core, sent = discovered(weights=weights)
    ids = [f"w{i}" for i in range(200)]
    for task_id in ids:
        submit(core, task_id)
    core.on_timer(0.1)
    assert sent.submits() == first_holders(ids, weights)


def test_a_first_holder_whose_connection_is_down_is_skipped_for_the_next_node() -> None:
    """Fault: the first holder's connection closed (the node died). Its tasks
    go round-robin to the nodes that are up, not to the dead one."""
    core, sent = discovered()
    core.nodes.mark(0, False)
    ids = [f"d{i}" for i in range(200)]
    for task_id in ids:
        submit(core, task_id)
    core.on_timer(0.1)
    where = sent.submits()
    homes = first_holders(ids)
    assert all(where[t] == homes[t] for t in ids if homes[t] != 0)
    assert {where[t] for t in ids if homes[t] == 0} <= {1, 2}


def test_a_retry_goes_to_another_node_than_the_first_holder_that_refused_it() -> None:
    """Fault: the first holder answers BUSY. The retry is not placed again
    (it would go back to the busy node): it goes to the next node."""
    core, sent = discovered()
    submit(core, "busy-task")
    core.on_timer(0.1)
    (home,) = sent.submits().values()
    core.on_frames(home, codec.encode(c.SUBMITTED, {"results": [["busy-task", "rejected",
                                                                  {"code": "busy", "message": "full"}]]}), 0.2)
    core.on_timer(5.0)
    (again,) = sent.submits().values()
    assert again != home


def test_a_ring_reply_the_client_may_not_build_leaves_submits_round_robin() -> None:
    """Fault: a node (misconfigured, or hostile) answers RING with weights or
    a size the client will not build a ring of. Nothing raises; submits go
    round-robin -- and a good reply afterwards places them again."""
    bad: list[dict[str, Any]] = [
        {"weights": {"n-a": math.nan}},
        {"weights": {"n-a": math.inf}},
        {"weights": {"n-a": "heavy"}},
        {"weights": {"n-a": -1.0}},
        {"weights": {"n-a": True}},
        {"weights": {m: 1.0 for m in MEMBERS}, "vnodes": MAX_POINTS},       # three times too many points
        {"vnodes": 0},
        {"vnodes": "160"},
        {"members": {"n-a": ENDPOINTS[0]}},                               # one member: nothing to place
        {"members": {"n-x": "tcp://127.0.0.1:1", "n-y": "tcp://127.0.0.1:2"}, "weights": {"n-x": 1e300}},
    ]
    for reply in bad:
        core, sent = discovered(**reply)
        assert core.nodes.placement is None, reply
        for i in range(6):
            submit(core, f"r{i}")
        core.on_timer(0.1)
        where = list(sent.submits().values())
        counts = [where.count(i) for i in range(len(core.nodes))]
        assert max(counts) - min(counts) <= 1, (reply, counts)             # round-robin, whatever the ids
    core, sent = discovered()
    assert core.nodes.placement is not None
    core.nodes.from_ring(msgpack.unpackb(ring_reply(0, weights={"n-a": math.nan})[2], raw=False))
    assert core.nodes.placement is None                                # a bad reply later: round-robin again


def test_the_ring_is_built_again_only_when_it_changed() -> None:
    core, _ = discovered()
    placement = core.nodes.placement
    assert placement is not None
    body = msgpack.unpackb(ring_reply(0)[2], raw=False)
    core.nodes.from_ring(body)
    assert core.nodes.placement is not None and core.nodes.placement.ring is placement.ring
    core.nodes.from_ring(msgpack.unpackb(ring_reply(0, weights={"n-b": 2.0})[2], raw=False))
    assert core.nodes.placement is not None and core.nodes.placement.ring is not placement.ring


def test_a_member_reached_over_a_unix_socket_is_placed_on_that_socket() -> None:
    """The answering node is reached at ipc://; the ring names its TCP
    endpoint, which the client does not dial: its tasks go to the socket."""
    ipc = "ipc:///tmp/miyaq-test-node.sock"
    core, sent = discovered([ipc], members={"n-a": "tcp://127.0.0.1:7460", "n-b": "tcp://127.0.0.1:7461"},
                            node="n-a")
    assert sent.new == ["tcp://127.0.0.1:7461"] and core.nodes.endpoints == [ipc, "tcp://127.0.0.1:7461"]
    ring = Ring({"n-a": 1.0, "n-b": 1.0}, DEFAULT_VNODES)
    ids = [f"u{i}" for i in range(100)]
    for task_id in ids:
        submit(core, task_id)
    core.on_timer(0.1)
    assert sent.submits() == {t: 0 if ring.preference_list(t, 2)[0] == "n-a" else 1 for t in ids}


def test_a_standalone_node_leaves_the_client_without_placement() -> None:
    core, sent = discovered([ENDPOINTS[0]], members={"solo": ENDPOINTS[0]})
    assert core.nodes.placement is None
    submit(core, "lone")
    core.on_timer(0.1)
    assert sent.submits() == {"lone": 0}
