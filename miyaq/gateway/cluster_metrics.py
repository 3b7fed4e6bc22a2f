"""The ring's facts and the role's counters for ``/metrics`` and ``/status``
(:mod:`miyaq.gateway.metrics`): read from the node's role when asked -- a
scrape, a STATUS -- so the cluster's hot paths pay nothing for them. A
standalone node shows epoch 1, itself as leader, no peers and no cluster
counters.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from miyaq.core.handles import NodeRole
from miyaq.runtime import wall

#: The role's counters (STATUS ``cluster``), each exported as ``miyaq_cluster_<key>_total``
#: by :meth:`ClusterGauges.metrics` (read when scraped; none on a standalone node). docs/http.md says
#: what each counts.
CLUSTER_COUNTERS: tuple[tuple[str, str], ...] = (
    ("takeovers", "Standby copies that asked the other holders, heard nobody run the task and ran it here"),
    ("deferrals", "Times a standby copy waited an offset instead of running: another holder runs or holds "
                  "the task, or this node may not run it now"),
    ("queries_refused", "Standby copies' QUERYs whose send the link to a holder refused (not up yet, or gone); "
                        "each is sent again until its deadline, and only then counts as that holder's silence"),
    ("duplicates", "Duplicate runs counted here (miyaq_duplicate_runs_total summed over the queues, kept "
                   "when a queue is forgotten)"),
    ("stream_gaps", "Messages found missing from the other nodes' replication streams (each asks a resync)"),
    ("resyncs", "Resyncs this node asked of other nodes (a gap, a silent stream, a new subscription or "
                "incarnation, a restart, a freeze)"),
    ("stream_dropped", "Replication stream messages dropped on purpose (fault injection: "
                       "MIYAQ_FAULT_STREAM_DROP)"),
    ("submits_rejected", "Submits this node coordinated and rejected before enough holders stored them "
                         "(not_enough_replicas; shutting_down at its stop)"),
    ("handed_off", "Task copies sent to their new holders after ring changes (handoff)"),
    ("cancels_forwarded", "CANCELs this node asked the task's first holder to answer (it is not the first holder)"),
    ("cancels_unconfirmed", "CANCELs this node answered from its own copy, unconfirmed: the first holder was silent "
                            "or refused, or a ring change or a standby copy left its answer in doubt"),
    ("held_dropped", "Copies every new holder confirmed on a ring newer than this node's view, kept for that "
                     "ring and dropped past the bounds (60 s without the view reaching it, or max_tasks held)"),
    ("copies_refused_storage", "Copies other nodes sent here (a submit's or a handoff's) refused at once, nothing "
                               "stored, because this node's log could not be written (a full or failing disk)"),
)


class ClusterGauges:
    """Ring facts for ``/metrics`` and ``/status``, read from the role when asked:
    epoch, leader, members (with each member's HTTP gateway: ``miyaq queue
    limit`` uses it to reach every node), and replication lag per peer
    (seconds since the peer's stream was heard, requests to it unanswered)."""

    def __init__(self, role: NodeRole) -> None:
        self.role = role

    def view(self) -> dict[str, Any]:
        info = self.role.ring_info()
        members = info["members"]
        return {"epoch": info["epoch"], "leader": info["leader"], "members": sorted(members),
                "is_leader": self.role.is_leader, "http": {m: members[m].get("http") for m in sorted(members)}}

    def replication_lag(self) -> dict[str, tuple[float, int]]:
        return self.role.replication_lag(wall())

    def stats(self) -> dict[str, Any] | None:
        """The role's STATUS ``cluster`` section, read once a scrape: the
        counters of :data:`CLUSTER_COUNTERS` and the session state with the
        membership store (``zookeeper``: ``connected``, ``suspended``,
        ``lost``, ``connecting``, ``closed``); None on a standalone node."""
        return self.role.stats()

    def metrics(self) -> Iterator[Metric]:
        """The ring's and the role's families, read now (``NodeCollector``
        yields them at each scrape)."""
        view = self.view()
        yield GaugeMetricFamily("miyaq_ring_epoch", "Epoch of the ring this node holds", value=view["epoch"])
        yield GaugeMetricFamily("miyaq_ring_members", "Nodes in the ring", value=len(view["members"]))
        yield GaugeMetricFamily("miyaq_is_leader", "1 while this node acts as leader",
                                value=int(view["is_leader"]))
        lags = sorted(self.replication_lag().items())
        lag = GaugeMetricFamily("miyaq_replication_lag_seconds", "Replication lag per peer", labels=["peer"])
        for peer, (seconds, _) in lags:
            lag.add_metric([peer], seconds)
        yield lag
        lag_n = GaugeMetricFamily("miyaq_replication_lag_messages", "Unacknowledged replication messages "
                                  "per peer", labels=["peer"])
        for peer, (_, n) in lags:
            lag_n.add_metric([peer], n)
        yield lag_n
        stats = self.stats()
        if stats is not None:
            yield GaugeMetricFamily("miyaq_zookeeper_connected", "1 while the node's ZooKeeper session is "
                                    "connected; 0 while suspended, lost or connecting (STATUS cluster.zookeeper)",
                                    value=int(stats["zookeeper"] == "connected"))
            for key, text in CLUSTER_COUNTERS:
                yield CounterMetricFamily(f"miyaq_cluster_{key}", text, value=int(stats[key]))
            yield GaugeMetricFamily("miyaq_cluster_held_copies", "Copies every new holder confirmed on a ring newer "
                                    "than this node's view, kept until its view reaches that ring "
                                    "(STATUS cluster.held_copies)", value=int(stats["held_copies"]))
