"""Roles, and which commands each may send.

Every key that ZAP authenticated has one role, recorded in its public
certificate's metadata (``role = worker``). A command from a role that may
not send it is refused with ``forbidden`` before any handler runs.

- ``producer``: submit, and status/result/cancel of tasks, the ring (clients
  discover nodes with it) and node status;
- ``worker``: everything a producer may, plus the worker protocol and pull
  consumers (READY ... BYE, RECEIVE/ACK/NACK);
- ``admin``: everything, including the dead-letter queue, task listings and
  (over HTTP) queue limits and pauses;
- ``peer``: the peer port and replication streams only (other nodes).
"""
from __future__ import annotations

import enum

from miyaq.protocol import commands as c


class Role(str, enum.Enum):
    PRODUCER = "producer"
    WORKER = "worker"
    ADMIN = "admin"
    PEER = "peer"


ROLE_NAMES = tuple(r.value for r in Role)
#: Spellings accepted by ``miyaq keys add --role``.
ALIASES = {"operator": Role.ADMIN, "client": Role.PRODUCER, "node": Role.PEER}

PRODUCER_COMMANDS = frozenset({c.SUBMIT, c.STATUS, c.TASK, c.CANCEL, c.RESULT, c.RING, c.WITHDRAW})
WORKER_COMMANDS = PRODUCER_COMMANDS | c.WORKER_COMMANDS | frozenset({c.RECEIVE, c.ACK, c.NACK})
ADMIN_COMMANDS = c.NODE_COMMANDS

_SERVICE: dict[Role, frozenset[bytes]] = {
    Role.PRODUCER: PRODUCER_COMMANDS,
    Role.WORKER: WORKER_COMMANDS,
    Role.ADMIN: ADMIN_COMMANDS,
    Role.PEER: frozenset(),
}


def parse_role(text: str) -> Role:
    """A role from its name or an alias; ValueError names the choices."""
    name = text.strip().lower()
    if name in ALIASES:
        return ALIASES[name]
    try:
        return Role(name)
    except ValueError:
        raise ValueError(f"unknown role {text!r}: choose one of {', '.join(ROLE_NAMES)}") from None


def may_send(role: Role, command: bytes) -> bool:
    """True if ``role`` may send ``command`` to a node's service port."""
    return command in _SERVICE[role]
