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

A reload that removes a token, or changes its role, tells every
``on_revoked`` hook (:meth:`TokenTable.reload`) which tokens -- by
:meth:`TokenTable.wait_key`, never the token -- now have which role (None:
gone). The gateway ends their parked long-polls with it (each answered 401
or 403, as a fresh request with that token would be: ``Gateway.tokens_revoked``),
as a revoked ZeroMQ key's are (``ZapHandler.on_revoked``, ``Core.revoke``).
Before 2026-12-06 a ``POST /receive`` parked before the reload was still
answered with the next task, leased to a token whose ack could no longer
come, and a parked ``GET /tasks/{id}/result`` with the outcome, for up to
``MAX_LONG_POLL`` after the token was removed.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from miyaq.core.consumers import NOWHERE, Origin
from miyaq.config import MAX_HTTP_TOKEN, MIN_HTTP_TOKEN, is_http_token
from miyaq.errors import ConfigError, Forbidden, MiyaqError
from miyaq.gateway.errors import Unauthorized
from miyaq.gateway.permissions import may
from miyaq.runtime.small_files import ChangeWatch, file_stamp, read_by_others, read_small_file
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
#: What a token's long-polls are parked under in the node's waiters
#: (``Origin.key``; a ZeroMQ key's name never holds a colon).
WAIT_KEY_PREFIX = "http:"

RevokedHook = Callable[[dict[str, Role | None]], None]
"""Told, after a reload, the tokens removed or whose role changed: each
token's :meth:`TokenTable.wait_key` and its role now (None: removed)."""


@dataclass(frozen=True)
class Entry:
    digest: bytes
    role: Role


def parked_refusal(role: Role | None, needed: Role, what: str) -> MiyaqError | None:
    """What a long-poll parked with a token is answered once a reload gave
    that token ``role`` (None: removed): 401 ``unauthorized`` or 403
    ``forbidden``, as a fresh request with it would be; None while ``role``
    may still do ``what``, which needs ``needed``."""
    if role is None:
        return Unauthorized("this request's bearer token was removed while it waited (the tokens file was "
                            "reloaded)")
    if not may(role, needed):
        return Forbidden(f"a {role.value} token may not {what}: it needs the {needed.value} role (its role "
                         "changed while this request waited)")
    return None


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


def _wait_key(digest: bytes) -> str:
    return WAIT_KEY_PREFIX + digest[:12].hex()      # the fingerprint's: a prefix of a keyed hash


class TokenTable:
    """Who a bearer token is. Built once per gateway; :meth:`reload` swaps the file's entries."""

    def __init__(self, admin_token: str, path: str) -> None:
        self.path = path
        self._key = secrets.token_bytes(32)
        self._lessee_names: dict[bytes, str] = {}    # digest -> lessee_name(token)
        self._admin = [Entry(self._digest(admin_token), Role.ADMIN)] if admin_token else []
        self._file: list[Entry] = []
        self._signature: tuple[int, int, int] | None = None    # of the file loaded
        self._watch = ChangeWatch(path)     # the file as poll() last saw it
        self.reloads: Counter[str] = Counter()
        #: One more at each reload that loaded the file (a long-poll that
        #: parked before it looks at its token again: pull_api, tasks_api).
        self.generation = 0
        #: Run, in the hub, after each reload that removed tokens or changed a
        #: role (:data:`RevokedHook`); each must not block.
        self.on_revoked: list[RevokedHook] = []
        if path:
            self._file, self._signature = self._read()    # ConfigError: the node does not start
            self._watch.seen = self._signature
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

    def wait_key(self, token: str) -> str:
        """What the long-polls of ``token`` are parked under in the node's
        waiters (``Origin.key``): ``http:`` and its :meth:`fingerprint` --
        never the token; the same for a token across reloads, and this
        process's only (as the waits are). A reload that removes the token
        or changes its role names it to ``on_revoked``."""
        return _wait_key(self._digest(token))

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

    def _roles(self) -> dict[bytes, Role]:
        """Each token's role, by digest: the first entry's, as :meth:`role_of` finds it."""
        roles: dict[bytes, Role] = {}
        for entry in self._admin + self._file:
            roles.setdefault(entry.digest, entry.role)
        return roles

    def summary(self) -> str:
        counts = Counter(e.role.value for e in self._admin + self._file)
        return ", ".join(f"{n} {role}" for role, n in sorted(counts.items())) or "none"

    # -- the file ------------------------------------------------------------------
    def _read(self) -> tuple[list[Entry], tuple[int, int, int]]:
        try:
            signature = file_stamp(self.path)
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
        """Read the file again; on failure keep the tokens loaded and log why.
        No file: False. The tokens removed, and those whose role changed,
        are then told to every ``on_revoked`` hook (:data:`RevokedHook`); a
        hook that fails is logged, the others still run (the new tokens are
        in force whatever a hook meets: every new request is checked with them)."""
        if not self.path:
            return False
        self._watch.changed()       # the file as read now: poll() does not read it again (after a SIGHUP)
        before = self._roles()
        try:
            self._file, self._signature = self._read()
        except ConfigError as exc:
            self.reloads["failed"] += 1
            logger.error("HTTP tokens not reloaded (%s), keeping the previous ones: %s", reason, exc.message)
            return False
        self.generation += 1
        self.reloads["ok"] += 1
        logger.info("HTTP tokens reloaded (%s): %s", reason, self.summary())
        self._warn_if_empty()
        after = self._roles()
        changed = {_wait_key(digest): after.get(digest)
                   for digest, role in before.items() if after.get(digest) is not role}
        if changed:
            self._tell_revoked(changed)
        return True

    def _tell_revoked(self, changed: dict[str, Role | None]) -> None:
        for hook in self.on_revoked:
            try:
                hook(changed)
            except Exception:   # noqa: BLE001 - the reload is done; the watcher must not die of a hook
                logger.exception("HTTP tokens reloaded, but ending the long-polls of the %d token(s) removed or "
                                 "changed failed; they end at their deadline", len(changed))

    def poll(self) -> bool:
        """Reload if the file changed since it was last looked at (one attempt
        per change: a broken file is reported once, not every poll)."""
        if not self.path or not self._watch.changed():
            return False
        return self.reload("the file changed")


class TokenCheck:
    """The token of a long-poll (``GET /tasks/{id}/result``, ``POST
    /receive``) that needs ``needed`` to do ``what``: where it is parked in
    the node's waiters (:attr:`origin`: under the token's
    :meth:`~TokenTable.wait_key`, so a reload's ``on_revoked`` hook finds
    it; nowhere on a gateway without tokens), and, when it ends, whether a
    reload meanwhile took from the token what it waited for
    (:meth:`refusal`: it may have been answered in the instant before the
    reload)."""

    def __init__(self, table: TokenTable, token: str, needed: Role, what: str) -> None:
        self.table = table
        self.token = token
        self.needed = needed
        self.what = what
        self.generation = table.generation
        self.origin: Origin = Origin(None, table.wait_key(token), None) if table.enabled else NOWHERE

    def refusal(self) -> MiyaqError | None:
        """None unless a reload since the long-poll parked removed its token
        or took the role it needs: then the 401 or 403 a fresh request with
        it would get (:func:`parked_refusal`). Costs nothing without a reload."""
        if self.generation == self.table.generation or not self.table.enabled:
            return None
        return parked_refusal(self.table.role_of(self.token), self.needed, self.what)
