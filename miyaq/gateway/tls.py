"""TLS for the HTTP gateway (``http_cert``, ``http_key``) and for the
gateway's own calls to other members (``http_ca``).

:func:`server_context` loads a PEM certificate chain and its private key
into a cooperative (gevent) TLS context, TLS 1.2 at least; every way it
can fail becomes one :class:`~miyaq.errors.ConfigError` that says which
file and why (missing or unreadable, not PEM, a key that does not match
the certificate), so a node that cannot serve TLS refuses to start rather
than serve plain HTTP. The node loads them again on SIGHUP (a renewed
certificate) into a new context; a load that fails keeps the one in use.
"""
from __future__ import annotations

import os
import ssl

from miyaq.errors import ConfigError
from miyaq.runtime import green


def _readable(path: str, setting: str) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read {setting} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in head:
        raise ConfigError(f"{setting} {path} is not a PEM file (no -----BEGIN line)")


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM chain) and ``key`` (PEM private key); ConfigError if unusable."""
    _readable(cert, "http_cert")
    _readable(key, "http_key")
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
    return context


def ca_file(path: str) -> str:
    """``path`` if it is a readable PEM file of CA certificates (ConfigError otherwise); "" stays ""."""
    if path:
        _readable(path, "http_ca")
        if not os.path.isfile(path):
            raise ConfigError(f"http_ca {path} is not a file")
    return path
