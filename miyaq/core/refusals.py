"""Records refused from other nodes and from the log.

A record another node sent (REPLICATE, a handoff, SYNC, a stream event, a
QUERY or REPLICATE answer) or that the log holds is checked like a SUBMIT
(:mod:`miyaq.protocol.recordspec`); one that fails is not stored. Each
refusal is counted by where it came from and the field at fault (both from
fixed sets, so ``/metrics`` stays bounded) and logged with its sender, at
most a few lines a minute per source so a flood cannot fill the log.
"""
from __future__ import annotations

import logging
from collections import Counter

from miyaq.errors import InvalidField
from miyaq.logs import LogLimiter
from miyaq.protocol.recordspec import FIELDS

logger = logging.getLogger(__name__)

#: Where a refused record came from.
SOURCES = ("replicate", "handoff", "sync", "stream", "query", "answer", "log")


class Refusals:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()    # (source, field) -> records refused
        self._log = LogLimiter(logger)

    def refuse(self, source: str, sender: str, err: InvalidField) -> None:
        """Count and log one refused record from ``sender`` (a node id, or the log's path)."""
        field = err.details.get("field")
        label = field if field in FIELDS else "other"
        self.counts[(source if source in SOURCES else "other", label)] += 1
        self._log.warning(source, "refused a record (%s) from %.64r: %s", source, sender, err.message)

    def total(self) -> int:
        return sum(self.counts.values())

    def by_source(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (source, _), n in self.counts.items():
            out[source] = out.get(source, 0) + n
        return out
