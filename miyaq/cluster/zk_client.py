"""Making a ZooKeeper client: the connection string checked, a kazoo
client on gevent with its retries and credentials, started within a
deadline, and closed again.

Constraints:

* Every client miyaq makes is made through :func:`new_client`, which checks
  ``hosts`` first (:func:`check_hosts`): a malformed connection string is a
  ``ConfigError`` naming it, never a ``ValueError`` from kazoo.
* A client waits in the gevent hub (kazoo's ``SequentialGeventHandler``,
  from :func:`miyaq.runtime.zookeeper.kazoo_handler`; no monkey patching),
  reconnects forever (0.1 s, doubling to 1 s apart) and retries a command
  5 times.
* With credentials (:mod:`miyaq.cluster.zk_auth`) a client authenticates
  and creates every znode with their ACL (its ``default_acl``).
* :func:`connect` returns a started client or raises ``Unavailable`` naming
  the hosts when no server answers within ``connect_timeout``.
* :func:`close_client` never raises a kazoo error; never call it from a
  kazoo callback.
"""
from __future__ import annotations

import logging

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.hosts import collect_hosts
from kazoo.retry import KazooRetry

from miyaq.cluster.zk_auth import ZkAuth
from miyaq.errors import ConfigError, Unavailable
from miyaq.runtime import green
from miyaq.runtime.zookeeper import kazoo_handler

logger = logging.getLogger("miyaq.cluster.zk_store")    # the name its line had before the split: filters keep working


def check_hosts(hosts: object) -> str:
    """``hosts`` if kazoo can parse it as a connection string (``host:port,...``
    with ports 0..65535, an optional ``/chroot``), else ``ConfigError``
    naming it. Every client miyaq makes is made through here: before
    2026-12-05 a malformed ``--zk`` (``localhost:abc``, ``127.0.0.1:99999``,
    ``,``) was a ``ValueError`` traceback from ``KazooClient``."""
    if not isinstance(hosts, str) or not hosts.strip():
        raise ConfigError("ZooKeeper hosts must be a non-empty string like '127.0.0.1:2181'")
    try:
        parsed, _ = collect_hosts(hosts)
    except ValueError as exc:
        raise ConfigError(f"invalid ZooKeeper hosts {hosts!r}: {exc} (expected host:port[,host:port...], "
                          "like 127.0.0.1:2181)") from None
    if not parsed or any(not host for host, _ in parsed):
        raise ConfigError(f"invalid ZooKeeper hosts {hosts!r}: no host (expected host:port[,host:port...], "
                          "like 127.0.0.1:2181)")
    return hosts


def check_options(hosts: object, vnodes: object, **timeouts: object) -> None:
    """``ConfigError`` unless ``hosts`` is a connection string, ``vnodes`` an int >= 1, timeouts > 0."""
    check_hosts(hosts)
    for name, value in timeouts.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
        raise ConfigError(f"vnodes must be an integer >= 1, got {vnodes!r}")


def new_client(hosts: str, session_timeout: float, auth: ZkAuth | None = None) -> KazooClient:
    """A kazoo client on gevent that retries its connection forever, commands 5 times;
    with ``auth``, it authenticates and creates znodes with ``auth``'s ACL.
    ``ConfigError`` when ``hosts`` is malformed (:func:`check_hosts`)."""
    check_hosts(hosts)
    handler = kazoo_handler()
    retry = {"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0, "sleep_func": green.sleep}
    return KazooClient(
        hosts=hosts,
        timeout=session_timeout,
        handler=handler,
        connection_retry=KazooRetry(**retry),
        command_retry=KazooRetry(**{**retry, "max_tries": 5}),
        **(auth.client_options() if auth is not None else {}),
    )


def connect(hosts: str, session_timeout: float, connect_timeout: float,
            auth: ZkAuth | None = None) -> KazooClient:
    """A started client; ``Unavailable`` when no server answers within ``connect_timeout``."""
    zk = new_client(hosts, session_timeout, auth)
    try:
        zk.start(timeout=connect_timeout)
    except zk.handler.timeout_exception:  # kazoo has stopped and closed the client
        raise Unavailable(
            f"cannot reach ZooKeeper at {hosts} within {connect_timeout:g}s", hosts=hosts
        ) from None
    return zk


def close_client(zk: KazooClient) -> None:
    """Stop and close ``zk``; never raises a kazoo error. Not from a kazoo callback."""
    try:
        zk.stop()
    except KazooException:
        logger.debug("error stopping ZooKeeper client", exc_info=True)
    finally:
        zk.close()
