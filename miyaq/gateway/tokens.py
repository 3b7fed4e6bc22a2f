"""The HTTP gateway's bearer tokens and the role each one carries.

Two sources, both optional:

* ``http_token``: one token with the ``admin`` role (as it always was: with
  only it set, its holder may do everything), held to a file's token's
  length (``NodeConfig.validate``);
* ``http_tokens``: a file of ``token role`` lines (``#`` starts a comment,
  blank lines are skipped), roles as on the ZeroMQ ports
  (:mod:`miyaq.security.roles`: ``producer``, ``worker``, ``admin``, and
  the aliases ``client`` and ``operator``; ``peer`` has no meaning here).
  A token is 16 to 512 visible ASCII characters other than ``#``. The file is read again on
  SIGHUP and when it changes (checked every ``WATCH_INTERVAL`` seconds); a
  reload that fails keeps the tokens already loaded and logs why. It is
  read in the hub, so it is opened without blocking and must be a regular
  file of at most ``MAX_FILE_BYTES`` (:func:`~miyaq.runtime.small_files.read_small_file`):
  a FIFO put in its place is refused by name, never waited on. A file
  that holds no token (only comments) is loaded but warned about: it
  locks out every caller but ``http_token``'s.

Neither set: the gateway is open and every caller acts as ``admin``.

Tokens are never logged (errors name the line) and never kept in clear:
the table holds an HMAC of each under a per-process key; a caller's token
is compared with every entry in constant time (no early exit), and
:meth:`TokenTable.fingerprint` gives a short, keyed name for a token that
console sessions carry so that removing a token ends its sessions.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections import Counter
from dataclasses import dataclass

from miyaq.config import MAX_HTTP_TOKEN, MIN_HTTP_TOKEN, is_http_token
from miyaq.errors import ConfigError
from miyaq.runtime.small_files import read_by_others, read_small_file
from miyaq.security.roles import ALIASES, Role, parse_role

logger = logging.getLogger(__name__)

WATCH_INTERVAL = 2.0
MIN_TOKEN = MIN_HTTP_TOKEN     # http_token is held to the same (miyaq.config)
MAX_TOKEN = MAX_HTTP_TOKEN
MAX_TOKENS = 10_000
#: The roles a line may name (``peer`` is for nodes on the peer port), and their aliases.
FILE_ROLES = (Role.PRODUCER, Role.WORKER, Role.ADMIN)
_FILE_ROLE_NAMES = ", ".join(role.value for role in FILE_ROLES)
_FILE_ALIASES = ", ".join(f"{alias} ({role.value})" for alias, role in sorted(ALIASES.items())
                          if role in FILE_ROLES)
MAX_FILE_BYTES = MAX_TOKENS * (MAX_TOKEN + 32)


@dataclass(frozen=True)
class Entry:
    digest: bytes
    role: Role


def parse_tokens(text: str, where: str) -> list[tuple[str, Role]]:
    """``(token, role)`` pairs of a tokens file; ConfigError names the line (never the token)."""
    pairs: list[tuple[str, Role]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) != 2:
            raise ConfigError(f"{where}:{number}: expected 'TOKEN ROLE'")
        token, role_name = words
        if not is_http_token(token):
            raise ConfigError(f"{where}:{number}: a token is {MIN_TOKEN} to {MAX_TOKEN} visible ASCII "
                              "characters other than # (make one with: openssl rand -hex 32)")
        try:
            role = parse_role(role_name)
        except ValueError:
            raise ConfigError(f"{where}:{number}: unknown role {role_name!r}: choose one of {_FILE_ROLE_NAMES} "
                              f"(or an alias: {_FILE_ALIASES})") from None
        if role is Role.PEER:
            named = "" if role_name.strip().lower() == Role.PEER.value else f" ({role_name!r})"
            raise ConfigError(f"{where}:{number}: role peer{named} is for nodes on the peer port; "
                              f"choose one of {_FILE_ROLE_NAMES}")
        if token in seen:
            raise ConfigError(f"{where}:{number}: the same token as line {seen[token]}")
        seen[token] = number
        pairs.append((token, role))
    if len(pairs) > MAX_TOKENS:
        raise ConfigError(f"{where}: more than {MAX_TOKENS} tokens")
    return pairs


#: The fixed salt and scrypt cost of :meth:`TokenTable.lessee_name` (the
#: same on every node: the name must be).
LESSEE_SALT = b"miyaq: who holds an HTTP pull lease"
LESSEE_COST = 2 ** 13


class TokenTable:
    """Who a bearer token is. Built once per gateway; :meth:`reload` swaps the file's entries."""

    def __init__(self, admin_token: str, path: str) -> None:
        self.path = path
        self._key = secrets.token_bytes(32)
        self._lessee_names: dict[bytes, str] = {}    # digest -> lessee_name(token)
        self._admin = [Entry(self._digest(admin_token), Role.ADMIN)] if admin_token else []
        self._file: list[Entry] = []
        self._signature: tuple[int, int, int] | None = None    # of the file loaded
        self._looked_at: tuple[int, int, int] | None = None    # of the file last seen by poll()
        self.reloads: Counter[str] = Counter()
        if path:
            self._file, self._signature = self._read()    # ConfigError: the node does not start
            self._looked_at = self._signature
            logger.info("HTTP tokens: %s", self.summary())
            self._warn_if_empty()

    @property
    def enabled(self) -> bool:
        """True when callers must present a token."""
        return bool(self._admin) or bool(self.path)

    def _digest(self, token: str) -> bytes:
        return hmac.new(self._key, token.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def role_of(self, token: str) -> Role | None:
        """The role of ``token``, or None. Compares with every entry (constant time)."""
        if not token:
            return None
        digest = self._digest(token)
        found: Role | None = None
        for entry in self._admin + self._file:
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry.role
        return found

    def fingerprint(self, token: str) -> str:
        """A short keyed name of ``token`` (for session cookies); never the token."""
        return self._digest(token)[:12].hex()

    def lessee_name(self, token: str) -> str:
        """A short name of ``token`` that is the same on every node and across
        restarts and reloads -- for names that travel between nodes, such as
        who holds a lease (:func:`miyaq.gateway.pull_api.principal`): a
        worker may ack through another node than the one it received from.
        Never the token: a memory-hard hash (scrypt, a fixed salt), so a
        token cannot be guessed back from it even when it is short. Costs a
        few milliseconds once per token; kept while the token is loaded (at
        most ``MAX_TOKENS`` and the admin token)."""
        digest = self._digest(token)
        name = self._lessee_names.get(digest)
        if name is None:
            if len(self._lessee_names) > MAX_TOKENS:
                self._lessee_names.clear()      # tokens removed by reloads: their names go
            name = hashlib.scrypt(token.encode("utf-8", "surrogateescape"), salt=LESSEE_SALT,
                                  n=LESSEE_COST, r=8, p=1, dklen=9).hex()
            self._lessee_names[digest] = name
        return name

    def role_of_fingerprint(self, fingerprint: str) -> Role | None:
        """The role of the token a session was opened with, if that token is still valid."""
        found: Role | None = None
        for entry in self._admin + self._file:
            if hmac.compare_digest(entry.digest[:12].hex(), fingerprint) and found is None:
                found = entry.role
        return found

    def summary(self) -> str:
        counts = Counter(e.role.value for e in self._admin + self._file)
        return ", ".join(f"{n} {role}" for role, n in sorted(counts.items())) or "none"

    # -- the file ------------------------------------------------------------------
    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> tuple[list[Entry], tuple[int, int, int]]:
        try:
            signature = self._stat()
            # never a plain open(): a FIFO would block the hub (HTTP and ZeroMQ alike) until
            # written. ConfigError names what it is instead (a FIFO, a device, too large).
            text = read_small_file(self.path, MAX_FILE_BYTES, "an HTTP tokens file").decode("utf-8")
            info = os.stat(self.path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the HTTP tokens file {self.path}: {exc}") from None
        pairs = parse_tokens(text, self.path)
        if read_by_others(info):
            logger.warning("HTTP tokens file %s is readable by others (mode %o, group %d): chmod 600 it",
                           self.path, stat.S_IMODE(info.st_mode), info.st_gid)
        return [Entry(self._digest(token), role) for token, role in pairs], signature

    def _warn_if_empty(self) -> None:
        """A file without a single token shuts out every caller (but http_token's): say so."""
        if self._file:
            return
        if self._admin:
            logger.warning("HTTP tokens file %s holds no token: every caller but the http_token's is refused "
                           "(401)", self.path)
        else:
            logger.warning("HTTP tokens file %s holds no token: every caller is refused (401)", self.path)

    def reload(self, reason: str) -> bool:
        """Read the file again; on failure keep the tokens loaded and log why. No file: False."""
        if not self.path:
            return False
        try:
            self._file, self._signature = self._read()
        except ConfigError as exc:
            self.reloads["failed"] += 1
            logger.error("HTTP tokens not reloaded (%s), keeping the previous ones: %s", reason, exc.message)
            return False
        self.reloads["ok"] += 1
        logger.info("HTTP tokens reloaded (%s): %s", reason, self.summary())
        self._warn_if_empty()
        return True

    def poll(self) -> bool:
        """Reload if the file changed since it was last looked at (one attempt
        per change: a broken file is reported once, not every poll)."""
        if not self.path:
            return False
        try:
            seen: tuple[int, int, int] | None = self._stat()
        except OSError:
            seen = None
        if seen == self._looked_at:
            return False
        self._looked_at = seen
        return self.reload("the file changed")
