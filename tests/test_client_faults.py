"""The threaded client against real nodes that misbehave."""
from __future__ import annotations

import pytest

import miyaq
from miyaq.testing.harness import ThreadNode, free_port


def test_node_restarting_mid_pipeline_every_submit_is_accepted_by_the_new_node(client_for):
    """Fault: the node stops while a burst of submits is in flight and a new
    one comes up on the same port (an in-memory node: what was not
    acknowledged is gone). The client resends what was not acknowledged, to
    the new node, with the same ids; every handle ends accepted."""
    port = free_port()
    first = ThreadNode(port=port, heartbeat=0.25, shutdown_grace=0.2).start()
    second = None
    client = client_for(first.endpoint, submit_timeout=30.0, ack_timeout=0.5)
    try:
        client.status()                       # reached once: later failures are retried, not first contact
        handles = [client.submit("echo", [i]) for i in range(3000)]
        first.stop()
        late = [client.submit("echo", [i]) for i in range(3000, 3100)]
        second = ThreadNode(port=port, heartbeat=0.25).start()
        client.flush(timeout=30.0)
        assert all(h.accepted for h in handles + late)
        # The new node holds at least what was submitted after the stop, at most everything.
        assert 100 <= client.status()["totals"]["live"] <= 3100
        assert all(client.status(h.id)["state"] == "ready" for h in late[:5])
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_client_as_a_context_manager_refuses_submits_after_close(node):
    with miyaq.Client(node.endpoint) as client:
        client.submit("echo", [1], wait=True)
    with pytest.raises(miyaq.MiyaqError, match="client is closed"):
        client.submit("echo", [2])
