"""One node of a local chaos run's cluster, as the run addresses it.

A restarted node keeps its :class:`NodeSpec` -- id, port and data directory
-- so it replays its log on the port it had; a node replaced for good
(``--rolling``) gets a new spec with a new id, port and data directory.
``index`` is the node's slot on the run's network (:mod:`.netns`: its
address, namespace and firewall rules); a replacement takes over its
predecessor's slot. An external cluster's nodes have no data directory
(``""``) and no namespace (``None``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NodeSpec:
    node_id: str
    index: int
    host: str
    port: int
    data_dir: str
    netns: str | None

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"
