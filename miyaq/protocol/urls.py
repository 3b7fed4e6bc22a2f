"""What a webhook task's URL must be.

Two checks, for two kinds of URL:

* :func:`check_new_url`, at every new submit (a ZeroMQ SUBMIT, ``POST
  /queue``; :func:`~miyaq.protocol.taskspec.task_from_wire`): an absolute
  ``http://`` or ``https://`` URL the node can send a request to -- a host
  that is a host name or an IP literal, a port from 1 to 65535 if one is
  given, no space or other control character. Anything else is refused at
  once (:class:`~miyaq.errors.InvalidField` naming the field) rather than
  stored and dead-lettered at its first attempt.
* nothing more than the ``http://``/``https://`` prefix for a task record
  already stored (the log's replay, a peer's copy:
  :func:`~miyaq.protocol.taskspec.check_target`): a record an older node
  stored before these checks is still taken, and its delivery fails
  ``InvalidURL`` without sending anything (:mod:`miyaq.gateway.outbound`).
  A stored record never makes a request fail.

A new URL may not hold credentials (``user:password@``,
:func:`check_no_userinfo`): the node never sent them (no ``Authorization``
header reached the destination) yet stored, showed and logged them with the
task; credentials go in the task's ``headers``. A stored task's URL that
holds them is still taken and delivered as before, without them. Log lines
name a URL by :func:`url_for_logs`: never its credentials or query.

Nothing here resolves a name: whether a host may be reached (private
addresses, ``webhook_allow_hosts``) is the gateway's question
(:mod:`miyaq.gateway.destinations`).
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from miyaq.errors import InvalidField

#: What no request target may hold: a space, or another control character.
_UNSENDABLE_IN_URL = re.compile(r"[\x00-\x20\x7f]")
SCHEMES = ("http", "https")


def check_sendable_url(url: str, field: str = "url") -> str:
    """``url`` if a request can carry it; else :class:`InvalidField` naming
    ``field``: it holds a space or another control character."""
    found = _UNSENDABLE_IN_URL.search(url)
    if found is not None:
        raise InvalidField(f"field {field!r} holds {found.group()!r}: a URL may hold no space or other control "
                           "character (percent-encode it: %20)", field=field)
    return url


def is_ip_literal(host: str) -> bool:
    """True if ``host`` (as ``urlsplit`` gives it: no brackets) is an IPv4 or
    IPv6 address, an IPv6 zone (``%eth0``) allowed."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_host_name(url: str, field: str = "url") -> None:
    """:class:`InvalidField` naming ``field`` if the host of ``url`` is no
    host name: an empty label (``a..b``), one over 63 characters, or one
    IDNA cannot encode. Such a host can never be resolved. An IP literal, a
    URL without a host or one ``urlsplit`` refuses pass: the URL check
    (:func:`check_new_url`) names those."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return
    if not host or is_ip_literal(host):
        return
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise InvalidField(f"the host of {url!r} is not a valid host name ({exc})", field=field) from None


def _parts(url: str) -> SplitResult | None:
    """``url`` split, if it is an http(s) URL with a host and a port from 1
    to 65535 (or none); else None."""
    try:
        parts = urlsplit(url)
        port = parts.port       # ValueError: not a number, or over 65535
    except ValueError:
        return None
    if parts.scheme not in SCHEMES or not parts.hostname or port == 0:
        return None
    return parts


def check_no_userinfo(parts: SplitResult, field: str = "url") -> None:
    """:class:`InvalidField` naming ``field`` if the URL holds credentials
    (``user:password@host``, or any ``@`` before its host). The node never
    sends them -- no ``Authorization`` header would reach the destination --
    and it keeps and shows a task's URL as written (``GET /tasks/{id}``, the
    console, ``miyaq status``): before 2026-12-06 such a URL was taken, its
    password stored and shown to whoever could read the task, and the
    request went out without it. The error never repeats the URL."""
    if "@" in parts.netloc:
        raise InvalidField(f"field {field!r} holds credentials (user:password@ before the host): the node does "
                           "not send them, and would store and show them with the task; put them in the "
                           "task's headers instead, e.g. 'Authorization': 'Basic <base64 of user:password>' "
                           "or 'Bearer <token>'", field=field)


def check_new_url(url: str, field: str = "url") -> str:
    """``url`` if a new webhook task may have it: no space or other control
    character (:func:`check_sendable_url`), ``http`` or ``https`` with a host
    that is a host name or an IP literal (:func:`check_host_name`), a port
    from 1 to 65535 if it names one, and no credentials
    (:func:`check_no_userinfo`). Else :class:`InvalidField` naming
    ``field``. For new submits only, never for a stored record (see the
    module's docstring)."""
    check_sendable_url(url, field)
    parts = _parts(url)
    if parts is None:
        raise InvalidField(f"field {field!r} must be an absolute http:// or https:// URL with a host "
                           "(and a port from 1 to 65535, if it names one)", field=field)
    check_no_userinfo(parts, field)
    check_host_name(url, field)
    return url


def url_for_logs(url: str) -> str:
    """``url`` as a log line may name it: ``scheme://host[:port]/path``,
    never its credentials (``user:password@``), query (an ``api_key=``) or
    fragment; a space or control character in the path (a URL an older
    node stored) percent-encoded. Never raises."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(a URL that does not parse)"
    if ":" in host:
        host = f"[{host}]"
    path = _UNSENDABLE_IN_URL.sub(lambda found: quote(found.group()), parts.path)
    return urlunsplit((parts.scheme, host if port is None else f"{host}:{port}", path, "", ""))
