"""The one exception tree of miyaq.

Every error a user can see derives from :class:`MiyaqError`. Each class has a
``code``: the same string travels on the wire in ERROR replies
(docs/protocol.md, "Error codes"), so a remote failure is re-raised on the
client as the same class. ``retryable`` says whether the same request may
succeed if sent again later; the client retries those (with backoff, on
another node), the HTTP gateway answers them 503 with ``Retry-After``.
"""
from __future__ import annotations

from typing import Any, ClassVar


class MiyaqError(Exception):
    """Root of every miyaq error. ``code`` is the wire error code."""

    code = "internal"
    #: The node could not take the request now (full, draining, short of
    #: replicas, unreachable): sending it again later may succeed.
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class ProtocolError(MiyaqError):
    """A frame or body that does not follow the protocol."""

    code = "protocol"


class BadFrame(ProtocolError):
    """The message has the wrong number of frames."""

    code = "bad_frame"


class BadVersion(ProtocolError):
    """The protocol tag or version is not one this node speaks."""

    code = "bad_version"


class BadEncoding(ProtocolError):
    """The body is not valid msgpack."""

    code = "bad_encoding"


class UnknownCommand(ProtocolError):
    """The command is not one this node knows."""

    code = "unknown_command"


class TooLarge(ProtocolError):
    """The message is larger than the configured limit."""

    code = "too_large"


class TooManyValues(TooLarge):
    """The body decodes to more values than any message of the protocol holds
    (:data:`miyaq.protocol.codec.MAX_VALUES`): sent by no client. The node
    drops its connection's later messages unread (:mod:`miyaq.core.ignored`)."""


class InvalidField(ProtocolError):
    """A field is missing, has the wrong type or an out-of-range value."""

    code = "invalid_field"


class Busy(MiyaqError):
    """The node (or every node tried) is full; the submit was not accepted in time."""

    code = "busy"
    retryable = True


class Timeout(MiyaqError):
    """The operation did not complete before its deadline."""

    code = "timeout"


class NotFound(MiyaqError):
    """No task (or tombstone) with this id is known."""

    code = "not_found"


class ShuttingDown(MiyaqError):
    """The node is draining for shutdown and takes no new work."""

    code = "shutting_down"
    retryable = True


class NotEnoughReplicas(MiyaqError):
    """Fewer holders than min_acks stored the task in time."""

    code = "not_enough_replicas"
    retryable = True


class Unavailable(MiyaqError):
    """No node could be reached."""

    code = "unavailable"
    retryable = True


class Forbidden(MiyaqError):
    """The caller is known but may not do this: its key's role (docs/security.md),
    a read-only console, a console request without its CSRF token."""

    code = "forbidden"


class ConfigError(MiyaqError):
    """A setting is missing or invalid."""

    code = "config"


class TaskFailed(MiyaqError):
    """The task ended in failure; ``remote_type`` and ``remote_message`` say why."""

    code = "task_failed"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message, **details)
        self.remote_type: str = details.get("remote_type", "")
        self.remote_message: str = details.get("remote_message", "")
        self.traceback: str = details.get("traceback", "")


class TaskCancelled(MiyaqError):
    """The task was cancelled before it finished."""

    code = "task_cancelled"


class TaskExpired(MiyaqError):
    """The task's ttl passed before it started."""

    code = "task_expired"


class Retry(MiyaqError):
    """Raised by a handler to ask for a retry (optionally after ``delay`` seconds)."""

    code = "retry"

    def __init__(self, message: str = "", delay: float | None = None) -> None:
        super().__init__(message or "retry requested")
        self.delay = delay


class Reject(MiyaqError):
    """Raised by a handler to fail the task without retrying (dead-letter it)."""

    code = "reject"


_BY_CODE: dict[str, type[MiyaqError]] = {}


def _index(cls: type[MiyaqError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(MiyaqError)


def from_wire(payload: dict[str, Any]) -> MiyaqError:
    """Rebuild the exception a node sent as ``{"code", "message", ...}``.

    Total over any map (what a buggy or hostile node may send): the other
    fields become ``details``, only those named by a string (no ``self``)."""
    payload = dict(payload)
    code = str(payload.pop("code", "internal"))
    message = str(payload.pop("message", ""))
    cls = _BY_CODE.get(code, MiyaqError)
    if cls in (Retry,):
        cls = MiyaqError
    details = {k: v for k, v in payload.items() if isinstance(k, str) and k != "self"}
    err = cls(message, **details)
    err.code = code
    return err
