"""Why an endpoint does not answer: the words a first contact uses.

ZeroMQ hides connection failures (a DEALER reconnects quietly forever), so
a worker or client that hears nothing from a node asks the operating system
directly: one TCP connect to the endpoint (for ``ipc://``, one connect to
the unix socket), whose result names the likely cause. It dials as libzmq
would: a host name at its IPv4 address unless ``MIYAQ_IP_VERSION`` is 6
(:mod:`miyaq.runtime.endpoints`), so a name with only an IPv6 address is
explained as such. :func:`explain` blocks for at most ``timeout`` seconds
(and a name's resolving); call it from a thread
(``runtime.green.run_in_thread``) in gevent code.
"""
from __future__ import annotations

import errno
import socket

from ..errors import ConfigError
from ..runtime.endpoints import is_address, split_tcp, url_host, wants_ipv6

__all__ = ["explain", "unreachable"]


def explain(endpoint: str, timeout: float = 1.0) -> str:
    """The likely reason nothing answers at ``endpoint``, as a phrase
    ("nothing is listening there"). Never raises."""
    if endpoint.startswith("ipc://"):
        return _explain_unix(endpoint[len("ipc://"):], timeout)
    target = split_tcp(endpoint)
    if target is None:
        return "no miyaq node answered"
    host, port = target
    where = f"{url_host(host)}:{port}"
    try:
        over_ipv4 = not wants_ipv6(endpoint) and not is_address(host)
    except ConfigError as err:          # MIYAQ_IP_VERSION is not 4 or 6
        return err.message
    address = host
    if over_ipv4:
        # libzmq, IPv6 off, dials a name at its IPv4 address only.
        ipv4 = _addresses(host, port, socket.AF_INET)
        if not ipv4:
            return (f"the host name {host!r} has no IPv4 address (names are reached over IPv4 unless "
                    f"MIYAQ_IP_VERSION=6)" if _addresses(host, port, socket.AF_UNSPEC)
                    else f"the host name {host!r} does not resolve")
        address = ipv4[0]
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return (f"{where} accepts connections but no miyaq node answered "
                    "(is it a node's service port? the HTTP port is another one)")
    except ConnectionRefusedError:
        return "nothing is listening there"
    except socket.gaierror:
        return f"the host name {host!r} does not resolve"
    except (socket.timeout, TimeoutError):
        return f"no answer from {where} within {timeout:g}s (host down or a firewall?)"
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"{host} is unreachable from here ({exc.strerror})"
        return f"connecting failed: {exc.strerror or exc}"


def _addresses(host: str, port: int, family: int) -> list[str]:
    """The addresses ``host`` resolves to in ``family``; none if it does not."""
    try:
        return [str(info[4][0]) for info in socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)]
    except (OSError, UnicodeError):
        return []


def _explain_unix(path: str, timeout: float) -> str:
    """:func:`explain` for a unix socket (``--bind ipc://PATH``)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
        return f"{path} accepts connections but no miyaq node answered (with keys: is yours authorized?)"
    except FileNotFoundError:
        return f"there is no socket {path} (is the node started with --bind ipc://{path}?)"
    except ConnectionRefusedError:
        return f"nothing listens on {path} (a socket file left by a node that stopped)"
    except PermissionError:
        return (f"permission denied on {path}: the node's socket lets its own user and group connect (run as "
                "one of them, or start the node with --bind-mode 666)")
    except (socket.timeout, TimeoutError):
        return f"no answer from {path} within {timeout:g}s"
    except OSError as exc:
        return f"connecting failed: {exc.strerror or exc}"
    finally:
        probe.close()


def unreachable(endpoint: str, why: str) -> str:
    """The whole first-contact message for ``endpoint`` and a reason from :func:`explain`."""
    return (f"cannot reach {endpoint} \N{EM DASH} {why}; is a node running? "
            f"try `miyaq status --connect {endpoint}`")
