"""Safe by default: a node that binds beyond loopback needs credentials on every door.

Like Redis's protected mode: the embedded default (``127.0.0.1``, no keys)
is one command, but a node told to bind an address other hosts can reach
refuses to start when that door is open:

- the ZeroMQ ports (``host``: service, peer, PUB) without ``--keys``;
- the HTTP gateway (``http_host``, else ``host``; unless ``http_port`` is 0)
  without ``--http-tokens`` or ``--http-token``: keys protect the ZeroMQ
  ports only, and a gateway without tokens takes every caller for admin.

The refusal names what to pass. ``--insecure`` starts it anyway, with a
warning in its log and in STATUS / ``GET /status`` (``security.warning``).
"""
from __future__ import annotations

import ipaddress
import socket

from miyaq.config import NodeConfig
from miyaq.errors import ConfigError

def is_loopback(host: str) -> bool:
    """True if ``host`` names only loopback addresses (``127.0.0.0/8``, ``::1``,
    a name that resolves to nothing else). Wildcards (``0.0.0.0``, ``*``,
    ``::``) and names that do not resolve are not loopback. A name is
    resolved with the system's resolver, unbounded in time as the bind that
    follows is: a node's start waits for it."""
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


def gateway_host(config: NodeConfig) -> str:
    """The address the HTTP gateway binds to."""
    return config.http_host or config.host


def _zmq_open(config: NodeConfig) -> bool:
    return not config.keys and not is_loopback(config.host)


def _http_open(config: NodeConfig) -> bool:
    return bool(config.http_port) and not (config.http_token or config.http_tokens) \
        and not is_loopback(gateway_host(config))


def exposure_warning(config: NodeConfig) -> str | None:
    """None when the node may start as configured quietly; the warning to log
    and report when it starts exposed with ``insecure``. ConfigError (the
    ``miyaq: error: ...`` line, exit status 2) when it must not start."""
    zmq_open, http_open = _zmq_open(config), _http_open(config)
    if not (zmq_open or http_open):
        return None
    host, port = gateway_host(config), config.http_port
    if not config.insecure:
        if zmq_open:
            raise ConfigError(f"refusing to bind {config.host} without keys: anyone who reaches it could submit, "
                              "read and cancel every task. Pass --keys DIR (make one with `miyaq keys init DIR`), "
                              "bind 127.0.0.1, or pass --insecure to run open anyway")
        raise ConfigError(f"refusing to open the HTTP gateway on {host} (port {port}) without tokens: "
                          + ("--keys protects the ZeroMQ ports only, and " if config.keys else "")
                          + "anyone who reaches the gateway could list, submit, cancel and purge every task "
                          "(without tokens every caller is admin). Pass --http-tokens FILE (lines 'TOKEN ROLE', "
                          "docs/http.md) or --http-token TOKEN, bind the gateway to loopback (--http-host "
                          "127.0.0.1), turn it off (--http-port 0), or pass --insecure to run it open anyway")
    warnings = []
    if zmq_open:
        warnings.append(f"INSECURE: the ZeroMQ ports are bound to {config.host} without keys (--insecure): anyone "
                        "who reaches them may submit, read, cancel and complete any task (docs/security.md)")
    if http_open:
        warnings.append(f"INSECURE: the HTTP gateway is bound to {host} (port {port}) without tokens (--insecure): "
                        "anyone who reaches it is admin and may list, submit, cancel and purge any task "
                        "(--http-tokens FILE, docs/security.md)")
    return "; ".join(warnings)
