"""The key directory that ``miyaq keys`` manages and a node reads with ``--keys``.

Layout (every file a czmq certificate, see :mod:`.certs`)::

    DIR/node.key, DIR/node.key_secret   the cluster's key pair: every node serves with it
                                        and presents it to other nodes (role peer)
    DIR/authorized/NAME.key             public certificates allowed to connect, each with
                                        its role in its metadata
    DIR/NAME.key, DIR/NAME.key_secret   a client's, worker's or operator's pair, made by
                                        ``add``: hand NAME.key_secret and node.key to it
    DIR/revoked/NAME.key*               what ``revoke`` took away

A node needs ``node.key_secret`` and ``authorized/``; a client needs its own
``NAME.key_secret`` and the node's public ``node.key``.

Modes, whatever the umask: DIR, ``authorized/`` and ``revoked/`` are made
0700 (before 2026-12-06 only DIR was: under ``umask 000`` any local user
could put an admin's certificate in ``authorized/``), every ``*.key_secret``
0600, public certificates 0644. A node warns at start when its
``node.key_secret`` is readable by others, or DIR or ``authorized/``
writable by others; modes it did not make are the operator's, never changed.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from miyaq.errors import ConfigError
from miyaq.runtime.small_files import own_group, warn_if_read_by_others

from . import certs
from .roles import Role, parse_role

logger = logging.getLogger(__name__)

NODE = "node"
AUTHORIZED = "authorized"
REVOKED = "revoked"
MAX_KEYS = 10_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Identity:
    """Who a connection is: the key's name and role."""

    name: str
    role: Role


@dataclass(frozen=True)
class KeyInfo:
    name: str
    role: str
    public: str
    revoked: bool


def check_name(name: str) -> str:
    if not _NAME.match(name) or name == NODE:
        raise ConfigError(f"invalid key name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
                          f"not starting with a punctuation mark, and not {NODE!r}")
    return name


class KeyStore:
    """One key directory. Methods raise ConfigError with the path when a file is wrong.

    ``given`` is how errors about the directory itself name it: a node's
    ``--keys DIR`` (the default), ``miyaq keys``' argument as typed. Before
    2026-12-07 every caller's said ``--keys DIR``: ``miyaq keys list
    ./nodir``, which has no such flag, too."""

    def __init__(self, directory: str, given: str | None = None) -> None:
        self.dir = directory
        self.given = given or f"--keys {directory}"

    @property
    def authorized_dir(self) -> str:
        return os.path.join(self.dir, AUTHORIZED)

    # -- making keys -------------------------------------------------------------
    def init(self) -> str:
        """Make the cluster's key pair and ``authorized/``; refuses to overwrite.
        ``ConfigError`` naming the path for any file-system error."""
        if os.path.exists(os.path.join(self.dir, NODE + ".key_secret")):
            raise ConfigError(f"{self.dir} already holds a cluster key (node.key_secret); "
                              "use another directory or remove it first")
        with _os_errors(f"make the key directory {self.dir}"):
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            os.chmod(self.dir, 0o700)
            make_private_dir(self.authorized_dir)
        public, _ = certs.create(self.dir, NODE, {"role": Role.PEER.value, "name": NODE})
        return public

    def add(self, name: str, role: str) -> tuple[str, str]:
        """Make a key pair for ``name`` with ``role`` and authorize its public part.

        Every file is created exclusively (:func:`certs.create`): of two adds
        of one name at once, one gets "exists already" and the other's secret
        is the key authorized. A failure leaves none of this call's files."""
        check_name(name)
        try:
            parsed = parse_role(role)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._require_init()
        target = os.path.join(self.authorized_dir, name + ".key")
        for path in (os.path.join(self.dir, name + ".key"), target):
            if os.path.exists(path):
                raise _exists(name, path)
        held = len(self._key_files())
        if held >= MAX_KEYS:
            raise ConfigError(f"{self.authorized_dir} holds {held:,} keys already, the most a node loads "
                              f"({MAX_KEYS:,}): revoke some first (`miyaq keys revoke`)")
        try:
            public, secret = certs.create(self.dir, name, {"role": parsed.value, "name": name}, exclusive=True)
        except FileExistsError as exc:
            raise _exists(name, exc.filename or os.path.join(self.dir, name + ".key")) from None
        try:
            with _os_errors(f"read {public}"), open(public, encoding="utf-8") as src:
                text = src.read()
            certs.write_new(target, text, 0o644)
        except FileExistsError:
            _remove_all(public, secret)
            raise _exists(name, target) from None
        except BaseException:
            _remove_all(public, secret)
            raise
        return public, secret

    def revoke(self, name: str) -> list[str]:
        """Take ``name`` out of ``authorized/`` (its pair moves to ``revoked/``),
        and every other certificate there holding the same public key (a copy
        under another name would keep the key authorized). Returns the names
        of those copies. ``ConfigError`` naming the path for any file-system
        error (before 2026-12-05 a traceback)."""
        check_name(name)
        authorized = os.path.join(self.authorized_dir, name + ".key")
        if not os.path.exists(authorized):
            raise ConfigError(f"no authorized key named {name!r} in {self.authorized_dir}")
        public = _public_or_none(authorized)
        copies = []
        for entry in self._key_files() if public is not None else []:
            path = os.path.join(self.authorized_dir, entry)
            if entry != name + ".key" and _public_or_none(path) == public:
                copies.append(entry[:-4])
        revoked = os.path.join(self.dir, REVOKED)
        with _os_errors(f"revoke {name!r}"):
            make_private_dir(revoked)
            for other in copies:
                os.replace(os.path.join(self.authorized_dir, other + ".key"), os.path.join(revoked, other + ".key"))
            os.remove(authorized)
            for suffix in (".key", ".key_secret"):
                src = os.path.join(self.dir, name + suffix)
                if os.path.exists(src):
                    os.replace(src, os.path.join(revoked, name + suffix))
        return copies

    def list(self) -> list[KeyInfo]:
        """Every authorized key, then every revoked one, by name."""
        out = [KeyInfo(ident.name, ident.role.value, public.decode(), False)
               for public, ident in sorted(self.authorized().items(), key=lambda kv: kv[1].name)
               if ident.name != NODE]
        revoked = os.path.join(self.dir, REVOKED)
        if os.path.isdir(revoked):
            try:
                entries = os.listdir(revoked)
            except OSError as exc:
                raise ConfigError(f"cannot read the key directory {revoked}: {exc.strerror or exc}") from None
            for entry in sorted(entries):
                if entry.endswith(".key"):
                    cert = certs.read(os.path.join(revoked, entry))
                    out.append(KeyInfo(entry[:-4], cert.metadata.get("role", "?"), cert.public.decode(), True))
        return out

    # -- reading keys ------------------------------------------------------------
    def _require_init(self) -> None:
        if not os.path.exists(os.path.join(self.dir, NODE + ".key")):
            raise ConfigError(f"{self.dir} holds no cluster key: run `miyaq keys init {self.dir}` first")

    def node_secret(self) -> certs.Certificate:
        """The cluster key pair a node serves with."""
        path = os.path.join(self.dir, NODE + ".key_secret")
        if not os.path.exists(path):
            raise ConfigError(f"{self.given}: no node.key_secret there (make one with `miyaq keys init`)")
        cert = certs.read(path)
        if cert.secret is None:
            raise ConfigError(f"{path} holds no secret key")
        warn_if_read_by_others(path, "secret key file", logger)
        self._warn_if_others_may_write()
        return cert

    def _warn_if_others_may_write(self) -> None:
        """Warn when users other than this process's may write the key
        directory or ``authorized/`` (any bit for others, or a group bit for
        a group this process is not in): they could put a certificate of
        their own -- an admin's -- in ``authorized/``."""
        for directory in (self.dir, self.authorized_dir):
            try:
                info = os.stat(directory)
            except OSError:
                continue     # authorized() names what is wrong with it
            if info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and not own_group(info)):
                logger.warning("key directory %s is writable by others (mode %o, group %d): anyone who may write "
                               "it may authorize a key of their own; chmod 700 it",
                               directory, stat.S_IMODE(info.st_mode), info.st_gid)

    def node_public(self) -> tuple[bytes, str] | None:
        """The cluster's public key and the file it came from: ``node.key_secret``
        (the pair a node serves and dials its peers with; a node's directory
        needs no ``node.key``), else ``node.key``; None without either."""
        for suffix in (".key_secret", ".key"):
            path = os.path.join(self.dir, NODE + suffix)
            if os.path.exists(path):
                return certs.read(path).public, path
        return None

    def _no_authorized(self) -> str:
        """What a directory without ``authorized/`` is told: that it is not a
        directory at all, if so."""
        if not os.path.isdir(self.dir):
            return (f"{self.given}: no such directory (make a key directory with `miyaq keys init "
                    f"{self.dir}`)")
        return f"{self.given}: no authorized/ directory (make it with `miyaq keys init`)"

    def _key_files(self) -> tuple[str, ...]:
        """The ``*.key`` entries of ``authorized/``, sorted; ConfigError naming
        the directory when it cannot be listed."""
        directory = self.authorized_dir
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            raise ConfigError(self._no_authorized()) from None
        except OSError as exc:
            raise ConfigError(f"cannot read the key directory {directory}: {exc.strerror or exc}") from None
        return tuple(sorted(entry for entry in entries if entry.endswith(".key")))

    def authorized(self) -> dict[bytes, Identity]:
        """Public key (Z85) -> identity, for every certificate in ``authorized/``,
        plus the cluster key itself as a peer. ConfigError, naming the file or
        the directory, when one is unusable, when more than ``MAX_KEYS``
        certificates are there, or when two hold the same public key (revoking
        one would leave the key authorized by the other): a node does not
        start, a reload keeps the keys already loaded."""
        out: dict[bytes, Identity] = {}
        where: dict[bytes, str] = {}
        node = self.node_public()
        if node is not None:
            out[node[0]] = Identity(NODE, Role.PEER)
            where[node[0]] = node[1]
        if not os.path.isdir(self.authorized_dir):
            raise ConfigError(self._no_authorized())
        names = self._key_files()
        if len(names) > MAX_KEYS:
            raise ConfigError(f"{self.authorized_dir} holds {len(names):,} keys, more than the {MAX_KEYS:,} a node "
                              "loads: revoke the ones no longer used (`miyaq keys revoke`)")
        for entry in names:
            cert = certs.read(os.path.join(self.authorized_dir, entry))
            try:
                role = parse_role(cert.metadata.get("role", ""))
            except ValueError as exc:
                raise ConfigError(f"{cert.path}: {exc}") from None
            if cert.public in where:
                raise ConfigError(f"{cert.path} and {where[cert.public]} hold the same public key: revoking one "
                                  "would leave it authorized by the other; remove one of them")
            where[cert.public] = cert.path
            out[cert.public] = Identity(cert.metadata.get("name", entry[:-4]), role)
        return out


def make_private_dir(path: str) -> None:
    """Make the directory ``path`` (its parent must exist) owner-only, 0700
    whatever the umask: created with that mode, so never more open even for
    an instant, and set to it exactly. A directory that exists is left as
    it is; ``FileExistsError`` naming ``path`` when something else is there."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if os.path.isdir(path):
            return
        raise
    os.chmod(path, 0o700)


@contextmanager
def _os_errors(action: str) -> Iterator[None]:
    """Turn an ``OSError`` into one ``ConfigError`` line naming the path (FileExistsError too)."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise ConfigError(f"cannot {action}: {where}{exc.strerror or exc}") from None


def _exists(name: str, path: str) -> ConfigError:
    return ConfigError(f"a key named {name!r} exists already ({path}); revoke it or pick another name")


def _remove_all(*paths: str) -> None:
    """Remove files this call made (a failed ``add`` leaves nothing); never raises."""
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


def _public_or_none(path: str) -> bytes | None:
    try:
        return certs.read(path).public
    except ConfigError:
        return None
