"""Where webhooks may be sent: a guard against server-side request forgery
(someone who can enqueue making the node call internal services or the
cloud's metadata endpoint, 169.254.169.254).

Who decides (docs/http.md, "Webhook destinations"):

* ``webhook_allow_hosts`` set: only the hosts on that list
  (:class:`~miyaq.gateway.allowlist.AllowList`), whatever their addresses;
* otherwise, unless ``webhook_allow_private``: any host whose addresses are
  all public. Loopback, link-local, private, shared (100.64/10),
  unspecified, reserved and multicast addresses are refused, IPv4-mapped
  IPv6 addresses checked as the IPv4 address they carry;
* ``webhook_allow_private``: any destination.

The private check runs twice. At an HTTP enqueue (403) on the URL's host: a
literal address at once, a name resolved (cooperatively, bounded by
``DNS_TIMEOUT``, answers cached for ``DNS_CACHE_TTL``; a name that does not
resolve is let through, its delivery will tell). And when the deliverer opens
connections to a destination (:meth:`Destinations.connect_address`): the
name is resolved afresh, every address checked, and the connection made to
the checked address -- so DNS that changes after the enqueue, or between the
check and the connect, cannot send the node elsewhere.
"""
from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from miyaq.gateway.allowlist import AllowList
from miyaq.protocol.urls import check_host_name
from miyaq.gateway.errors import ForbiddenDestination
from miyaq.runtime import green, monotonic

DNS_TIMEOUT = 2.0
DNS_CACHE_TTL = 30.0
DNS_CACHE_SIZE = 1024
PRIVATE_OFF = ("webhook_allow_private is off: start the node with --webhook-allow-private, or name the host in "
               "--webhook-allow-hosts")
"""Why a private destination is refused, and what lets it through (docs/http.md, "Webhook destinations")."""

Resolver = Callable[..., list[Any]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


#: NAT64 prefixes (RFC 6052's well-known one, RFC 8215's local-use one): the
#: last 32 bits are the IPv4 address a NAT64 gateway reaches.
NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
#: IPv4-translated addresses (``::ffff:0:a.b.c.d``, RFC 2765's stateless
#: translation, SIIT): the last 32 bits are the IPv4 address a translator
#: reaches. Python's ``is_global`` takes them for public ones.
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to, where the network may translate
    it: IPv4-mapped (``::ffff:a.b.c.d``), 6to4 (``2002::/16``), NAT64,
    IPv4-translated (``::ffff:0:a.b.c.d``), or the deprecated
    IPv4-compatible ``::a.b.c.d``."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if int(address) >> 32 == 0 or address in IPV4_TRANSLATED or any(address in net for net in NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_private(address: Address) -> bool:
    """True for every address that is not a public unicast one -- an IPv6
    address that leads to a private IPv4 one included (before 2026-12-05
    only IPv4-mapped ones were looked into: ``[64:ff9b::a9fe:a9fe]`` reached
    169.254.169.254 through any NAT64 gateway; before 2026-12-07 the
    IPv4-translated ``[::ffff:0:a9fe:a9fe]`` passed, through a SIIT one)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped          # judged as the IPv4 address it is
        elif embedded is not None and is_private(embedded):
            return True
    return not address.is_global or address.is_multicast


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


class Destinations:
    def __init__(self, allow_hosts: str, allow_private: bool, resolve: Resolver = green.getaddrinfo) -> None:
        self.allow_list = AllowList(allow_hosts)
        self.allow_private = allow_private
        self._resolve = resolve
        self._verdicts: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    @property
    def guards_private(self) -> bool:
        """True when private addresses are refused (no allow-list, no webhook_allow_private)."""
        return not self.allow_list.enabled and not self.allow_private

    def describe(self) -> str:
        if self.allow_list.enabled:
            return "allow-list"
        return "any address" if self.allow_private else "public addresses only"

    # -- at enqueue ---------------------------------------------------------------------
    def check(self, url: str, field: str = "url") -> None:
        """Raise :class:`ForbiddenDestination` (naming ``field``) if ``url`` may not be a webhook,
        :class:`InvalidField` if its host cannot be a host name at all."""
        check_host_name(url, field)     # also checked at every submit (check_new_url)
        if self.allow_list.enabled:
            if not self.allow_list.allows(url):
                raise ForbiddenDestination(f"webhook host of {url!r} is not in webhook_allow_hosts", field=field)
            return
        if self.allow_private:
            return
        try:
            parts = urlsplit(url)
            host, port = (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return   # not a URL: the URL check names it
        reason = self._verdict(host, port)
        if reason is not None:
            raise ForbiddenDestination(f"webhook to {url!r} refused: {reason}", field=field)

    def _verdict(self, host: str, port: int) -> str | None:
        """Why ``host`` is refused (None: allowed or unknown), cached for a while."""
        now = monotonic()
        hit = self._verdicts.get(host)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            self._addresses(host, port)
            reason = None
        except ForbiddenDestination as err:
            reason = err.message
        except (OSError, green.Timeout):
            reason = None   # does not resolve now: the delivery will find out (and check again)
        self._verdicts[host] = (now + DNS_CACHE_TTL, reason)
        self._verdicts.move_to_end(host)
        while len(self._verdicts) > DNS_CACHE_SIZE:
            self._verdicts.popitem(last=False)
        return reason

    # -- at delivery ---------------------------------------------------------------------
    def connect_address(self, host: str, port: int) -> str | None:
        """The address to connect to for ``host``: None to let the HTTP client
        resolve it (private addresses allowed, or an allow-list decided);
        else a checked public address. Raises :class:`ForbiddenDestination`
        if any address ``host`` has is private, OSError if it does not
        resolve."""
        if not self.guards_private:
            return None
        addresses = self._addresses(host, port)
        return str(addresses[0])

    def _addresses(self, host: str, port: int) -> list[Address]:
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            name = host.rstrip(".")      # "localhost." is the same name, fully qualified
            if name == "localhost" or name.endswith(".localhost"):
                raise ForbiddenDestination(f"{host} is this machine ({PRIVATE_OFF})")
            timer = green.Timeout(DNS_TIMEOUT, OSError(f"resolving {host} took over {DNS_TIMEOUT:g}s"))
            timer.start()
            try:
                infos = self._resolve(host, port, 0, socket.SOCK_STREAM)
            finally:
                timer.close()
            addresses = [a for a in (_literal(str(info[4][0])) for info in infos) if a is not None]
            if not addresses:
                raise OSError(f"{host} has no address")
        private = [str(a) for a in addresses if is_private(a)]
        if private:
            named = host if literal is not None else f"{host} ({', '.join(private[:3])})"
            raise ForbiddenDestination(f"{named} is a loopback, link-local or private address ({PRIVATE_OFF})")
        return addresses
