"""Who sent this message, and may they: the check a node makes on every
message of its service and peer ports when it runs with keys.

The ZAP handler admitted the connection's key at the handshake; here each
message's User-Id (the key, Z85) is looked up again, so a key revoked while
connected is refused from its next message on, and the role's command table
(:mod:`.roles`) decides. Refusals raise :class:`~miyaq.errors.Forbidden`
before any handler runs.
"""
from __future__ import annotations

from typing import Callable

from miyaq.errors import Forbidden

from .keystore import Identity
from .roles import Role, may_send

Lookup = Callable[[str | bytes | None], Identity | None]


class Guard:
    """Checks messages against the authorized set ``lookup`` reads
    (:meth:`miyaq.security.zap.ZapHandler.identity`)."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup

    def _who(self, user_id: str | bytes | None) -> Identity:
        ident = self.lookup(user_id)
        if ident is None:
            raise Forbidden("this connection's key is no longer authorized (revoked); "
                            "ask the operator for a new key")
        return ident

    def service(self, user_id: str | bytes | None, command: bytes) -> Identity:
        """The identity behind a service-port message that its role may send."""
        ident = self._who(user_id)
        if not may_send(ident.role, command):
            raise Forbidden(f"key {ident.name!r} has role {ident.role.value}, which may not send "
                            f"{command.decode('ascii', 'replace')} (docs/security.md has the role table)")
        return ident

    def peer(self, user_id: str | bytes | None) -> Identity:
        """The identity behind a peer-port message: only nodes (role peer)."""
        ident = self._who(user_id)
        if ident.role is not Role.PEER:
            raise Forbidden(f"key {ident.name!r} has role {ident.role.value}; the peer port serves nodes only")
        return ident
