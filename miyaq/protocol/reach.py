"""Why an endpoint does not answer: the words a first contact uses.

ZeroMQ hides connection failures (a DEALER reconnects quietly forever), so
a worker or client that hears nothing from a node asks the operating system
directly: one TCP connect to the endpoint (for ``ipc://``, one connect to
the unix socket), whose result names the likely cause. :func:`explain`
blocks for at most ``timeout`` seconds; call it from a thread
(``runtime.green.run_in_thread``) in gevent code.
"""
from __future__ import annotations

import errno
import socket

from ..runtime.endpoints import split_tcp, url_host

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
        with socket.create_connection((host, port), timeout=timeout):
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
