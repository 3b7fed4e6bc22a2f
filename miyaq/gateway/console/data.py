"""Everything the console reads from its node, in one place.

Pages get plain dicts and lists from here, built by the same functions the
JSON API uses (``Node.status`` as ``GET /status``, ``AdminApi.queue_rows``
as ``GET /queues``, ``WorkerRegistry.describe`` as ``GET /workers``,
``Engine.info`` as ``GET /tasks/{id}``), so the console never shows what
the API would not. Other members are read through their gateways
(:mod:`.peers`). Every list is cut to a page; nothing here changes state.
"""
from __future__ import annotations

import json
from itertools import islice
from typing import TYPE_CHECKING, Any

import msgpack

from ...runtime import wall
from ...store.task import LIVE_STATES, args_lost
from .activity import Activity
from .attempts import AttemptLog
from .peer_answers import NOT_UNDERSTOOD, totals_of, workers_of
from .peers import Peers

if TYPE_CHECKING:
    from ..admin_api import AdminApi
    from ..server import Gateway

PAYLOAD_SHOWN = 4096            # characters of a payload or result shown
PAYLOAD_DECODED = 256 * 1024    # larger payloads are shown raw, not decoded


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return repr(value)


def preview(data: bytes | None, decode: bool = True) -> dict[str, Any] | None:
    """A payload as text for a page: ``{"size", "text", "cut", "format"}``, at
    most ``PAYLOAD_SHOWN`` characters (the template escapes it)."""
    if data is None:
        return None
    text, fmt = "", "text"
    if decode and len(data) <= PAYLOAD_DECODED:
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
            text, fmt = json.dumps(value, default=_json_default, ensure_ascii=False, indent=1), "msgpack"
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
            text = ""
    if not text:
        text = data[:PAYLOAD_SHOWN * 4].decode("utf-8", "replace")
    return {"size": len(data), "text": text[:PAYLOAD_SHOWN], "cut": len(text) > PAYLOAD_SHOWN, "format": fmt}


class ConsoleData:
    def __init__(self, gateway: Gateway, admin: AdminApi, activity: Activity, attempts: AttemptLog,
                 peers: Peers) -> None:
        self.gateway = gateway
        self.node_id = gateway.config.id
        self.role = gateway.role
        self.engine = gateway.core.engine
        self.admin = admin
        self.activity = activity
        self.attempts = attempts
        self.peers = peers

    # -- this node ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``GET /status`` of this node, with live tasks summed by state
        (built in its turn: :mod:`miyaq.core.view_lane`)."""
        status = self._own_status()
        status["ring"] = self.gateway.metrics.cluster.view()
        by_state = dict.fromkeys(LIVE_STATES, 0)
        for counts in status["queues"].values():      # the per-queue rows just built: not counted again
            for state in LIVE_STATES:
                by_state[state] += counts.get(state, 0)
        status["live_by_state"] = by_state
        return status

    def _own_status(self) -> dict[str, Any]:
        """This node's ``GET /status``, built in its turn (:mod:`miyaq.core.view_lane`)."""
        return self.gateway.core.views.run(lambda: self.gateway.status(wall()), "console")

    def queues(self) -> list[dict[str, Any]]:
        """``GET /queues`` rows with submitted and completed per second over the last minute."""
        rates = self.activity.queue_rates()
        rows = self.gateway.core.views.run(self.admin.queue_rows, "console")
        for row in rows:
            row["submit_rate"], row["done_rate"] = rates.get(row["name"], (0.0, 0.0))
        return rows

    # -- the ring ----------------------------------------------------------------------
    def members(self, own: dict[str, Any] | None = None, counts: bool = True) -> list[dict[str, Any]]:
        """Every ring member: share, weight, gateway, and -- with ``counts`` --
        from its ``/status`` the tasks it holds and its workers (``error``
        when it did not answer)."""
        info = self.role.ring_info()
        leader = info.get("leader")
        lag = self.gateway.role.replication_lag(wall())
        out = []
        for node_id, member in sorted(info["members"].items()):
            row: dict[str, Any] = {"node": node_id, "share": member.get("share", 0.0),
                                   "weight": member.get("weight", 1.0), "http": member.get("http"),
                                   "service": member.get("service"), "leader": node_id == leader,
                                   "self": node_id == self.node_id,
                                   "lag_seconds": lag[node_id][0] if node_id in lag else None,
                                   "lag_messages": lag[node_id][1] if node_id in lag else None}
            status: dict[str, Any] | str
            if not counts:
                out.append(row)
                continue
            if row["self"]:
                status = own if own is not None else self._own_status()
            elif row["http"]:
                status = self.peers.get(row["http"], "/status")
            else:
                status = "no HTTP gateway"
            if isinstance(status, str):
                row["error"] = status
            else:
                totals = totals_of(status)
                if totals is None:
                    row["error"] = NOT_UNDERSTOOD
                else:
                    row.update(totals)
            out.append(row)
        return out

    def workers(self, limit: int) -> list[dict[str, Any]]:
        """Per member: ``{"node", "workers": [...], "error"?}`` (``GET /workers`` of each)."""
        groups = []
        for member in self.members(counts=False):     # not each member's /status: a view of every queue
            group: dict[str, Any] = {"node": member["node"], "self": member["self"], "http": member["http"]}
            if member["self"]:
                group["workers"] = self.gateway.core.workers.describe(limit)
            elif member["http"]:
                answer = self.peers.get(member["http"], f"/workers?limit={limit}")
                workers = None if isinstance(answer, str) else workers_of(answer, limit)
                if workers is not None:
                    group["workers"] = workers
                else:
                    group["workers"], group["error"] = [], answer if isinstance(answer, str) else NOT_UNDERSTOOD
            else:
                group["workers"], group["error"] = [], "no HTTP gateway"
            groups.append(group)
        return groups

    # -- tasks -------------------------------------------------------------------------
    def find(self, ref: str, by_key: bool) -> str | None:
        """The id of the task ``ref`` names, by id or else (if ``by_key``: a
        search, for callers who may list tasks) by key (this node's tasks)."""
        table = self.engine.table
        if ref in table.live or ref in table.dead or table.tombstone(ref) is not None:
            return ref
        return table.keys.get(ref) if by_key else None

    def task(self, task_id: str, *, internals: bool, result: bool) -> dict[str, Any] | None:
        """A task as ``GET /tasks/{id}`` shows it, with its holders; None if
        this node does not know it. With ``result``, a finished task's result
        preview (as ``GET /tasks/{id}/result``); with ``internals``, its
        payload preview and the failed attempts this node saw (messages and
        tracebacks, in no JSON answer). Left out, they are None: the caller
        decides who may see them (:data:`.access.TASK_INTERNALS`)."""
        table = self.engine.table
        task = table.live.get(task_id) or table.dead.get(task_id)
        stone = table.tombstone(task_id) if task is None else None
        if task is None and stone is None:
            return None
        view: dict[str, Any] = {"info": self.engine.info(task_id), "internals": internals,
                                "attempts": self.attempts.of(task_id) if internals else None,
                                "payload": None, "result": None}
        if task is not None:
            if internals and args_lost(task) is None:     # else its body is empty, not its arguments
                view["payload"] = preview(task.body, decode=task.url is None)
            view["holders"] = list(task.holders) or [self.node_id]
        else:
            assert stone is not None
            if result:
                view["result"] = preview(stone.result)
            view["holders"] = self.holders_of(task_id, stone.key)
        return view

    def holders_of(self, task_id: str, key: str | None = None) -> list[str]:
        """Where the ring places ``task_id`` (with the node's default replicas)."""
        return self.role.holders(key if key is not None else task_id, self.gateway.config.replicas)

    def member_urls(self) -> dict[str, str | None]:
        return {node_id: m.get("http") for node_id, m in self.role.ring_info()["members"].items()}

    def dead(self, queue: str | None, offset: int, limit: int) -> list[dict[str, Any]]:
        """One page of the dead-letter queue (oldest first), as ``GET /dead`` shows it."""
        return [t.header() for t in islice(self.engine.table.iter_dead(queue), offset, offset + limit)]

    def dead_count(self, queue: str | None) -> int:
        if queue is None:
            return len(self.engine.table.dead)
        return self.engine.queue_counts().get(queue, {}).get("dead", 0)

    # -- periodic ----------------------------------------------------------------------
    def schedules(self, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many, one page of) the periodic schedules this node knows, with
        their next tick and the last one this node fired as leader."""
        entries = self.gateway.schedules.known()
        now_ms = int(wall() * 1000)
        rows = []
        for entry in entries[offset:offset + limit]:
            schedule = entry.schedule
            nxt = schedule.next_tick(now_ms)
            last = entry.last
            rows.append({"name": schedule.name, "task": schedule.task, "queue": schedule.queue,
                         "every": schedule.every_ms / 1000 if schedule.every_ms is not None else None,
                         "cron": schedule.cron, "ttl": schedule.ttl,
                         "next": nxt / 1000 if nxt is not None else None,
                         "last": last / 1000 if last is not None else None, "declared": entry.declared,
                         "seen": entry.seen, "workers": entry.workers})
        return len(entries), rows
