"""``miyaq.aio``: the asyncio client (docs/python-api.md, "asyncio").

.. code-block:: python

    import miyaq.aio

    async def main():
        async with miyaq.aio.Client("tcp://127.0.0.1:7450") as client:
            handle = await client.submit("add", [2, 3], wait=True)
            print(await handle.result(timeout=10))

The same protocol core as :class:`miyaq.Client` (miyaq.client.core), driven
by the event loop (:mod:`.driver`) on ``zmq.asyncio`` sockets.
"""
from __future__ import annotations

from .client import Client, Received, TaskHandle

__all__ = ["Client", "Received", "TaskHandle"]
