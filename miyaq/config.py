"""Node settings (:class:`NodeConfig`), declared once as
:class:`~miyaq.settings.Settings` (name, type, default, help; from a flag,
the environment, a TOML file or the default), and the bounds they are
checked against. ``miyaq node --help`` and docs/configuration.md list them.
Nothing is read from the environment at import time.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from miyaq.constants import MAX_BATCH, PEER_HEARTBEAT_TIMEOUT, SERVICE_HEARTBEAT_TIMEOUT
from miyaq.errors import ConfigError
from miyaq.settings import Settings, setting
from miyaq.runtime.endpoints import WILDCARDS, bare_host, is_ipv6_address, tcp_endpoint, url_host





#: Seconds a node waits at most for a ZooKeeper server to answer at start
#: (``zk_connect_timeout``): at least a tenth of a second (a server has to
#: answer a TCP connect and a session request in it), at most an hour (a
#: typo in ``--zk`` would hold the start that long; a server still starting
#: is up well within it).
MIN_ZK_CONNECT_TIMEOUT = 0.1
MAX_ZK_CONNECT_TIMEOUT = 3600.0

#: The longest path of a unix socket (``sun_path`` less its final NUL, Linux).
MAX_IPC_PATH = 107

#: The most holders a task may have (its ``replicas``, and the node's
#: default): a record of more is refused by every check of it
#: (``protocol.recordspec.MAX_HOLDERS``, when the log is replayed).
MAX_REPLICAS = 16

#: Seconds in a year: the longest lease, retry delay or replica offset a
#: task may have (``protocol.taskspec.YEAR``, checked again at replay).
YEAR = 365 * 86400.0

#: The most retries a task may have (as the SUBMIT and replay checks say).
MAX_RETRIES = 10_000

#: A bearer token of the HTTP gateway (``http_token``, and each token of the
#: ``http_tokens`` file) is this many visible ASCII characters, at least
#: and at most.
MIN_HTTP_TOKEN = 16
MAX_HTTP_TOKEN = 512

#: Bytes a protocol message needs beside the one payload or result it
#: carries: a task's other fields in its SUBMIT (the client allows them
#: 16 KiB, ``client.sizes.TASK_FIELDS_ROOM``), the rest of a DONE beside its
#: result (the worker allows 64 KiB, ``worker.config.RESULT_MESSAGE_SLACK``).
#: ``max_message`` is at least ``max_payload`` plus this, so a task and a
#: result of ``max_payload`` bytes fit a message.
MESSAGE_ROOM = 64 * 1024

#: The most webhook deliveries a node may be told to keep in flight at once
#: (``webhook_max_in_flight``): each may hold a socket, and far fewer than
#: this fit in a usual file descriptor limit anyway.
MAX_WEBHOOK_IN_FLIGHT = 65_536


@dataclass
class NodeConfig(Settings):
    host: str = setting("127.0.0.1", "address to bind every port to (loopback unless told otherwise)")
    port: int = setting(7450, "service port: producers and workers connect here")
    bind: str = setting("", "also serve producers, workers and pull consumers on this unix socket, "
                         "ipc:///run/miyaq/node.sock (repeat the flag, or separate with commas, for more)",
                     repeat=True)
    bind_mode: str = setting("660", "permissions (octal) of the unix socket files of bind: 660 lets the node's user "
                                 "and group connect, 666 everyone on the host")
    advertise: str = setting("", "host (name or address) other nodes, clients and workers use to reach this node, "
                              "in the ring and in discovery (empty: host, or the hostname when host is 0.0.0.0)")
    peer_port: int = setting(0, "peer ROUTER port (0: port + 1)")
    pub_port: int = setting(0, "replication PUB port (0: port + 2)")
    http_port: int = setting(8088, "HTTP gateway port (0: disabled)")
    http_token: str = setting("", "bearer token required by the HTTP gateway, with the admin role: "
                               f"{MIN_HTTP_TOKEN} to {MAX_HTTP_TOKEN} visible ASCII characters (empty: none)")
    http_tokens: str = setting("", "file of 'TOKEN ROLE' lines (roles producer, worker, admin): bearer tokens the "
                                "HTTP gateway accepts, re-read on SIGHUP and when it changes (empty: none)")
    http_host: str = setting("", "address the HTTP gateway binds to (empty: same as host)")
    http_cert: str = setting("", "PEM certificate chain: the HTTP gateway serves HTTPS only (with http_key; re-read "
                              "on SIGHUP)")
    http_key: str = setting("", "PEM private key of http_cert (unencrypted; keep it chmod 600)")
    http_ca: str = setting("", "PEM CA certificates this node trusts when it calls other members' HTTPS gateways "
                            "(the console; empty: the system's; re-read on SIGHUP)")
    http_max_body: int = setting(4 * 1024 * 1024, "largest HTTP request body in bytes")
    http_body_budget: int = setting(256 * 1024 * 1024, "bytes of HTTP request bodies read and held at once, over all "
                                    "connections; a request whose body would pass it is answered 503 busy unread "
                                    "(at least http_max_body)")
    http_answer_budget: int = setting(256 * 1024 * 1024, "bytes of HTTP answers over 64 KiB built and not yet "
                                      "taken by their clients, over all connections; a new one that would pass it "
                                      "is answered 503 busy (one answer alone always goes: 0 sends one "
                                      "at a time); one client address holds at most a quarter of it")
    http_max_connections: int = setting(1024, "most HTTP connections served at once")
    http_max_client_connections: int = setting(128, "most HTTP connections from one client address at once; more "
                                                 "are answered 503 (0: no cap, and no client's share of "
                                                 "http_answer_budget; raise it behind a proxy)")
    http_header_timeout: float = setting(10.0, "seconds an HTTP client has to send a request's line and headers "
                                            "(and its TLS handshake); then 408 and the connection closes")
    http_body_timeout: float = setting(30.0, "seconds an HTTP client has to send a request's body; then 408 and "
                                          "the connection closes")
    http_idle_timeout: float = setting(60.0, "seconds a keep-alive HTTP connection may wait for its next request")
    http_console: str = setting("on", "web console at /ui: on, read-only (no operator actions) or off",
                             choices=("on", "read-only", "off"))
    webhook_concurrency: int = setting(16, "webhook deliveries in flight at once, per queue")
    webhook_max_in_flight: int = setting(256, "webhook deliveries in flight at once on this node, over all queues "
                                           "(each may hold a connection, a file descriptor); past it webhook "
                                           f"tasks wait ready in their queues (1..{MAX_WEBHOOK_IN_FLIGHT:,})")
    webhook_timeout: float = setting(30.0, "seconds one webhook attempt may take (capped by the task's timeout)")
    webhook_pool_size: int = setting(32, "connections open at once, and kept alive, per webhook destination")
    webhook_allow_hosts: str = setting("", "comma-separated webhook destinations allowed: host, host:port or "
                                        "*.domain (empty: any host whose addresses are public)", listed=True)
    webhook_allow_private: bool = setting(False, "without webhook_allow_hosts, also deliver webhooks to loopback, "
                                              "link-local and private addresses (169.254.169.254, 127.0.0.1, 10/8, "
                                              "...); off: refused")
    webhook_signing_secrets: str = setting("", "file of webhook signing secrets, one 'whsec_<base64>' a line: every "
                                            "delivery carries Standard Webhooks signatures (webhook-id, "
                                            "webhook-timestamp, webhook-signature), one per secret; re-read on "
                                            "SIGHUP and when it changes (empty: unsigned)")
    queue_limits: str = setting("", "per-queue limits, 'QUEUE:rate=R,burst=B,max_concurrent=N;...' (cluster-wide)")
    node_id: str = setting("", "this node's id in the ring (default: <hostname>-<port>)")
    data_dir: str = setting("", "directory for the append-only log (empty: memory only)")
    fsync: str = setting("interval", "log fsync policy", choices=("always", "interval", "never"))
    fsync_interval_ms: int = setting(10, "group-commit interval for fsync=interval, in ms")
    zk: str = setting("", "ZooKeeper hosts (host:port,...); empty: standalone ring of one", listed=True)
    cluster: str = setting("default", "cluster name (ZooKeeper path /miyaq/<cluster>)")
    auto_join: bool = setting(True, "join the ring on start")
    zk_session_timeout: float = setting(10.0, "ZooKeeper session timeout in seconds")
    zk_connect_timeout: float = setting(10.0, "seconds a node waits at start for a ZooKeeper server of zk to "
                                           "answer before it stops with an error ("
                                           f"{MIN_ZK_CONNECT_TIMEOUT:g}..{MAX_ZK_CONNECT_TIMEOUT:g}; once "
                                           "connected it reconnects without end)")
    zk_auth: str = setting("", "ZooKeeper digest credentials 'user:password': the cluster's znodes get ACLs only "
                            "they open (empty: no ACLs; prefer zk_auth_file or the environment: ps shows flags)")
    zk_auth_file: str = setting("", "file holding the 'user:password' of zk_auth")
    weight: float = setting(1.0, "this node's weight in the ring")
    replicas: int = setting(3, f"default holders per task in a cluster (1 when standalone; 1..{MAX_REPLICAS})")
    min_acks: int = setting(0, "holders that must store a task before a submit returns (0: all)")
    replica_offset: float = setting(5.0, "seconds between holder ranks' timers")
    peer_heartbeat_timeout: float = setting(PEER_HEARTBEAT_TIMEOUT,
                                         "seconds another node may leave this node's ZMTP heartbeats on the "
                                         "replication stream and the peer link unanswered (frozen, its host "
                                         "gone) before its connections are dropped with what was queued for it; "
                                         "a PING every fifth of it. A replication stream silent this long plus "
                                         "1 s is resynced")
    replication_timeout: float = setting(3.0, "seconds a submit waits for min_acks holders to store the task before "
                                           "it is refused not_enough_replicas (a resend with the same id is safe)")
    reconcile_timeout: float = setting(15.0, "most seconds a node restarted from its log (or empty while the ring "
                                          "lists it) holds dispatching while it reconciles with the other holders, "
                                          "counted from its registration")
    max_tasks: int = setting(1_000_000, "live tasks this node holds before it answers BUSY")
    max_payload: int = setting(1024 * 1024, "largest task payload in bytes")
    max_bytes: int = setting(1024 * 1024 * 1024, "payload bytes of the tasks this node holds (live and dead-letter; "
                                             "with their webhook headers and URLs, keys and errors) before it "
                                             "answers BUSY")
    max_result_bytes: int = setting(256 * 1024 * 1024, "result bytes of finished tasks kept before new submits are "
                                                    "answered BUSY (at twice this, the oldest are forgotten)")
    max_message: int = setting(16 * 1024 * 1024, "largest protocol message in bytes")
    max_batch: int = setting(1024, "most tasks in one SUBMIT or DISPATCH message")
    result_ttl: float = setting(3600.0, "seconds a finished task's result and tombstone are kept, at "
                                            "least: both stay max(result_ttl, dedup_window)")
    dedup_window: float = setting(3600.0, "seconds a finished task's key still deduplicates")
    max_tombstones: int = setting(200_000, "most finished tasks remembered (oldest dropped first)")
    max_dead: int = setting(100_000, "most tasks in the dead-letter queue (oldest dropped first)")
    max_waiters: int = setting(10_000, "most pending RESULT / RECEIVE long-polls")
    max_waiters_per_connection: int = setting(1_000, "most pending RESULT / RECEIVE long-polls from one connection")
    max_waiters_per_key: int = setting(5_000, "most pending RESULT / RECEIVE long-polls from one key (with keys)")
    max_workers: int = setting(10_000, "most workers registered at once; a READY from one more is answered BUSY")
    heartbeat: float = setting(1.0, "seconds between heartbeats to workers")
    liveness: int = setting(3, "missed heartbeats after which a worker is declared lost")
    service_heartbeat_timeout: float = setting(SERVICE_HEARTBEAT_TIMEOUT,
                                            "seconds a producer's or worker's connection may leave this node's "
                                            "ZMTP heartbeats unanswered before it is dropped (a PING every third "
                                            "of it; 0.5..3600); on a slow link, longer than its largest message "
                                            "takes to arrive: the answer comes behind it")
    default_timeout: float = setting(300.0, "default lease (task timeout) in seconds")
    default_max_retries: int = setting(3, "default retries before dead-lettering")
    default_backoff: float = setting(1.0, "default first retry delay in seconds (doubles each attempt)")
    default_backoff_max: float = setting(300.0, "default cap on the retry delay in seconds")
    shutdown_grace: float = setting(30.0, "seconds SIGTERM waits for running tasks")
    log_level: str = setting("INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    keys: str = setting("", "key directory made by `miyaq keys init`: CURVE on every ZeroMQ port, only "
                         "authorized keys connect, each command checked against its key's role (docs/security.md)")
    insecure: bool = setting(False, "start although a ZeroMQ port binds a non-loopback address without --keys, "
                                 "or the HTTP gateway without --http-tokens/--http-token "
                                 "(anyone who reaches it may do anything)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.check_fields()
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1..65535, not {self.port}")
        if self.http_port > 65535:
            raise ConfigError(f"http_port must be 1..65535 (0: no HTTP gateway), not {self.http_port}")
        for name, value in (("peer_port", self.peer), ("pub_port", self.pub)):
            if self.zk and value > 65535:      # only a clustered node binds them
                derived = "" if getattr(self, name) else f" (port + {1 if name == 'peer_port' else 2})"
                raise ConfigError(f"{name} must be 1..65535, not {value}{derived}: pass --{name.replace('_', '-')} N")
        if self.max_tasks < 1 or self.max_batch < 1:
            raise ConfigError("max_tasks and max_batch must be at least 1")
        self._check_task_defaults()
        for name in ("max_payload", "http_max_connections", "webhook_concurrency", "webhook_pool_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}: {_USELESS_AT_0[name]}")
        if self.http_token and not is_http_token(self.http_token):     # the token itself is never shown
            size = len(self.http_token)
            why = (f"it has {size} characters" if not MIN_HTTP_TOKEN <= size <= MAX_HTTP_TOKEN
                   else "it holds a space or a character that is not visible ASCII")
            raise ConfigError(f"http_token must be {MIN_HTTP_TOKEN} to {MAX_HTTP_TOKEN} visible ASCII characters, "
                              f"as a token of http_tokens: {why} (make one with: openssl rand -hex 32)")
        if self.max_batch > MAX_BATCH:
            raise ConfigError(f"max_batch must be 1..{MAX_BATCH:,}, not {self.max_batch:,} (a message of more "
                              "tasks saves nothing, and every message is bounded in the values it holds)")
        if self.heartbeat <= 0 or self.liveness < 1:
            raise ConfigError("heartbeat must be > 0 and liveness >= 1")
        check_zk_connect_timeout(self.zk_connect_timeout)
        if not 0.5 <= self.peer_heartbeat_timeout <= 3600:
            raise ConfigError(f"peer_heartbeat_timeout must be 0.5..3600 seconds, not {self.peer_heartbeat_timeout}")
        if not 0.5 <= self.service_heartbeat_timeout <= 3600:
            raise ConfigError("service_heartbeat_timeout must be 0.5..3600 seconds, not "
                              f"{self.service_heartbeat_timeout}")
        self._check_binds()
        if bool(self.http_cert) != bool(self.http_key):
            raise ConfigError("http_cert and http_key go together: give both for HTTPS, or neither")
        if min(self.http_header_timeout, self.http_body_timeout, self.http_idle_timeout) <= 0:
            raise ConfigError("http_header_timeout, http_body_timeout and http_idle_timeout must be > 0")
        if self.http_body_budget < self.http_max_body:
            raise ConfigError(f"http_body_budget ({self.http_body_budget:,}) must be at least http_max_body "
                              f"({self.http_max_body:,}): the gateway must be able to read one body of the "
                              "largest size")
        if self.max_bytes < self.max_payload:
            raise ConfigError(f"max_bytes ({self.max_bytes}) must be at least max_payload ({self.max_payload}): "
                              "a node must be able to hold one task")
        if self.max_result_bytes < 1:
            raise ConfigError("max_result_bytes must be at least 1")
        if not 1 <= self.webhook_max_in_flight <= MAX_WEBHOOK_IN_FLIGHT:
            raise ConfigError(f"webhook_max_in_flight must be 1..{MAX_WEBHOOK_IN_FLIGHT:,}, not "
                              f"{self.webhook_max_in_flight:,} (webhook deliveries in flight at once on this "
                              "node; each may hold a file descriptor)")

    def check_loaded(self) -> None:
        """:meth:`check_message_room`, of the settings a node is started with
        (``miyaq node``: flags, environment, file; :meth:`Settings.load`
        names the variable a refused value came from: before 2026-12-07 this
        check ran after that step, and ``MIYAQ_MAX_MESSAGE=100`` was not named)."""
        self.check_message_room()

    def check_message_room(self) -> None:
        """``max_message`` holds a task, and a result, of ``max_payload`` bytes
        with the fields around it (:data:`MESSAGE_ROOM`); at 0 every message
        was refused. Checked on the settings a node is started with
        (:meth:`check_loaded`), not by :meth:`validate`: the replay of the log checks
        logged records with a copy of the config whose ``max_payload`` is the
        log's own limit (``miyaq.persistence.replay``), and no message."""
        if self.max_message < self.max_payload + MESSAGE_ROOM:
            raise ConfigError(f"max_message ({self.max_message:,}) must be at least max_payload ({self.max_payload:,}) "
                              f"+ {MESSAGE_ROOM:,} = {self.max_payload + MESSAGE_ROOM:,} bytes: a message holds a "
                              "task's payload, or a result, with the fields around it")

    def _check_task_defaults(self) -> None:
        """The defaults a task takes are values its own checks accept (at its
        submit and when the log is replayed): a node that stored a task with
        ``replicas`` 17 refused the record at its next start, and lost a task
        it had acknowledged."""
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise ConfigError(f"replicas must be 1..{MAX_REPLICAS} (holders of a task), not {self.replicas}")
        if self.default_max_retries > MAX_RETRIES:
            raise ConfigError(f"default_max_retries must be 0..{MAX_RETRIES:,}, not {self.default_max_retries:,}")
        if not 0.01 <= self.default_timeout <= YEAR:
            raise ConfigError(f"default_timeout must be 0.01..{YEAR:.0f} seconds (a year), not "
                              f"{self.default_timeout:g}")
        for name in ("default_backoff", "default_backoff_max"):
            if getattr(self, name) > YEAR:
                raise ConfigError(f"{name} must be 0..{YEAR:.0f} seconds (a year), not {getattr(self, name):g}")

    def _check_binds(self) -> None:
        for endpoint in self.ipc_endpoints:
            path = endpoint.removeprefix("ipc://")
            if not endpoint.startswith("ipc://") or not path:
                raise ConfigError(f"bind takes unix socket endpoints, ipc:///path/node.sock, not {endpoint!r} "
                                  "(TCP is --host and --port)")
            if len(os.fsencode(path)) > MAX_IPC_PATH:
                raise ConfigError(f"bind: the socket path {path} is longer than {MAX_IPC_PATH} bytes, the most a "
                                  "unix socket's path may have: choose a shorter one")
        try:
            mode = int(self.bind_mode, 8)
        except ValueError:
            mode = -1
        if not 0 <= mode <= 0o777:
            raise ConfigError(f"bind_mode must be octal permissions such as 660 or 666, not {self.bind_mode!r}")
        for name in ("host", "advertise", "http_host"):
            value = getattr(self, name)
            if any(ch in value for ch in "/ \t") or (":" in value and not is_ipv6_address(value)):
                raise ConfigError(f"{name} takes a host name or address, IPv4 or IPv6 (no scheme, no port), "
                                  f"not {value!r}")
            setattr(self, name, bare_host(value))

    # -- derived ------------------------------------------------------------
    @property
    def ipc_endpoints(self) -> list[str]:
        """The unix socket endpoints of ``bind`` (in order, without duplicates)."""
        return list(dict.fromkeys(e.strip() for e in self.bind.split(",") if e.strip()))

    @property
    def ipc_mode(self) -> int:
        return int(self.bind_mode, 8)

    @property
    def id(self) -> str:
        return self.node_id or f"{socket.gethostname()}-{self.port}"

    @property
    def peer(self) -> int:
        return self.peer_port or self.port + 1

    @property
    def pub(self) -> int:
        return self.pub_port or self.port + 2

    @property
    def advertised_host(self) -> str:
        """The host others use to reach this node: ``advertise``, else ``host``
        (the hostname when bound to all)."""
        if self.advertise:
            return self.advertise
        return self.host if self.host not in WILDCARDS else socket.gethostname()

    def endpoint(self, port: int) -> str:
        """The endpoint others reach ``port`` of this node at (an IPv6 address bracketed)."""
        return tcp_endpoint(self.advertised_host, port)

    def bind_endpoint(self, port: int) -> str:
        """The endpoint ``port`` binds to: ``host`` (an IPv6 address bracketed)."""
        return tcp_endpoint(self.host, port)

    @property
    def http_url(self) -> str | None:
        """The HTTP gateway others use (https with http_cert), or None when it is off."""
        if not self.http_port:
            return None
        return f"{'https' if self.http_cert else 'http'}://{url_host(self.advertised_host)}:{self.http_port}"


#: Why each of these settings must be at least 1 (the node would start, and be of no use).
_USELESS_AT_0 = {
    "max_payload": "0 refuses every task with a payload (a named task always has one) and every result",
    "http_max_connections": "0 lets the HTTP gateway accept no connection",
    "webhook_concurrency": "0 accepts webhooks and never delivers one",
    "webhook_pool_size": "0 opens no connection to a webhook destination (every delivery waits out its timeout)",
}


def check_zk_connect_timeout(value: float) -> float:
    """``value`` as a float if it is a ``zk_connect_timeout`` a node may have:
    :data:`MIN_ZK_CONNECT_TIMEOUT` to :data:`MAX_ZK_CONNECT_TIMEOUT` seconds
    (NaN, infinite, 0 and negative refused), else ``ConfigError`` naming the
    setting. ``miyaq dev-cluster`` checks its ``--zk-connect-timeout`` here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not MIN_ZK_CONNECT_TIMEOUT <= value <= MAX_ZK_CONNECT_TIMEOUT:     # NaN fails both bounds
        raise ConfigError(f"zk_connect_timeout must be {MIN_ZK_CONNECT_TIMEOUT:g}..{MAX_ZK_CONNECT_TIMEOUT:g} "
                          f"seconds (the wait for ZooKeeper at start), not {value!r}")
    return float(value)


def is_http_token(token: str) -> bool:
    """``token`` is a bearer token the HTTP gateway may be given:
    :data:`MIN_HTTP_TOKEN` to :data:`MAX_HTTP_TOKEN` visible ASCII characters."""
    return MIN_HTTP_TOKEN <= len(token) <= MAX_HTTP_TOKEN and all(0x21 <= ord(ch) <= 0x7E for ch in token)
