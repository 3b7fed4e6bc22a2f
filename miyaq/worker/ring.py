"""How a worker follows its nodes' ring: a link to every node the ring
names, and none kept to a node that left it.

Every WELCOME and HEARTBEAT from a node carries the ring's service
endpoints (``nodes``). :meth:`RingFollower.follow` links to each one the
worker has no link to (at most ``MAX_NODES`` links; an endpoint libzmq
refuses is remembered and never tried again), and notes for each link
since when the lists stopped naming its node. A link whose node no list
has named for ``DEPARTED_NODE_GRACE`` and that holds nothing here -- no
task of its node running, stopping or backlogged, nothing in its outbox --
is retired (:meth:`~miyaq.worker.link.NodeLink.retire`): a node that came
back at a new address (a container's new IP, a rolling upgrade) leaves no
link behind to retry its old one for ever, nor one that takes the place of
a current member under ``MAX_NODES``. Never an endpoint the worker was
given (``--connect``), never its last link. Before 2026-12-05 links were
only added: past 256 addresses a worker linked to no new node.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..logs import LogLimiter
from ..protocol import commands as c
from ..runtime import monotonic
from .config import DEPARTED_NODE_CHECK, DEPARTED_NODE_GRACE, MAX_NODES
from .link import NodeLink

if TYPE_CHECKING:
    from .runner import Worker

logger = logging.getLogger(__name__)
_log = LogLimiter(logger)     # what nodes name may repeat (a buggy or hostile one): a few lines a minute


class RingFollower:
    """The links of one worker, kept to the nodes the ring names."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self.refused: set[str] = set()     # endpoints a node named that libzmq refused (bounded: MAX_NODES)
        self._next_departed_check = 0.0    # monotonic: when follow() may next look for links to retire

    def follow(self, endpoints: list[Any]) -> None:
        """Act on a ring's ``nodes`` list (from a WELCOME or HEARTBEAT):
        link to every node it names, up to MAX_NODES links, and retire the
        links to nodes it has no longer named for DEPARTED_NODE_GRACE
        (:meth:`_retire_departed`, at most every DEPARTED_NODE_CHECK: it
        walks the running tasks and the backlog)."""
        worker = self.worker
        if worker.stopping:
            return
        now = monotonic()
        named = {ep for ep in endpoints if isinstance(ep, str)}
        for link in worker.links:
            if link.endpoint in named or link.advertised in named:
                link.absent_since = None
            elif link.absent_since is None:
                link.absent_since = now
        if now >= self._next_departed_check:
            self._next_departed_check = now + DEPARTED_NODE_CHECK
            self._retire_departed(now)
        links = worker.links
        known = {link.endpoint for link in links} | {link.advertised for link in links if link.advertised}
        for ep in endpoints:
            if (isinstance(ep, str) and ep.startswith("tcp://") and len(ep) <= c.MAX_ENDPOINT_CHARS
                    and ep not in known and ep not in self.refused):
                if len(links) >= MAX_NODES:
                    _log.warning("max nodes", "worker %s: not linking to node %s: linked to %d nodes already, the "
                                 "most a worker links to (MAX_NODES)", worker.wid, ep, MAX_NODES)
                    break
                try:
                    link = NodeLink(worker, worker.factory, ep)
                except ConfigError as err:
                    # A node named an endpoint libzmq refuses (a buggy or hostile
                    # one): logged once, never tried again.
                    if len(self.refused) < MAX_NODES:
                        self.refused.add(ep)
                    _log.warning("refused", "worker %s: not dialling a node the ring names: %s", worker.wid,
                                 err.message)
                    continue
                links.append(link)
                known.add(ep)       # a list that names it twice links it once
                worker.pulse.add(ep)
                worker.serve(link)
                logger.info("worker %s: discovered node %s", worker.wid, ep)

    def _retire_departed(self, now: float) -> None:
        """Retire every link whose node no list has named for
        DEPARTED_NODE_GRACE and that holds nothing (:meth:`_held_links`);
        a link still holding something is looked at again at a later list."""
        worker = self.worker
        departed = [(link, now - link.absent_since) for link in worker.links
                    if link.absent_since is not None and now - link.absent_since >= DEPARTED_NODE_GRACE
                    and link.endpoint not in worker.endpoints]
        if not departed:
            return
        held = self._held_links()
        for link, absent in departed:
            if id(link) in held or len(worker.links) <= 1:
                continue
            worker.links.remove(link)     # in place: Routes shares the list
            worker.pulse.remove(link.endpoint)
            link.retire()
            logger.info("worker %s: node %s is no longer in the ring (no list of its members has named it for "
                        "%.0fs): no longer linked to it", worker.wid, link.endpoint, absent)

    def _held_links(self) -> set[int]:
        """The ids of the links something here still needs: a task their
        node gave runs (an earlier attempt still stopping too) or waits in
        the backlog, or a result or touch waits in their outbox."""
        worker = self.worker
        held = {id(link) for link in worker.routes.origin.values()}
        held.update(id(link) for link in worker.backlog.links())
        held.update(id(link) for link in worker.links if len(link.outbox))
        superseded = {job.node for job in worker.superseded}
        held.update(id(link) for link in worker.links if link.endpoint in superseded)
        return held
