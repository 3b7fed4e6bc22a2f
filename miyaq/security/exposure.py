"""Safe by default: a node that binds its ZeroMQ ports beyond loopback needs keys.

Like Redis's protected mode: the embedded default (``127.0.0.1``, no keys)
is one command, but a node told to bind an address other hosts can reach
without ``--keys`` refuses to start, naming ``--keys`` and ``--insecure``;
``--insecure`` starts it anyway, with a warning in its log and in STATUS /
``GET /status`` (``security.warning``).

Only the ZeroMQ ports (``host``: service, peer, PUB) are judged here: keys
protect those. The HTTP gateway has its own protection (docs/security.md, HTTP).
"""
from __future__ import annotations

import ipaddress
import socket

from miyaq.config import NodeConfig
from miyaq.errors import ConfigError

RESOLVE_TIMEOUT = 2.0


def is_loopback(host: str) -> bool:
    """True if ``host`` names only loopback addresses (``127.0.0.0/8``, ``::1``,
    a name that resolves to nothing else). Wildcards (``0.0.0.0``, ``*``,
    ``::``) and names that do not resolve are not loopback."""
    host = host.strip().strip("[]")
    if host in ("", "*"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def exposure_warning(config: NodeConfig) -> str | None:
    """None when the node may start as configured quietly; the warning to log
    and report when it starts exposed with ``insecure``. ConfigError (the
    ``miyaq: error: ...`` line, exit status 2) when it must not start."""
    if config.keys or is_loopback(config.host):
        return None
    if not config.insecure:
        raise ConfigError(f"refusing to bind {config.host} without keys: anyone who reaches it could submit, "
                          "read and cancel every task. Pass --keys DIR (make one with `miyaq keys init DIR`), "
                          "bind 127.0.0.1, or pass --insecure to run open anyway")
    return (f"INSECURE: the ZeroMQ ports are bound to {config.host} without keys (--insecure): anyone who "
            "reaches them may submit, read, cancel and complete any task (docs/security.md)")
