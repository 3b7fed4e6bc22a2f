"""miyaq: a fast, clusterable, replicated task queue for Python on ZeroMQ.

.. code-block:: python

    import miyaq

    with miyaq.Client() as client:     # MIYAQ_CONNECT, a dev cluster started here, or tcp://127.0.0.1:7450
        handle = client.submit("add", [2, 3], queue="docs", wait=True)
        print(client.status(handle.id)["state"])      # ready: no worker serves "docs" yet

docs/python-api.md describes the API; docs/index.md all the documentation.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .client.client import Client, Received, new_id  # noqa: E402
from .client.handle import TaskHandle  # noqa: E402
from .errors import (  # noqa: E402
    BadEncoding, BadFrame, BadVersion, Busy, ConfigError, Forbidden, InvalidField, MiyaqError,
    NotEnoughReplicas, NotFound, ProtocolError, Reject, Retry, ShuttingDown, TaskCancelled,
    TaskExpired, TaskFailed, Timeout, TooLarge, Unavailable, UnknownCommand,
)
from .app import App, TaskDef  # noqa: E402
from .worker.context import TaskContext, current_task  # noqa: E402

__all__ = [
    "App", "TaskDef", "Client", "Received", "TaskHandle", "TaskContext", "current_task", "new_id",
    "MiyaqError", "ProtocolError", "BadFrame", "BadVersion", "BadEncoding", "UnknownCommand",
    "TooLarge", "InvalidField", "Busy", "Timeout", "NotFound", "ShuttingDown", "NotEnoughReplicas",
    "Unavailable", "Forbidden", "ConfigError", "TaskFailed", "TaskCancelled", "TaskExpired",
    "Retry", "Reject",
]
