"""TCP endpoints written and read in one way, IPv4 and IPv6 alike.

A ZeroMQ TCP endpoint is ``tcp://HOST:PORT``; an IPv6 address is written in
brackets (``tcp://[2001:db8::1]:7450``, ``tcp://[::1]:7450``), as in a URL.
:func:`tcp_endpoint` writes one from a host and a port (the host as a user
gives it, with or without brackets), :func:`split_tcp` reads one back.

Which IP version a socket uses is the endpoint's (:func:`wants_ipv6`,
applied by :mod:`miyaq.runtime.sockets` before each bind and connect): an
IPv6 address, bracketed, and ``::`` (every address of both versions, where
the host allows it) use IPv6; an IPv4 address, ``0.0.0.0``, ``*`` and a host
name use IPv4, as they always have -- a name is reached at its IPv4 address
(libzmq with IPv6 on would prefer a name's IPv6 address, and ``localhost``
would then miss a node bound to ``127.0.0.1``). To reach a node over IPv6,
give its IPv6 address (``advertise`` for the ring).

Pure functions of strings: no sockets, no resolving.
"""
from __future__ import annotations

import ipaddress

__all__ = ["bare_host", "is_ipv6_address", "split_tcp", "tcp_endpoint", "url_host", "wants_ipv6"]

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


def wants_ipv6(endpoint: str) -> bool:
    """Whether a socket binding or connecting ``endpoint`` needs libzmq's
    IPv6 option: its host is an IPv6 address (``::`` included)."""
    target = split_tcp(endpoint)
    return target is not None and is_ipv6_address(target[0])
