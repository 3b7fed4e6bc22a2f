"""The composition root: the one place a node is put together.

:func:`build_node` is used by ``miyaq node`` (and so by ``miyaq
dev-cluster``, ``miyaq bench`` and ``miyaq chaos``, which run it as a
subprocess) and by the in-thread test harness
(:class:`miyaq.testing.harness.ThreadNode`). Every other module receives what
it needs from here; none builds another's parts.

Order matters and is written once, here: the supervisor and the socket
factory (with ``keys``: CURVE on every socket, and the ZAP handler serving
before any socket binds, so no connection is ever admitted unchecked); the
core; persistence (its write barrier gates acknowledgements);
the role -- standalone, or clustered with a coordinator (ZooKeeper unless
one is given) and a transport (ZeroMQ unless one is given); periodic
schedules; the node's status report; the service handlers and the clockwork;
metrics and the HTTP gateway when ``http_port`` is set.

Sockets are bound and the log is opened here (the service and, in a
cluster, peer and PUB ports), so a port in use or a locked data dir fails
the build; the log is replayed at ``Node.start``.
"""
from __future__ import annotations

import logging
import os
import pwd

from miyaq.cluster.membership import Coordinator
from miyaq.cluster.periodic_store import ZkPeriodicStore
from miyaq.cluster.ring_view import local_member
from miyaq.cluster.role import ClusterRole
from miyaq.cluster.standalone import StandaloneRole
from miyaq.cluster.transport import Transport
from miyaq.cluster.zk_auth import ZkAuth
from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
from miyaq.cluster.zk_layout import NO_CLUSTER_KEY
from miyaq.cluster.zmq_transport import ZmqTransport
from miyaq.config import NodeConfig
from miyaq.core.clockwork import Clockwork
from miyaq.core.core import Core
from miyaq.core.handlers import ServiceHandlers
from miyaq.core.handles import Immediate, WriteBarrier
from miyaq.errors import ConfigError
from miyaq.gateway.metrics import NodeMetrics
from miyaq.gateway.server import Gateway
from miyaq.node.data_dir import check_cluster, prepare_data_dir, record_cluster
from miyaq.node.node import Node, Part
from miyaq.node.open_files import OpenFilesWatch
from miyaq.node.status import NodeStatus
from miyaq.periodic.scheduler import PeriodicScheduler, SharedSource, SharedStore
from miyaq.persistence.journal import Persistence
from miyaq.runtime import Supervisor, green, wall
from miyaq.runtime.sockets import SocketFactory
from miyaq.security.curve import NodeCurve, key_fingerprint
from miyaq.security.exposure import exposure_warning
from miyaq.security.guard import Guard
from miyaq.security.keystore import KeyStore
from miyaq.security.handshakes import HandshakeFailures
from miyaq.security.zap import ZapHandler
from miyaq.store.log import AppendLog
from miyaq.store.log_format import MAX_FRAME_PAYLOAD

logger = logging.getLogger(__name__)


def build_node(config: NodeConfig, *, coordinator: Coordinator | None = None, transport: Transport | None = None,
               sockets: SocketFactory | None = None, stream_drop: float = 0.0) -> Node:
    """Assemble a node from ``config``.

    A node is clustered when ``config.zk`` is set (a ZooKeeper coordinator)
    or a ``coordinator`` is given; otherwise it is standalone. A clustered
    node talks to its peers through ``transport`` (default: ZeroMQ on the
    peer and PUB ports, dropping ``stream_drop`` of its stream messages for
    fault injection). ``sockets`` makes every socket (default: a green factory
    with ``config.max_message``); the node closes it when it stops.

    ConfigError when the node must not start: a non-loopback ``host``
    without ``keys`` or ``insecure`` (:mod:`miyaq.security.exposure`), a key
    directory that cannot be read.
    """
    warning = exposure_warning(config)
    if warning:
        logger.warning("%s", warning)
    store = KeyStore(config.keys) if config.keys else None
    curve = None
    cluster_key = NO_CLUSTER_KEY
    if store is not None:
        cert = store.node_secret()
        curve = NodeCurve(cert.public, cert.secret or b"")
        cluster_key = key_fingerprint(cert.public)
    supervisor = Supervisor(f"node {config.id}")
    sockets = sockets or SocketFactory(green=True, max_message=config.max_message)
    if curve is not None:
        sockets.security = curve
    sockets.watch_handshakes()     # before any socket binds: every failed handshake is counted
    try:
        zap = None
        if store is not None:
            zap = ZapHandler(store, supervisor, sockets)
            zap.start()            # before any socket binds: no handshake goes unchecked
        handshakes = HandshakeFailures(sockets, supervisor)
        handshakes.start()
        return _build(config, supervisor, sockets, coordinator, transport, stream_drop, zap, warning, handshakes,
                      cluster_key)
    except BaseException:
        supervisor.kill()
        sockets.close()
        raise


def _build(config: NodeConfig, supervisor: Supervisor, sockets: SocketFactory, coordinator: Coordinator | None,
           transport: Transport | None, stream_drop: float, zap: ZapHandler | None, warning: str | None,
           handshakes: HandshakeFailures, cluster_key: str) -> Node:
    guard = Guard(zap.identity) if zap is not None else None
    core = Core(config, sockets, supervisor, guard)
    if zap is not None:
        zap.on_revoked.append(lambda names: core.revoke(names, wall()))
    persistence = None
    if config.data_dir:
        persistence = Persistence(core.engine, _open_log(config, supervisor), supervisor, core.refusals, config.id,
                                  on_replayed=lambda: record_cluster(config))
        core.endpoint.ack_gate = persistence.after_written   # SUBMITTED, and answers that promise a change
        core.endpoint.log_admit = persistence.admit          # such requests are refused while the disk fails
        core.dispatcher.start_barrier = persistence          # an at-most-once task leaves once its start is logged
    try:
        role, shared = _role(config, core, persistence or Immediate(), supervisor, sockets, coordinator, transport,
                             stream_drop, guard, cluster_key)
        core.dispatcher.announce = role.flush   # other holders hear who runs a task before its worker has it
        clockwork = Clockwork(core, role, supervisor)
        periodic = PeriodicScheduler(config, core.engine, core.workers, role, supervisor, shared=shared,
                                     wake=clockwork.wake)
        open_files = OpenFilesWatch(config.id, supervisor)
        status = NodeStatus(config, core, role, periodic, persistence, open_files, zap, warning, handshakes)
        ServiceHandlers(core, role, periodic, status, webhooks=bool(config.http_port),
                        supervisor=supervisor).install()
        # Start order: the log is replayed before the role decides to reconcile;
        # periodic listens for leadership before the role starts campaigning.
        parts: list[Part] = [persistence] if persistence is not None else []
        parts += [clockwork, periodic, role, open_files]
        hurry = green.Event()      # a second stop signal: the node's waits and the gateway's end at once
        if config.http_port:
            metrics = NodeMetrics(config.id, core, role, supervisor, persistence, handshakes, zap)
            parts += [metrics, Gateway(config, core, role, status, periodic, metrics, clockwork.wake, supervisor,
                                       hurry)]
    except BaseException:
        if persistence is not None:
            persistence.kill()   # the log is open: release it (and its lock) before the sockets go
        raise
    return Node(config, supervisor=supervisor, sockets=sockets, core=core, clockwork=clockwork,
                role=role, status=status, parts=parts, keys=zap, hurry=hurry)


def _role(config: NodeConfig, core: Core, barrier: WriteBarrier, supervisor: Supervisor, sockets: SocketFactory,
          coordinator: Coordinator | None, transport: Transport | None,
          stream_drop: float, guard: Guard | None,
          cluster_key: str) -> tuple[StandaloneRole | ClusterRole, SharedSource | None]:
    """The node's role, and where periodic schedules share their state
    (None: memory). A ZooKeeper coordinator publishes ``cluster_key`` (the
    fingerprint of the node's cluster key) and starts only among members
    of the same one (:mod:`miyaq.cluster.zk_keys`)."""
    shared: SharedSource | None = None
    if coordinator is None and config.zk:
        zk = ZooKeeperCoordinator(config.zk, config.cluster, local_member(config), supervisor=supervisor,
                                  cluster_key=cluster_key, auto_join=config.auto_join,
                                  session_timeout=config.zk_session_timeout,
                                  connect_timeout=config.zk_connect_timeout,
                                  auth=ZkAuth.from_options(config.zk_auth, config.zk_auth_file))
        coordinator, shared = zk, _zk_periodic_store(zk)
    if coordinator is None:
        return StandaloneRole(config, core.engine, core.endpoint.ack), None
    if transport is None:
        transport = ZmqTransport(sockets, supervisor, config.bind_endpoint(config.peer),
                                 config.bind_endpoint(config.pub), stream_drop, guard,
                                 heartbeat_timeout=config.peer_heartbeat_timeout)
    role = ClusterRole(config, core.engine, core.gate, core.endpoint, core.directory, barrier, supervisor,
                       transport, coordinator, core.refusals)
    return role, shared


def _open_log(config: NodeConfig, supervisor: Supervisor) -> AppendLog:
    """The log in ``data_dir`` (made 0700 if missing); ConfigError, naming the
    directory and the reason, when it cannot be made or written.

    It takes any record its framing can hold: each one describes a task or
    result the node accepted within its limits -- today's, or a run's that
    allowed more (``max_payload`` lowered since) -- so a record it refused
    would stop the writer or fail every compaction."""
    check_cluster(config)      # a data dir of another cluster: its copies would run in both
    try:
        prepare_data_dir(config.data_dir)      # made 0700; one that exists: a warning if others may read it
        return AppendLog(config.data_dir, fsync=config.fsync, interval_ms=config.fsync_interval_ms,
                         max_record_bytes=MAX_FRAME_PAYLOAD, supervisor=supervisor)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and exc.filename != config.data_dir else ""
        raise ConfigError(f"cannot use data dir {config.data_dir}{where}: {exc.strerror or exc}; pass --data-dir "
                          f"a directory this user ({_user()}) can create and write") from None


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _zk_periodic_store(zk: ZooKeeperCoordinator) -> SharedSource:
    """Periodic schedules keep their ticks and specs in the coordinator's
    ZooKeeper, once it is connected."""
    def shared() -> SharedStore | None:
        client = zk.client
        return ZkPeriodicStore(client, zk.cluster, zk.hosts) if client is not None else None
    return shared
