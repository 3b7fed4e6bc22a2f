"""Where a request comes from: the checks that keep other web sites out of
the gateway (docs/http.md, "Browsers and other web sites").

A browser lets any page send a few kinds of request to any address --
a ``<form method=post>``, a ``fetch(..., {mode: "no-cors"})`` -- with the
browser's own cookies and network position (this machine's loopback).
The gateway refuses what such a page can send:

* :func:`refuse_cross_site`: a state-changing request (any method but GET,
  HEAD and OPTIONS) that the browser marks as sent by another site
  (``Sec-Fetch-Site: cross-site`` or ``same-site``), or whose ``Origin``
  is not the request's own ``scheme://host:port``, is a 403 ``forbidden``.
  ``same-site`` is refused too: a site is a registrable domain with every
  port and subdomain, so any other server on this machine (a dev server on
  ``localhost:3000``) is "same-site" with the gateway; the console's own
  pages send ``same-origin``, a typed address or bookmark ``none``. Clients
  that send neither header (curl, the SDKs, ``miyaq queue``, the console's
  calls to other members) are not affected.
* :func:`refuse_form_body`: a state-changing request to an endpoint that
  takes no forms is a 415 when it carries what an HTML form sends (a
  ``multipart/form-data`` or ``text/plain`` body, or a
  ``application/x-www-form-urlencoded`` one that is not JSON -- empty
  included), whether or not the endpoint reads its body.
* :class:`HostCheck`: a gateway without tokens answers only requests whose
  ``Host`` is an IP address, ``localhost`` or a name the node is configured
  with. Otherwise a page on the attacker's name that DNS later points at
  127.0.0.1 ("DNS rebinding") is the same origin as the gateway for the
  browser, and could read and act through it. With tokens the Host is not
  checked: the attacker's page has no token.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from miyaq.errors import Forbidden
from miyaq.gateway.errors import UnsupportedMediaType
from miyaq.gateway.request import FORM_TYPE, Request

#: Methods that change nothing (a browser sends them cross-site freely; they are not refused here).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: ``Sec-Fetch-Site`` values a browser gives a request another site started.
FOREIGN_SITES = frozenset({"cross-site", "same-site"})
#: The JSON endpoints documented to take form bodies (docs/http.md, "Content types").
FORM_ROUTES = frozenset({"/queue", "/queue/{queue}"})
#: Body types an HTML form can send besides URL-encoded.
OTHER_FORM_TYPES = frozenset({"multipart/form-data", "text/plain"})
DEFAULT_PORTS = {"http": 80, "https": 443}
LOCALHOST = "localhost"
SHOWN = 100    # characters of a refused Host or Origin named in an error
HOST_VERDICTS = 64    # Host values whose verdict is kept (all forgotten when full)


def request_scheme(request: Request, tls: bool) -> str:
    """``https`` or ``http``: the scheme the browser used. A proxy in front
    of the gateway that terminates TLS says so with ``X-Forwarded-Proto``
    (a page on another site cannot set that header without a CORS
    preflight, which the gateway never grants)."""
    forwarded = request.header("X-Forwarded-Proto").split(",", 1)[0].strip().lower()
    if forwarded in DEFAULT_PORTS:
        return forwarded
    return "https" if tls else "http"


def _origin_of(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``scheme://netloc``, the port defaulted from
    the scheme; None if it is not a plain ``host[:port]``."""
    if scheme not in DEFAULT_PORTS or not netloc or any(c in netloc for c in "/?#@\\ "):
        return None
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:   # a port that is not a number, or out of range
        return None
    if not parts.hostname:
        return None
    return scheme, parts.hostname.rstrip("."), port


def same_origin(request: Request, tls: bool) -> bool:
    """Does the request's ``Origin`` name this gateway as the browser reached
    it (scheme, ``Host``, port)? ``null`` and anything malformed do not."""
    origin = request.header("Origin").strip()
    scheme, sep, netloc = origin.partition("://")
    theirs = _origin_of(scheme.lower(), netloc) if sep else None
    ours = _origin_of(request_scheme(request, tls), request.header("Host").strip())
    return theirs is not None and theirs == ours


def refuse_cross_site(request: Request, tls: bool) -> None:
    """Raise :class:`Forbidden` if a browser sent this state-changing request
    for a page of another site (module doc); GET, HEAD and OPTIONS pass."""
    if request.method in SAFE_METHODS:
        return
    site = request.header("Sec-Fetch-Site").strip().lower()
    if site in FOREIGN_SITES:
        raise Forbidden(f"cross-site requests are refused: the browser marked this {request.method} "
                        f"'Sec-Fetch-Site: {site}' (sent for a page of another site)")
    if request.header("Origin") and not same_origin(request, tls):
        raise Forbidden(f"cross-site requests are refused: this {request.method} comes from a page of "
                        f"another origin ({request.header('Origin')[:SHOWN]!r})")


def refuse_form_body(request: Request, template: str) -> None:
    """Raise :class:`UnsupportedMediaType` (415, naming Content-Type) if this
    state-changing request to ``template`` carries what an HTML form sends
    and the endpoint takes no forms. A URL-encoded-labelled body that is JSON
    passes (``curl -d '{...}'``: no HTML form can encode one)."""
    if request.method in SAFE_METHODS or template in FORM_ROUTES:
        return
    media, _ = request.media_type()
    if media in OTHER_FORM_TYPES:
        raise UnsupportedMediaType(f"this endpoint takes no form: expected Content-Type application/json, "
                                   f"got {media!r}", field="Content-Type")
    if media == FORM_TYPE:
        request.json(required=False)     # 415 unless the body is JSON (an empty one included)


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``),
    lower case without a trailing dot; None if it is not one."""
    value = value.strip()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket:
            return None
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not (rest[:1] == ":" and rest[1:].isdigit()):
        return None
    name = name.lower().rstrip(".")
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """The ``Host`` names an open gateway answers to: any IP address,
    ``localhost`` (any port) and ``names`` (the node's ``host``,
    ``http_host``, ``advertise`` and advertised host)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(n for n in (host_name(name) for name in names if name) if n) | {LOCALHOST}
        self._verdicts: dict[str, bool] = {}    # Host value -> allowed: at most HOST_VERDICTS

    def allows(self, value: str) -> bool:
        """May a request with this ``Host`` header be answered? No header at
        all (HTTP/1.0) may: every browser sends one. The verdicts of the
        last few values are kept (parsing an address costs a few µs a
        request; clients send the same few values)."""
        verdict = self._verdicts.get(value)
        if verdict is None:
            verdict = self._judge(value)
            if len(self._verdicts) >= HOST_VERDICTS:
                self._verdicts.clear()
            self._verdicts[value] = verdict
        return verdict

    def _judge(self, value: str) -> bool:
        if not value:
            return True
        name = host_name(value)
        return name is not None and (name in self.names or _is_ip(name))

    def check(self, request: Request) -> None:
        """Raise :class:`Forbidden` unless :meth:`allows` the request's ``Host``."""
        value = request.header("Host")
        if not self.allows(value):
            raise Forbidden(f"Host {value[:SHOWN]!r} is not a name of this node: a gateway without tokens "
                            "answers only to an IP address, localhost or the node's configured host names "
                            "(a page on another name could reach it by DNS rebinding); use one of those, "
                            "set --advertise to this name, or require tokens (docs/http.md)")
