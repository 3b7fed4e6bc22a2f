"""The answers the gateway's HTTP server (:mod:`miyaq.gateway.wsgi`) writes
itself, as raw bytes, before the application sees a request: a malformed
request line or headers, a request line too long, headers too large or late,
a plain-HTTP request on the HTTPS port, one connection too many from a
client. Each is in the gateway's JSON error shape (``{"error": {"code",
"message"}}``) and closes the connection; all but the last are built once,
at import.
"""
from __future__ import annotations

import json

from miyaq.gateway.conn_io import MAX_HEADER_BYTES


def raw_error(status: str, code: str, message: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 answer: ``status`` (``"400 Bad Request"``), the JSON
    error body of ``code`` and ``message``, ``extra`` header lines (each
    ending ``\\r\\n``; latin-1) and ``Connection: close``."""
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


MALFORMED = raw_error("400 Bad Request", "protocol", "malformed HTTP request line or headers")
LINE_TOO_LONG = raw_error("414 URI Too Long", "too_large", "the request line is too long")
HEADER_TIMEOUT = raw_error("408 Request Timeout", "request_timeout",
                           "the request line and headers did not arrive in time")
PLAIN_HTTP = raw_error("400 Bad Request", "protocol",
                       "this port serves HTTPS only (the node's http_cert): use an https:// URL, and give the "
                       "client the certificate's CA (curl --cacert, miyaq --http-ca) if it is not a public one")
HEADERS_TOO_LARGE = raw_error("431 Request Header Fields Too Large", "too_large",
                              f"the request's headers are over {MAX_HEADER_BYTES // 1024} KiB")


def too_many_connections(host: str, per_client: int) -> bytes:
    """The 503 ``busy`` answer to one connection more than ``per_client``
    (``http_max_client_connections``) from ``host`` (its
    :func:`~miyaq.gateway.wsgi.client_group`), with ``Retry-After: 1``."""
    return raw_error("503 Service Unavailable", "busy",
                     f"too many connections from {host} (http_max_client_connections "
                     f"{per_client}): close some, or, if many clients share this "
                     "address (a proxy, a NAT), raise --http-max-client-connections (0: no "
                     "cap) and let the proxy limit them", "Retry-After: 1\r\n")
