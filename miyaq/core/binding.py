"""Start-up failures a person can act on: binding a node's ports.

A node binds its service port, in a cluster its peer and PUB ports, and its
HTTP port. When one cannot be bound, ZeroMQ and the socket module raise
``ZMQError: Address already in use`` or ``OSError: [Errno 98]`` with a
traceback; :func:`binding` turns that into a :class:`~miyaq.errors.ConfigError`
(``miyaq: error: ...``, exit status 2) that says which port it was, what it
is for, and the flag that changes it -- for the common case of three nodes
started by hand on one machine: "port 8088 is in use (HTTP gateway): pass
--http-port N, or --http-port 0 to disable it".

Unix sockets (``--bind ipc:///path/node.sock``): :func:`unix_socket` makes
the socket's directory if needed, removes a socket file no process listens
on any more (left by a node killed with -9) but refuses one a live process
listens on -- libzmq itself would silently unlink it and take the path over
-- and sets the new socket file's mode once bound.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from miyaq.errors import ConfigError
from miyaq.runtime.endpoints import split_tcp, tcp_endpoint, url_host
from miyaq.runtime.sockets import zmq

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Port:
    """One port a node binds, as a person knows it."""

    what: str           # "service port", "HTTP gateway"...
    host: str
    port: int
    flag: str           # how to pick another port: "pass --port N"
    host_flag: str = "--host"

    @classmethod
    def of(cls, what: str, endpoint: str, flag: str, host_flag: str = "--host") -> Port:
        """From a ``tcp://host:port`` endpoint."""
        target = split_tcp(endpoint)
        host, port = target if target is not None else (endpoint.removeprefix("tcp://"), 0)
        return cls(what, host, port, flag, host_flag)


def why(port: Port, exc: BaseException) -> str:
    """One line: what could not be bound, why, and what to do."""
    code = getattr(exc, "errno", None)
    if port.port == 0 and port.host.startswith("/"):
        return _why_unix(port, exc)
    where = f"{url_host(port.host)}:{port.port}"
    if code == errno.EADDRINUSE:
        return f"port {port.port} is in use ({port.what} on {port.host}): another process listens there; {port.flag}"
    if code == errno.EACCES:
        return (f"cannot bind {where} ({port.what}): permission denied -- ports below 1024 need root or "
                f"CAP_NET_BIND_SERVICE; {port.flag} (N above 1023)")
    if code == errno.EADDRNOTAVAIL:
        return (f"cannot bind {where} ({port.what}): {port.host} is not an address of this machine; bind one of "
                f"its addresses, or 0.0.0.0 for all ({port.host_flag}), and tell others the address they reach "
                f"it by with --advertise")
    if code == errno.ENODEV or isinstance(exc, socket.gaierror):
        return (f"cannot bind {where} ({port.what}): {port.host!r} is neither an address nor a network interface "
                f"or name of this machine ({port.host_flag} takes one of those, e.g. 127.0.0.1 or 0.0.0.0)")
    reason = getattr(exc, "strerror", None) or str(exc)
    return f"cannot bind {where} ({port.what}): {reason}"


IN_USE = re.compile(r"(?:miyaq: error: )?port (\d+) is in use \((.+?) on ([^)]+)\): another process listens there")
"""The start of :func:`why`'s line for a port in use (``miyaq: error: `` before it
when a node process prints it); group 1 is the port, 2 what it is for."""


def port_in_use(line: str) -> tuple[int, str] | None:
    """(port, what it is for) if ``line`` is :func:`why`'s message for a port
    in use -- a ConfigError's message or a node's last line -- else None."""
    match = IN_USE.fullmatch(line.strip().split("; ", 1)[0])
    return (int(match.group(1)), match.group(2)) if match else None


@contextmanager
def binding(port: Port) -> Iterator[None]:
    """Bind inside this block; a failure to bind becomes a ConfigError that
    names ``port`` and its flag."""
    try:
        yield
    except (OSError, zmq.ZMQError) as exc:
        raise ConfigError(why(port, exc)) from None


def service_port(host: str, port: int) -> Port:
    return Port("service port", host, port, f"pass --port N (is a node running there already? `miyaq status "
                                            f"--connect {tcp_endpoint(host, port)}`)")


def peer_port(endpoint: str) -> Port:
    return Port.of("peer port", endpoint, "pass --peer-port N (by default the peer port is --port + 1)")


def pub_port(endpoint: str) -> Port:
    return Port.of("replication port", endpoint, "pass --pub-port N (by default it is --port + 2)")


def http_port(host: str, port: int) -> Port:
    return Port("HTTP gateway", host, port, "pass --http-port N, or --http-port 0 to disable it",
                host_flag="--http-host")


def unix_socket_port(endpoint: str) -> Port:
    """A ``--bind`` endpoint, ``ipc:///path``: its path stands for the host, port 0."""
    return Port("unix socket", endpoint.removeprefix("ipc://"), 0, "pass --bind another path")


def _why_unix(port: Port, exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc)
    if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot bind the unix socket {port.host}: {reason}; pass --bind a path in a directory "
                f"this user can write")
    return f"cannot bind the unix socket {port.host}: {reason}; {port.flag}"


@contextmanager
def unix_socket(endpoint: str, mode: int) -> Iterator[None]:
    """Bind ``endpoint`` (``ipc:///path``) inside this block: its directory is
    made first (0755, so the socket file's own ``mode`` decides who may
    connect), a stale socket file is removed, the file is made owner-only
    and, once bound, gets ``mode``. ConfigError, naming the path and the fix, when any step fails."""
    port = unix_socket_port(endpoint)
    path = port.host
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the directory {directory} of the unix socket {path}: "
                          f"{exc.strerror or exc}; pass --bind a path in a directory this user can write") from None
    _remove_if_stale(path)
    # libzmq creates the file in this thread as it binds, with the process's
    # umask: owner-only until chmod, so nobody else can connect in between.
    # (The umask is the process's; start-up is one thread here, and owner-only
    # is never less safe for anything another thread might make meanwhile.)
    previous = os.umask(0o077)
    try:
        with binding(port):
            yield
    finally:
        os.umask(previous)
    os.chmod(path, mode)


def _remove_if_stale(path: str) -> None:
    """Remove ``path`` if it is a unix socket nobody listens on; ConfigError if
    it is something else, or a socket a live process listens on."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot check the unix socket {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path} exists and is not a unix socket: remove it, or pass --bind another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        logger.info("removed the stale unix socket %s (nothing listened on it)", path)
        return
    except OSError as exc:
        raise ConfigError(f"cannot check the unix socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ConfigError(f"unix socket {path} is in use: another process listens there (is a node already running "
                      f"with it?); pass --bind another path")


def remove_unix_sockets(endpoints: list[str]) -> None:
    """At stop, after the sockets closed: remove the socket files of
    ``endpoints`` this node bound (libzmq leaves them). Never raises."""
    for endpoint in endpoints:
        path = endpoint.removeprefix("ipc://")
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass
