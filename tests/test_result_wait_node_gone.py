"""A result wait whose node restarted without a data dir during the wait:
the task is gone with it, and the ``NotFound`` says why."""
from __future__ import annotations

import asyncio

import pytest

import miyaq
import miyaq.aio
from miyaq.testing.harness import ThreadNode, free_port

HINT = r"^no task \w+: a node went away during the wait .* forgets the tasks it held"


def test_an_awaited_result_whose_memory_only_node_restarted_says_the_task_went_with_it():
    """Fault: a web handler awaits a task's result (``call_async``) while
    its node -- tasks in memory only, no ``--data-dir`` -- restarts. The
    restarted node knows no such task. Before, the handler got only
    ``NotFound: no task <id>`` for a task the node had accepted a moment
    before; now the error says a node went away during the wait and that
    a node without a data dir forgets its tasks."""
    port = free_port()
    nodes = [ThreadNode(port=port, heartbeat=0.25, shutdown_grace=0.2).start()]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with miyaq.aio.Client(nodes[0].endpoint) as client:
            handle = await client.submit("later", [1], countdown=60, wait=True)
            waiting = asyncio.ensure_future(handle.result(timeout=20))
            while (await client.status())["waiters"]["pending"] < 1:     # the node holds the long-poll
                await asyncio.sleep(0.02)
            await loop.run_in_executor(None, nodes[0].stop)
            nodes.append(await loop.run_in_executor(
                None, lambda: ThreadNode(port=port, heartbeat=0.25, shutdown_grace=0.2).start()))
            with pytest.raises(miyaq.NotFound, match=HINT):
                await waiting
            with pytest.raises(miyaq.NotFound, match=r"^no task \w+$"):     # a wait that saw no node go
                await client.result(handle.id, timeout=1)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        for n in nodes:
            n.stop()
