"""czmq-format CURVE certificates, with their metadata.

A certificate is a ZPL text file (the format ``zmq.auth.create_certificates``
and czmq's ``zcert`` write): a ``metadata`` section of ``name = value``
lines and a ``curve`` section with ``public-key`` (and, in the secret file,
``secret-key``), both Z85-encoded. ``NAME.key`` holds the public part,
``NAME.key_secret`` both. pyzmq reads the keys but not the metadata, which
is where miyaq keeps a key's role. Written here rather than by
``zmq.auth.create_certificates``, which leaves the metadata out of the
public file.
"""
from __future__ import annotations

import datetime
import os
import re
import tempfile
from dataclasses import dataclass, field

import zmq
from zmq.utils import z85

from miyaq.errors import ConfigError
from miyaq.runtime.small_files import read_small_file

_LINE = re.compile(r"^(?P<indent>\s*)(?P<name>[A-Za-z0-9_.-]+)\s*(=\s*(?P<value>.*))?$")
MAX_CERT_BYTES = 64 * 1024
Z85_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


@dataclass(frozen=True)
class Certificate:
    """One certificate file: its keys (Z85 bytes) and metadata."""

    path: str
    public: bytes
    secret: bytes | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def is_z85_key(value: str) -> bool:
    """A CURVE key in Z85: 40 characters of the Z85 alphabet that decode to 32 bytes."""
    if len(value) != 40 or not set(value) <= Z85_ALPHABET:
        return False
    try:
        return len(z85.decode(value.encode("ascii"))) == 32
    except Exception:  # noqa: BLE001 - a group past 2**32 fails in struct, whatever pyzmq raises
        return False


def read(path: str) -> Certificate:
    """Parse a certificate file; ConfigError names the file when it is unusable
    (unreadable, not a regular file, over MAX_CERT_BYTES, not UTF-8, or without
    a well-formed Z85 key)."""
    try:
        text = read_small_file(path, MAX_CERT_BYTES, "a certificate").decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the certificate {path}: {exc}") from None
    section = ""
    metadata: dict[str, str] = {}
    keys: dict[str, str] = {}
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = _LINE.match(raw)
        if m is None:
            continue
        if not m.group("indent") and m.group("value") is None:
            section = m.group("name")
            continue
        if m.group("value") is None:
            continue
        if section == "metadata":
            metadata[m.group("name")] = _unquote(m.group("value"))
        elif section == "curve":
            keys[m.group("name")] = _unquote(m.group("value"))
    public = keys.get("public-key", "")
    if len(public) != 40:
        raise ConfigError(f"{path} has no CURVE public key (expected 40 Z85 characters)")
    if not is_z85_key(public):
        raise ConfigError(f"{path} has a malformed CURVE public key (not 40 valid Z85 characters)")
    secret = keys.get("secret-key")
    if secret is not None and not is_z85_key(secret):
        raise ConfigError(f"{path} has a malformed CURVE secret key (not 40 valid Z85 characters)")
    if secret is not None and zmq.curve_public(secret.encode("ascii")) != public.encode("ascii"):
        raise ConfigError(f"{path}: its public key is not the one of its secret key (a damaged or "
                          "hand-edited file): make a new pair")
    return Certificate(path, public.encode("ascii"), secret.encode("ascii") if secret else None, metadata)


def _text(kind: str, metadata: dict[str, str], public: bytes, secret: bytes | None) -> str:
    lines = [f"#   ****  Generated on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC "
             "by miyaq  ****", f"#   ZeroMQ CURVE {kind} Certificate", "", "metadata"]
    lines += [f'    {k} = "{v}"' for k, v in metadata.items()]
    lines += ["curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: str, text: str, mode: int, exclusive: bool = False) -> None:
    """Write ``path`` whole through a temporary file of a unique name in its
    directory (two writers never share one). ``exclusive``: the file must not
    exist yet -- it is linked in, never replaced, and ``FileExistsError``
    refuses the second of two writers (before 2026-12-05 both went through,
    and ``.tmp`` was one name for all: the secret one got might not be the
    authorized key). Any other failure is ``ConfigError`` naming the path."""
    directory, base = os.path.split(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory or ".")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        _remove_quietly(tmp)


def write_new(path: str, text: str, mode: int) -> None:
    """Write ``path``, which must not exist yet (``FileExistsError``): see :func:`_write`."""
    _write(path, text, mode, exclusive=True)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def create(directory: str, name: str, metadata: dict[str, str], exclusive: bool = False) -> tuple[str, str]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ``directory``,
    both with ``metadata``. Returns their paths. ``exclusive``: neither may
    exist (``FileExistsError``, and this call leaves nothing behind);
    ``ConfigError`` naming the path when one cannot be written."""
    for k, v in metadata.items():
        if not _LINE.match(f"{k} = x") or any(ch in v for ch in "\"\n\r"):
            raise ConfigError(f"certificate metadata {k!r} = {v!r} cannot be written")
    public, secret = zmq.curve_keypair()
    base = os.path.join(directory, name)
    _write(base + ".key", _text("Public", metadata, public, None), 0o644, exclusive)
    try:
        _write(base + ".key_secret", _text("**Secret**", metadata, public, secret), 0o600, exclusive)
    except BaseException:
        if exclusive:
            _remove_quietly(base + ".key")    # ours: the link above made it
        raise
    return base + ".key", base + ".key_secret"
