"""Errors only the HTTP gateway raises, and the one table that maps every
error code to an HTTP status.

All of them derive from :class:`miyaq.errors.MiyaqError`; an error response
is always ``{"error": {"code", "message", "field"?}}`` with the status from
:data:`HTTP_STATUS` (500 for a code not in it).
"""
from __future__ import annotations

from miyaq.errors import MiyaqError


class Unauthorized(MiyaqError):
    """A bearer token is required and the request did not carry the right one."""

    code = "unauthorized"


class MethodNotAllowed(MiyaqError):
    """The path exists but does not take this HTTP method."""

    code = "method_not_allowed"


class UnsupportedMediaType(MiyaqError):
    """The request body's Content-Type is not one this endpoint reads."""

    code = "unsupported_media_type"


class ForbiddenDestination(MiyaqError):
    """The webhook URL's host is not in the node's allow-list (webhook_allow_hosts)."""

    code = "forbidden_destination"


class RequestTimeout(MiyaqError):
    """The client did not send its request's headers or body in time (the
    gateway's header and body timeouts); the connection is closed."""

    code = "request_timeout"


class ClientClosedRequest(MiyaqError):
    """The client closed its connection while its long-poll waited
    (:mod:`miyaq.gateway.hangup`). Nobody reads the answer; it is counted
    under status 499 (nginx's name for it) in ``miyaq_http_requests``."""

    code = "client_closed_request"


HTTP_STATUS: dict[str, int] = {
    # the request is wrong: fix it, do not retry it as is
    "protocol": 400, "bad_frame": 400, "bad_version": 400, "bad_encoding": 400,
    "unknown_command": 400, "invalid_field": 400, "config": 400,
    "unauthorized": 401,
    "forbidden_destination": 403, "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "too_large": 413,
    "client_closed_request": 499,
    "unsupported_media_type": 415,
    # the node cannot take it now (MiyaqError.retryable): retry later (a Retry-After header is sent)
    "busy": 503, "shutting_down": 503, "not_enough_replicas": 503, "unavailable": 503,
    "timeout": 504,
    "internal": 500,
}


def http_status(err: MiyaqError) -> int:
    return HTTP_STATUS.get(err.code, 500)
