"""TCP endpoints written and read in one way, IPv4 and IPv6 alike.

A ZeroMQ TCP endpoint is ``tcp://HOST:PORT``; an IPv6 address is written in
brackets (``tcp://[2001:db8::1]:7450``, ``tcp://[::1]:7450``), as in a URL.
:func:`tcp_endpoint` writes one from a host and a port (the host as a user
gives it, with or without brackets), :func:`split_tcp` reads one back.

Which IP version a socket uses is the endpoint's (:func:`wants_ipv6`,
applied by :mod:`miyaq.runtime.connections` before each bind and connect): an
IPv6 address, bracketed, and ``::`` (every address of both versions, where
the host allows it) use IPv6; an IPv4 address, ``0.0.0.0`` and ``*`` use
IPv4. A host name (or an interface's) follows ``MIYAQ_IP_VERSION``
(:func:`names_version`): ``4``, the default, reaches it at its IPv4
address, as miyaq always has; ``6`` at its IPv6 address, or at its IPv4
address when it has none (libzmq's ``ZMQ_IPV6``, which asks for IPv6
addresses and IPv4-mapped ones). Not the default, because with it
``localhost`` is ``::1`` wherever /etc/hosts says so, and misses a node
bound to ``127.0.0.1``.

Pure functions of strings and the environment: no sockets, no resolving.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from ..errors import ConfigError

__all__ = ["IP_VERSION_ENV", "WILDCARDS", "bare_host", "is_address", "is_ipv6_address", "names_version", "split_tcp",
           "tcp_endpoint", "url_host", "wants_ipv6"]

#: The variable that says which IP version host names are reached over.
IP_VERSION_ENV = "MIYAQ_IP_VERSION"

#: The hosts that mean "every address" when bound.
WILDCARDS = frozenset({"*", "0.0.0.0", "::"})


def bare_host(host: str) -> str:
    """``host`` without the brackets an IPv6 address may come in."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def is_ipv6_address(host: str) -> bool:
    """Whether ``host`` (bracketed or not) is an IPv6 address, a zone
    (``fe80::1%eth0``) allowed."""
    address = bare_host(host).split("%", 1)[0]
    if ":" not in address:
        return False
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def is_address(host: str) -> bool:
    """Whether ``host`` (bracketed or not) is an IPv4 or IPv6 address, not a
    name; an IPv6 zone (``fe80::1%eth0``) allowed."""
    try:
        ipaddress.ip_address(bare_host(host).split("%", 1)[0])
    except ValueError:
        return False
    return True


def url_host(host: str) -> str:
    """``host`` as it is written before ``:PORT`` in an endpoint or a URL:
    an IPv6 address in brackets, anything else as it is."""
    bare = bare_host(host)
    return f"[{bare}]" if is_ipv6_address(bare) else bare


def tcp_endpoint(host: str, port: int) -> str:
    """``tcp://HOST:PORT``, an IPv6 address bracketed."""
    return f"tcp://{url_host(host)}:{port}"


def split_tcp(endpoint: str) -> tuple[str, int] | None:
    """The host (without brackets) and port of a ``tcp://`` endpoint, or None
    when it is not one (another transport, no port, a port that is not a
    number, an unbalanced bracket)."""
    if not endpoint.startswith("tcp://"):
        return None
    host, sep, port = endpoint[len("tcp://"):].rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    if host.startswith("["):
        if not host.endswith("]") or not is_ipv6_address(host):
            return None
    elif ":" in host:
        return None             # an IPv6 address must be bracketed
    return bare_host(host), int(port)


def names_version(environ: Mapping[str, str] | None = None) -> str:
    """``"4"`` or ``"6"``: the IP version a host name is reached over,
    ``MIYAQ_IP_VERSION`` (``4`` when unset or empty). Raises
    :class:`~miyaq.errors.ConfigError` for any other value."""
    value = (os.environ if environ is None else environ).get(IP_VERSION_ENV, "").strip() or "4"
    if value not in ("4", "6"):
        raise ConfigError(f"{IP_VERSION_ENV} must be 4 or 6 (the IP version host names are reached over), "
                          f"not {value!r}")
    return value


def wants_ipv6(endpoint: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a socket binding or connecting ``endpoint`` needs libzmq's
    IPv6 option: its host is an IPv6 address (``::`` included), or a name
    while ``MIYAQ_IP_VERSION`` is 6 (:func:`names_version`)."""
    target = split_tcp(endpoint)
    if target is None:
        return False
    host = target[0]
    if is_ipv6_address(host):
        return True
    if host in WILDCARDS or is_address(host):
        return False
    return names_version(environ) == "6"
