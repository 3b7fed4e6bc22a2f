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

from typing import TYPE_CHECKING, Any

#: Where each public name is defined. They are imported on first use
#: (PEP 562), so that ``import miyaq.errors`` -- or ``miyaq --help`` and
#: ``miyaq status``, whose command line imports this package first --
#: does not load the client, the app and the worker context it does not
#: need (about 150 ms of CPU at each start of the command line).
_WHERE = {
    **dict.fromkeys(("Client", "Received", "new_id"), "client.client"),
    "TaskHandle": "client.handle",
    **dict.fromkeys(("App", "TaskDef"), "app"),
    **dict.fromkeys(("TaskContext", "current_task"), "worker.context"),
    **dict.fromkeys((
        "BadEncoding", "BadFrame", "BadVersion", "Busy", "ConfigError", "Forbidden", "InvalidField",
        "MiyaqError", "NotEnoughReplicas", "NotFound", "ProtocolError", "Reject", "Retry",
        "ShuttingDown", "TaskCancelled", "TaskExpired", "TaskFailed", "Timeout", "TooLarge",
        "Unavailable", "UnknownCommand"), "errors"),
}

__all__ = [
    "App", "TaskDef", "Client", "Received", "TaskHandle", "TaskContext", "current_task", "new_id",
    "MiyaqError", "ProtocolError", "BadFrame", "BadVersion", "BadEncoding", "UnknownCommand",
    "TooLarge", "InvalidField", "Busy", "Timeout", "NotFound", "ShuttingDown", "NotEnoughReplicas",
    "Unavailable", "Forbidden", "ConfigError", "TaskFailed", "TaskCancelled", "TaskExpired",
    "Retry", "Reject",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked
    for and kept in this module's namespace after."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:     # what a type checker and an editor see: the names as they are defined
    from .app import App, TaskDef
    from .client.client import Client, Received, new_id
    from .client.handle import TaskHandle
    from .errors import (
        BadEncoding, BadFrame, BadVersion, Busy, ConfigError, Forbidden, InvalidField, MiyaqError,
        NotEnoughReplicas, NotFound, ProtocolError, Reject, Retry, ShuttingDown, TaskCancelled,
        TaskExpired, TaskFailed, Timeout, TooLarge, Unavailable, UnknownCommand,
    )
    from .worker.context import TaskContext, current_task
