"""Health probes for orchestrators: ``GET /livez`` and ``GET /readyz``.

Both answer without a token, also on a node with tokens, over HTTP or HTTPS
(:data:`miyaq.gateway.permissions.OPEN`), and reveal one status word, no
more: ``{"status": "live"}`` / ``{"status": "ready"}`` with 200, or the
reason with 503. They log nothing per request (counted in the metrics as
any request).

* ``/livez``: the node's event loop answers. A frozen or wedged process does
  not answer at all, so the probe's timeout fails it; a clustered node whose
  housekeeping has not run for ``STALL`` seconds (the stamp it keeps for
  freeze detection, :attr:`Dispatcher.alive_at`) answers 503 ``stalled``.
* ``/readyz``: the node would serve now: started (the gateway is served
  only once every part has started, the log's replay included), not
  draining (``draining``: SIGTERM), accepting submits (``not_accepting``),
  and its role ready (:meth:`miyaq.core.handles.NodeRole.not_ready`: in a
  cluster, a member of the ring it holds -- ``not_in_ring`` -- not cut off
  from ZooKeeper -- ``fenced`` -- and done reconciling with its peers --
  ``reconciling``), its log writable (``storage``: a full or failing disk;
  the node refuses every new task and every copy its peers send, so in a
  cluster each submit it is a holder of waits out the replication timeout
  -- docs/operations.md, "The node's disk is full"; before 2026-12-07 it
  answered ``ready``); any other reason holding dispatch is ``held``.

Kubernetes uses ``/readyz`` to let a rolling update go on only once the
restarted node is back in the ring (deploy/README.md), and ``/livez`` for
its startup and liveness probes. Every check here reads a plain attribute:
nothing blocks, nothing allocates beyond the answer.
"""
from __future__ import annotations

from miyaq.constants import STALL
from miyaq.core.core import Core
from miyaq.core.gate import FENCED, RECONCILING, SHUTTING_DOWN
from miyaq.core.handles import NodeRole, StorageHealth
from miyaq.gateway.request import Request, Response, json_response
from miyaq.runtime import monotonic

#: The word ``/readyz`` answers for each reason the dispatch gate is held.
GATE_WORDS = {SHUTTING_DOWN: "draining", RECONCILING: "reconciling", FENCED: "fenced"}
#: Probe answers are never cached by a proxy in between.
NO_STORE = [("Cache-Control", "no-store")]


class Health:
    def __init__(self, core: Core, role: NodeRole, storage: StorageHealth | None = None) -> None:
        """``storage``: the node's log (None: a node without one, always writable)."""
        self.core = core
        self.role = role
        self.storage = storage

    def not_live(self) -> str:
        """Why the node is not live, one word (``""`` when it is): ``stalled``
        when a clustered node's housekeeping has not stamped its time for
        ``STALL`` seconds (a standalone node does not stamp it: answering is
        enough)."""
        alive_at = self.core.dispatcher.alive_at
        if alive_at and monotonic() - alive_at > STALL:
            return "stalled"
        return ""

    def not_ready(self) -> str:
        """Why the node would not serve now, one word (``""`` when it would)."""
        core = self.core
        if core.draining:
            return "draining"
        if not core.engine.accepting:
            return "not_accepting"
        reason = self.role.not_ready()
        if reason:
            return reason
        if self.storage is not None and not self.storage.writable:
            return "storage"
        held = core.gate.held()
        if held:
            return GATE_WORDS.get(held[0], "held")
        return ""

    def livez(self, request: Request) -> Response:
        reason = self.not_live()
        return json_response({"status": reason or "live"}, 503 if reason else 200, NO_STORE)

    def readyz(self, request: Request) -> Response:
        reason = self.not_ready()
        return json_response({"status": reason or "ready"}, 503 if reason else 200, NO_STORE)
