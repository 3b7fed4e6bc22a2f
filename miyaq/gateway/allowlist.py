"""Which hosts webhooks may be sent to: a guard against server-side request
forgery (someone who can enqueue making the node call internal services).

The allow-list holds ``host``, ``host:port`` or ``*.domain`` entries
(``webhook_allow_hosts``, comma-separated, case-insensitive); an IPv6
address as in a URL, ``[2001:db8::1]`` or ``[2001:db8::1]:8443`` (a bare
address without brackets is also taken). Empty: this list allows every
host, and :class:`~miyaq.gateway.destinations.Destinations` then refuses
private addresses unless ``webhook_allow_private``.
Names are compared as written in the URL, before DNS: list the names your
workers use, and do not list names an attacker could point elsewhere.
It is checked when a webhook is enqueued over HTTP (403) and again before
every delivery, which also covers webhooks submitted over ZeroMQ.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from miyaq.runtime.endpoints import bare_host, url_host


class AllowList:
    def __init__(self, spec: str) -> None:
        self.exact: set[str] = set()
        self.suffixes: list[str] = []
        for entry in spec.split(","):
            entry = entry.strip().lower()
            if not entry:
                continue
            if entry.startswith("*."):
                self.suffixes.append(entry[1:])
            else:
                self.exact.add(bare_host(entry))

    @property
    def enabled(self) -> bool:
        return bool(self.exact or self.suffixes)

    def allows(self, url: str) -> bool:
        if not self.enabled:
            return True
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        if not host:
            return False
        if host in self.exact or f"{url_host(host)}:{port}" in self.exact:
            return True
        return any(host.endswith(suffix) for suffix in self.suffixes)
