"""ZooKeeper digest credentials, and the ACLs a protected cluster's znodes carry.

With credentials (``--zk-auth user:password`` or ``--zk-auth-file PATH``),
every client miyaq opens authenticates with ZooKeeper's ``digest`` scheme
(kazoo's ``auth_data``), and every znode it creates under
``/miyaq/<cluster>`` carries one ACL: all permissions for that identity,
nothing for anyone else (kazoo's ``make_digest_acl``, as the client's
``default_acl``). A stranger who can reach ZooKeeper can neither read nor
change the ring, the leader's records, the members, the desired state or
the periodic schedules (whose specs hold task payloads). ZooKeeper's
``exists`` needs no permission, so a stranger can still tell that the
cluster exists.

``/miyaq`` itself is shared by every cluster on the ensemble: when miyaq
creates it, anyone may read it and create a child there (another cluster),
and only these credentials may do more.

Constraints: the password never appears in a log line, a ``repr`` or an
error message. Parsing refuses what ZooKeeper's digest cannot carry: an
empty user or password, a ``:`` in the user, a line break.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from kazoo.security import ACL, make_acl, make_digest_acl

from miyaq.errors import ConfigError
from miyaq.runtime.small_files import read_by_others, read_small_file

logger = logging.getLogger(__name__)

SCHEME = "digest"
CREDENTIALS_BYTES = 4096
"""The longest credentials file (``user:password`` on one line)."""


@dataclass(frozen=True)
class ZkAuth:
    """One digest identity: ``user`` and its ``password`` (kept out of ``repr``)."""

    user: str
    password: str = field(repr=False)

    @classmethod
    def parse(cls, text: str, source: str = "--zk-auth") -> ZkAuth:
        """``user:password`` (one trailing line break allowed); ``ConfigError`` naming ``source``."""
        value = text[:-1] if text.endswith("\n") else text
        value = value[:-1] if value.endswith("\r") else value
        user, colon, password = value.partition(":")
        if not colon or not user or not password:
            raise ConfigError(f"{source} must be 'user:password' with neither part empty")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(f"{source} must be one line 'user:password'")
        return cls(user, password)

    @classmethod
    def from_file(cls, path: str) -> ZkAuth:
        """Read ``user:password`` from ``path``; warns when others may read the file."""
        try:
            info = os.stat(path)
            # A regular file, whole: a FIFO blocked the start for good, and a
            # longer file was cut at 4,096 characters (a wrong password later).
            text = read_small_file(path, CREDENTIALS_BYTES, "a ZooKeeper credentials file").decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the ZooKeeper credentials in {path}: {exc}. It is given by "
                              "--zk-auth-file or MIYAQ_ZK_AUTH_FILE: make it (one line 'user:password', "
                              "chmod 600, the same on every node and for the ring commands: docs/cluster.md, "
                              "\"ZooKeeper ACLs\"), or name the right file") from None
        if read_by_others(info):
            logger.warning("%s holds ZooKeeper credentials and others may read it: chmod 600 %s", path, path)
        return cls.parse(text, f"the credentials file {path}")

    @classmethod
    def from_options(cls, auth: str | None, auth_file: str | None) -> ZkAuth | None:
        """The credentials given by ``--zk-auth`` or ``--zk-auth-file`` (not both); None for neither."""
        if auth and auth_file:
            raise ConfigError("give the ZooKeeper credentials once: --zk-auth or --zk-auth-file, not both")
        if auth:
            return cls.parse(auth)
        if auth_file:
            return cls.from_file(auth_file)
        return None

    @property
    def auth_data(self) -> list[tuple[str, str]]:
        """kazoo's ``auth_data``: sent on every connection, again after each reconnect."""
        return [(SCHEME, f"{self.user}:{self.password}")]

    @property
    def acl(self) -> list[ACL]:
        """The ACL of every znode under ``/miyaq/<cluster>``: all for this identity, nothing for others."""
        return [make_digest_acl(self.user, self.password, all=True)]

    @property
    def root_acl(self) -> list[ACL]:
        """The ACL of ``/miyaq`` when miyaq creates it: anyone may read it and add a cluster."""
        return [make_acl("world", "anyone", read=True, create=True), *self.acl]

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``KazooClient``."""
        return {"auth_data": self.auth_data, "default_acl": self.acl}


def same_acl(a: list[Any], b: list[Any]) -> bool:
    """True when two ACL lists grant the same (order does not matter)."""
    def key(acl: Any) -> tuple[int, str, str]:
        return (int(acl.perms), acl.id.scheme, acl.id.id)
    return sorted(map(key, a)) == sorted(map(key, b))

