"""The ZooKeeper password is kept out of the log: kazoo logs the
credentials it sends at DEBUG (the operator-security audit of 2026-12-06).

Fault tests say in their docstring which fault they simulate."""
from __future__ import annotations

import logging

import pytest
from kazoo.protocol.serialization import Auth

from miyaq import logs


# -- the ZooKeeper password in the log ------------------------------------------------------------
def _kazoo_auth_record(password: str) -> logging.LogRecord:
    """A record as kazoo's connection writes it when it sends the credentials (each (re)connect)."""
    return logging.LogRecord("kazoo.client", logging.DEBUG, "connection.py", 323, "Sending request(xid=%s): %s",
                             (-4, Auth(0, "digest", f"miyaq:{password}")), None)


@pytest.mark.parametrize("password", ["s3cret-Passw0rd", "it's:a\\secret"])
def test_the_zookeeper_password_is_redacted_from_kazoos_records(password: str) -> None:
    """Fault: ``--log-level DEBUG`` (where docs/configuration.md sends an
    operator to debug ZooKeeper). Before the fix kazoo's line carried
    ``auth='miyaq:PASSWORD'`` in clear; now the password is redacted, the
    user and the rest of the line kept (a password with quotes, colons or
    backslashes too)."""
    record = _kazoo_auth_record(password)
    assert logs.ZooKeeperCredentials().filter(record)
    message = record.getMessage()
    assert message == "Sending request(xid=-4): Auth(auth_type=0, scheme='digest', auth='miyaq:<redacted>')"
    other = logging.LogRecord("kazoo.client", logging.DEBUG, "connection.py", 323, "Sending request(xid=%s): %s",
                              (7, "GetData(path='/miyaq/c/members', watcher=None)"), None)
    assert logs.ZooKeeperCredentials().filter(other)
    assert other.getMessage() == "Sending request(xid=7): GetData(path='/miyaq/c/members', watcher=None)"


def test_kazoos_loggers_redact_the_password_for_every_handler(caplog: pytest.LogCaptureFixture) -> None:
    """Fault: a handler other than the node's stderr one (an application's,
    a test's) gets kazoo's records: the filter is on kazoo's loggers, so
    their records reach every handler without the password."""
    logs.redact_zookeeper_credentials()
    with caplog.at_level(logging.DEBUG, logger="kazoo.client"):
        logging.getLogger("kazoo.client").debug("Sending request(xid=%s): %s", -4, Auth(0, "digest", "miyaq:hunter2"))
    assert "hunter2" not in caplog.text and "auth='miyaq:<redacted>'" in caplog.text
