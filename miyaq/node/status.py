"""What STATUS and ``GET /status`` report about a node: the core's counts
and the dispatch gate, periodic schedules, the role's cluster section (None
when standalone), the log's health (None without a data dir), open files
against their limit (:mod:`miyaq.node.open_files`) and security
(keys on or off, the authorized set, refused handshakes, the ``--insecure``
warning)."""
from __future__ import annotations

from typing import Any

from miyaq import __version__
from miyaq.config import NodeConfig
from miyaq.core.core import Core
from miyaq.core.handles import NodeRole, StorageHealth
from miyaq.node.open_files import OpenFilesWatch
from miyaq.periodic.scheduler import PeriodicScheduler
from miyaq.runtime import monotonic
from miyaq.security.handshakes import HandshakeFailures
from miyaq.security.zap import ZapHandler


class NodeStatus:
    def __init__(self, config: NodeConfig, core: Core, role: NodeRole, periodic: PeriodicScheduler,
                 storage: StorageHealth | None, open_files: OpenFilesWatch, keys: ZapHandler | None = None,
                 warning: str | None = None, handshakes: HandshakeFailures | None = None) -> None:
        self.node_id = config.id
        self.core = core
        self.role = role
        self.periodic = periodic
        self.storage = storage
        self.open_files = open_files
        self.keys = keys
        self.warning = warning
        self.handshakes = handshakes
        self.started = monotonic()

    def __call__(self, now: float) -> dict[str, Any]:
        status: dict[str, Any] = {"node": self.node_id, "version": __version__,
                                  "uptime": monotonic() - self.started}
        status.update(self.core.status())
        status["periodic"] = self.periodic.stats()
        status["cluster"] = self.role.stats()
        status["storage"] = self.storage.stats() if self.storage is not None else None
        status["security"] = self.security()
        status["open_files"] = self.open_files.stats()
        return status

    def security(self) -> dict[str, Any]:
        """``keys``: CURVE on or off; with keys, ``authorized`` (how many keys),
        ``roles``, ``handshakes_refused``/``handshakes_admitted`` and ``reloads``;
        ``handshakes_failed`` (keys or not): ``{port: {reason: count}}`` of
        the handshakes that failed before any key was checked
        (:mod:`miyaq.security.handshakes`); ``warning`` when the node runs
        exposed (``--insecure``)."""
        section: dict[str, Any] = {"keys": self.keys is not None}
        if self.keys is not None:
            zap = self.keys.stats()
            zap["authorized"] = zap.pop("keys")
            section.update(zap)
        if self.handshakes is not None:
            section["handshakes_failed"] = self.handshakes.stats()
        if self.warning:
            section["warning"] = self.warning
        return section
