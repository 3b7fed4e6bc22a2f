"""Signed webhook deliveries: the Standard Webhooks scheme (v1, HMAC-SHA256).

With ``webhook_signing_secrets`` set (a file of secrets), every webhook
attempt carries three headers a receiver checks with a secret it shares
with the node (docs/http.md, "Verifying a delivery"):

* ``webhook-id``: the task's id, the same on every attempt and every
  redelivery (the receiver dedups on it), with each ``.`` written ``%2E``:
  the signed content is joined with dots, and an id holding one could be
  read back with another timestamp (the spec forbids ``.`` in it);
* ``webhook-timestamp``: when this attempt is sent, integer unix seconds
  (each retry is signed anew; a receiver refuses one too old: replays);
* ``webhook-signature``: ``v1,<base64 of HMAC-SHA256(secret,
  id.timestamp.body)>``, one per secret, separated by spaces, in the
  file's order -- a receiver accepts a delivery when one of them matches
  (rotation: add the new secret, move the receivers to it, remove the old).

The body signed is the one sent, byte for byte (none: empty). A task's own
headers of these names (any case) are not sent while the node signs
(:mod:`miyaq.gateway.outbound`); without the setting nothing is added and
nothing is dropped.

The file: one secret a line, ``whsec_`` and the base64 of 24 to 64 random
bytes (the spec's form: ``echo whsec_$(openssl rand -base64 32)``); ``#``
starts a comment, blank lines are skipped; at most ``MAX_SECRETS``, no
line twice, at least one. It is read as the gateway's tokens file is
(:mod:`miyaq.gateway.tokens`): opened without blocking, a regular file
only, warned about when others may read it; a file the node cannot use
stops it at start (:class:`~miyaq.errors.ConfigError` naming the file
and the line, never a secret), and is re-read on SIGHUP and when it
changes -- a reload that fails keeps the secrets in force and logs why.
No secret is ever logged, put in an error, or shown (status, console,
metrics): only how many there are.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections import Counter

from miyaq.errors import ConfigError
from miyaq.runtime.small_files import ChangeWatch, file_stamp, read_small_file, warn_if_read_by_others

logger = logging.getLogger(__name__)

PREFIX = "whsec_"
#: A secret's bytes, at least and at most (the Standard Webhooks spec: 192 to 512 bits).
MIN_SECRET, MAX_SECRET = 24, 64
#: Secrets a file may hold (two during a rotation): each signs every delivery again, an HMAC
#: over its whole body in the hub (about 0.6 ms a MiB: four of a 1 MiB body, 2.3 ms).
MAX_SECRETS = 4
MAX_FILE_BYTES = 64 * 1024
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
#: The headers a signing node sets on every delivery (lower case).
SIGNING_HEADERS = frozenset({ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER})
_HOW = (f"a secret is {PREFIX} and the base64 of {MIN_SECRET} to {MAX_SECRET} random bytes "
        f"(make one with: echo {PREFIX}$(openssl rand -base64 32))")


def parse_secrets(text: str, where: str) -> list[bytes]:
    """The secrets (their bytes) of a secrets file, in its order; a
    ConfigError names ``where`` and the line, never what the line holds."""
    secrets: list[bytes] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line.split()) != 1:
            raise ConfigError(f"{where}:{number}: expected one secret a line; {_HOW}")
        if not line.startswith(PREFIX):
            raise ConfigError(f"{where}:{number}: does not start with {PREFIX}; {_HOW}")
        try:
            secret = base64.b64decode(line[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{where}:{number}: what follows {PREFIX} is not base64; {_HOW}") from None
        if not MIN_SECRET <= len(secret) <= MAX_SECRET:
            raise ConfigError(f"{where}:{number}: a secret of {len(secret)} bytes; {_HOW}")
        if secret in seen:
            raise ConfigError(f"{where}:{number}: the same secret as line {seen[secret]}")
        seen[secret] = number
        secrets.append(secret)
    if not secrets:
        raise ConfigError(f"{where} holds no secret: every webhook would go out unsigned; {_HOW} (to stop "
                          "signing, unset webhook_signing_secrets)")
    if len(secrets) > MAX_SECRETS:
        raise ConfigError(f"{where}: more than {MAX_SECRETS} secrets")
    return secrets


def webhook_id(task_id: str) -> str:
    """The ``webhook-id`` of a task's deliveries: its id, each ``.`` as ``%2E``
    (a task id never holds ``%``, so two tasks never share one)."""
    return task_id.replace(".", "%2E")


def signature(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64>``: HMAC-SHA256 of ``message_id.timestamp.body`` under ``secret``."""
    mac = hmac.new(secret, f"{message_id}.{timestamp}.".encode("ascii"), hashlib.sha256)
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


class WebhookSigner:
    """The node's signing secrets, from the file ``path`` (read here: a
    ConfigError stops the node), and the headers they sign a delivery with.
    :meth:`reload` and :meth:`poll` swap the secrets in the hub."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reloads: Counter[str] = Counter()
        self._secrets, self._signature = self._read()
        self._watch = ChangeWatch(path, self._signature)     # the file as poll() last saw it
        logger.info("webhook signing: %d secret(s) from %s", len(self._secrets), path)

    def __repr__(self) -> str:      # never the secrets
        return f"WebhookSigner({self.path!r}, {len(self._secrets)} secret(s))"

    @property
    def count(self) -> int:
        return len(self._secrets)

    def headers(self, task_id: str, body: bytes, now: float) -> dict[str, str]:
        """The three headers of a delivery of ``task_id`` sending ``body``
        at ``now`` (unix seconds, cut to a whole second)."""
        message_id = webhook_id(task_id)
        timestamp = int(now)
        signatures = " ".join(signature(secret, message_id, timestamp, body) for secret in self._secrets)
        return {ID_HEADER: message_id, TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signatures}

    # -- the file ------------------------------------------------------------------
    def _read(self) -> tuple[tuple[bytes, ...], tuple[int, int, int]]:
        try:
            stamp = file_stamp(self.path)
            # never a plain open(): a FIFO would block the hub until written
            data = read_small_file(self.path, MAX_FILE_BYTES, "a webhook signing secrets file")
        except OSError as exc:
            raise ConfigError(f"cannot read the webhook signing secrets file {self.path}: "
                              f"{exc.strerror or exc.__class__.__name__}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:      # its words quote the byte: a secret's
            raise ConfigError(f"the webhook signing secrets file {self.path} is not UTF-8 text") from None
        secrets = tuple(parse_secrets(text, self.path))
        warn_if_read_by_others(self.path, "webhook signing secrets file", logger)
        return secrets, stamp

    def reload(self, reason: str) -> bool:
        """Read the file again; on failure keep the secrets in force and log why."""
        self._watch.changed()       # the file as read now: poll() does not read it again (after a SIGHUP)
        try:
            self._secrets, self._signature = self._read()
        except ConfigError as exc:
            self.reloads["failed"] += 1
            logger.error("webhook signing secrets not reloaded (%s), signing with the previous ones: %s",
                         reason, exc.message)
            return False
        self.reloads["ok"] += 1
        logger.info("webhook signing secrets reloaded (%s): %d secret(s)", reason, len(self._secrets))
        return True

    def poll(self) -> bool:
        """Reload if the file changed since it was last looked at (one attempt
        per change: a broken file is reported once, not every poll)."""
        if not self._watch.changed():
            return False
        return self.reload("the file changed")
