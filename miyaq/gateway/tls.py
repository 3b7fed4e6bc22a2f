"""TLS for the HTTP gateway (``http_cert``, ``http_key``) and for the
gateway's own calls to other members (``http_ca``).

:func:`server_context` loads a PEM certificate chain and its private key
into a cooperative (gevent) TLS context, TLS 1.2 at least; every way it
can fail becomes one :class:`~miyaq.errors.ConfigError` that says which
file and why (missing or unreadable, not a regular file, not PEM, a key
that does not match the certificate, a certificate expired or not valid
yet), so a node that cannot serve TLS refuses to start rather than serve
plain HTTP. The node loads them again on SIGHUP (a renewed certificate)
into a new context; a load that fails keeps the one in use.

:func:`ca_context` loads ``http_ca`` (the CA certificates the console
trusts when it calls other members' HTTPS gateways) into a client context
the same way: a file that does not load stops the node at start, and on
SIGHUP keeps the context in use (before 2026-12-05 it was read once, on
the first call to an https member, and never again).

The files are read in the hub: each is first read without blocking and
must be a regular file of at most ``MAX_PEM_BYTES``
(:func:`~miyaq.runtime.small_files.read_small_file`), so a FIFO in its
place is refused by name instead of freezing the node until someone
writes to it. (OpenSSL then opens the files again by name; a file
replaced by a FIFO between the two reads is not guarded against.)

The leaf certificate's validity dates are read from its DER
(:func:`validity`; the standard library has no public way and miyaq does
not depend on ``cryptography``). A certificate whose dates cannot be read
is loaded as OpenSSL loads it, with a warning.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import logging
import re
import ssl

from miyaq.errors import ConfigError
from miyaq.runtime import green, wall
from miyaq.runtime.http import client_context
from miyaq.runtime.small_files import read_small_file, warn_if_read_by_others

logger = logging.getLogger(__name__)

MAX_PEM_BYTES = 4 * 1024 * 1024
"""The largest certificate chain, key or CA bundle read (a system's whole CA bundle is ~250 KB)."""

EXPIRY_WARNING_DAYS = 14
"""A certificate loaded (at start or on SIGHUP) that expires within this many days is warned about."""

_SSL_SOURCE = re.compile(r" \(_ssl\.c:\d+\)$")   # where in CPython an SSLError was raised: not the reader's
_FIRST_CERTIFICATE = re.compile(rb"-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----(.*?)-----END ", re.DOTALL)


def _read_pem(path: str, setting: str) -> bytes:
    """The bytes of the PEM file ``path`` (``setting`` names it in errors):
    read without blocking, a regular file of at most ``MAX_PEM_BYTES``."""
    try:
        data = read_small_file(path, MAX_PEM_BYTES, "a PEM file")
    except OSError as exc:
        raise ConfigError(f"cannot read {setting} {path}: {exc.strerror or exc}") from None
    except ConfigError as exc:    # a FIFO, a device, a directory, too large
        raise ConfigError(f"{setting} {exc.message}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{setting} {path} is not a PEM file (no -----BEGIN line)")
    return data


# -- validity dates ---------------------------------------------------------------
def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """``(tag, start, end)`` of the DER item at ``pos`` (its content is ``data[start:end]``);
    ValueError if it runs past ``data`` or its length is not definite."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4 or pos + size > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _der_time(tag: int, text: bytes) -> datetime.datetime:
    """A UTCTime (``YYMMDDHHMMSSZ``) or GeneralizedTime (``YYYYMMDDHHMMSSZ``), as RFC 5280 writes them."""
    value = text.decode("ascii")
    if tag == 0x17:
        parsed = datetime.datetime.strptime(value, "%y%m%d%H%M%SZ")
        # RFC 5280: YY >= 50 is 19YY, else 20YY (strptime's pivot is 69)
        parsed = parsed.replace(year=(1900 if parsed.year % 100 >= 50 else 2000) + parsed.year % 100)
    elif tag == 0x18:
        parsed = datetime.datetime.strptime(value, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError("not a time")
    return parsed.replace(tzinfo=datetime.timezone.utc)


def validity(pem: bytes) -> tuple[datetime.datetime, datetime.datetime] | None:
    """``(notBefore, notAfter)`` (UTC) of the first certificate in ``pem`` --
    the leaf, as ``load_cert_chain`` takes it -- or None if there is none or
    it cannot be parsed."""
    found = _FIRST_CERTIFICATE.search(pem)
    if found is None:
        return None
    try:
        der = base64.b64decode(b"".join(found.group(1).split()))
        tag, start, _ = _der_item(der, 0)             # Certificate ::= SEQUENCE
        if tag != 0x30:
            return None
        tag, pos, end = _der_item(der, start)         # tbsCertificate ::= SEQUENCE
        if tag != 0x30:
            return None
        tag, _, after = _der_item(der, pos)
        if tag == 0xA0:                               # [0] version (absent in v1)
            pos = after
        for _field in ("serialNumber", "signature", "issuer"):
            _, _, pos = _der_item(der, pos)
        tag, pos, end = _der_item(der, pos)           # validity ::= SEQUENCE { notBefore, notAfter }
        if tag != 0x30:
            return None
        tag, start, pos = _der_item(der, pos)
        not_before = _der_time(tag, der[start:pos])
        tag, start, pos = _der_item(der, pos)
        not_after = _der_time(tag, der[start:pos])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return not_before, not_after


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _now() -> datetime.datetime:
    return datetime.datetime.fromtimestamp(wall(), datetime.timezone.utc)


def refuse_if_not_valid(cert: str, dates: tuple[datetime.datetime, datetime.datetime],
                        now: datetime.datetime) -> None:
    """ConfigError naming ``cert`` and its dates if ``now`` is outside them
    (expired, or not valid yet): clients would refuse the certificate."""
    not_before, not_after = dates
    span = f"valid from {_stamp(not_before)} to {_stamp(not_after)}, now {_stamp(now)}"
    if now > not_after:
        raise ConfigError(f"http_cert {cert} has expired ({span}): renew it")
    if now < not_before:
        raise ConfigError(f"http_cert {cert} is not valid yet ({span}): check this machine's clock")


def _warn_if_expiring(cert: str, dates: tuple[datetime.datetime, datetime.datetime] | None,
                      now: datetime.datetime) -> None:
    if dates is None:
        logger.warning("http_cert %s: cannot read the certificate's validity dates; they are not checked", cert)
        return
    left = dates[1] - now
    if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        logger.warning("http_cert %s expires in %.1f day(s), at %s: renew it and send the node SIGHUP",
                       cert, left.total_seconds() / 86400, _stamp(dates[1]))


# -- contexts ---------------------------------------------------------------------
def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM chain) and ``key`` (PEM private key);
    ConfigError if unusable, or if the certificate is expired or not valid yet
    by the wall clock. Once loaded, a certificate that expires within
    ``EXPIRY_WARNING_DAYS`` (or whose dates cannot be read) is warned about,
    and so is a ``key`` others may read (at start and at each SIGHUP's load,
    as the HTTP tokens file is)."""
    chain = _read_pem(cert, "http_cert")
    _read_pem(key, "http_key")
    dates = validity(chain)
    now = _now()
    if dates is not None:
        refuse_if_not_valid(cert, dates, now)
    context = green.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def encrypted() -> bytes:   # never a passphrase prompt on the terminal
        raise ConfigError(f"http_key {key} is encrypted: give the node an unencrypted PEM key (chmod 600)")

    try:
        context.load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        if reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"http_key {key} is not the private key of the certificate in "
                              f"http_cert {cert}") from None
        raise ConfigError(f"cannot load http_cert {cert} with http_key {key}: {reason} (a PEM "
                          "certificate chain and an unencrypted PEM private key are needed)") from None
    except OSError as exc:
        raise ConfigError(f"cannot load http_cert {cert} with http_key {key}: {exc}") from None
    _warn_if_expiring(cert, dates, now)
    warn_if_read_by_others(key, "http_key", logger)     # a key that did not load: its error alone
    return context


def ca_context(path: str) -> ssl.SSLContext:
    """A client context (cooperative, host names checked) that trusts the CA
    certificates of the PEM file ``path`` (``http_ca``) and no others;
    ConfigError naming the file if it is not a readable regular PEM file or
    holds no certificate OpenSSL loads. Made at start and again on SIGHUP
    (the console's :class:`~miyaq.gateway.console.peers.Peers`)."""
    _read_pem(path, "http_ca")
    try:
        return client_context(path)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or _SSL_SOURCE.sub("", str(exc))
        raise ConfigError(f"http_ca {path} holds no CA certificate OpenSSL can load: {reason}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read http_ca {path}: {exc.strerror or exc}") from None


def ca_file(path: str) -> str:
    """``path`` if it is a readable PEM file of CA certificates that OpenSSL
    loads (:func:`ca_context`; ConfigError otherwise); "" stays "". Before
    2026-12-05 a file was only checked to be PEM, and one OpenSSL refused
    failed every call to an https member instead of the node's start."""
    if path:
        ca_context(path)
    return path
