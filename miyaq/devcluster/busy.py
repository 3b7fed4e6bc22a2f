"""Whether a dev cluster's node exited at start because another process took
one of its ports (``miyaq dev-cluster``).

:func:`~miyaq.devcluster.ports.port_blocks` checks a block's ports free, and
the node binds them a second or two later: on a busy machine another
process can take one in between (a CI run with three pytest workers lost
README.md's ``miyaq dev-cluster --nodes 3`` so, the HTTP port of ``n3``).
Such a node is started again on another block
(:class:`~miyaq.devcluster.cluster.DevCluster`); any other failure to start
is not, and fails the start as before.

Constraints:

* Only this counts: exit status 2 and, as the last line its run wrote to
  its log, the node's own message for a port in use
  (:func:`miyaq.core.binding.why`: ``miyaq: error: port P is in use (WHAT
  on HOST): another process listens there; ...``), for one of the node's
  own ports (service, peer, pub, HTTP). A line of an earlier run in the same
  log (it is appended to) does not: the run's output starts at
  ``DevNode.log_start``.
* A node that exited so has registered nothing with ZooKeeper: a node binds
  every port before its role starts (:mod:`miyaq.node.assemble`,
  ``Gateway.setup``), so it is started again under the same id.
"""
from __future__ import annotations

from dataclasses import dataclass

from miyaq.core.binding import port_in_use
from miyaq.devcluster.node import DevNode

__all__ = ["TakenPort", "taken_port"]

EXIT_CONFIG = 2
"""A node's exit status for a ConfigError (``miyaq: error: ...``)."""
TAIL_BYTES = 65536


@dataclass(frozen=True)
class TakenPort:
    """The port a node found taken at start, and what it was for (``HTTP gateway``)."""

    port: int
    what: str


def taken_port(node: DevNode) -> TakenPort | None:
    """The node's port that another process held when it bound it, if that is
    why it exited during start; ``None`` for a node still running or any other
    exit."""
    if node.exit_code != EXIT_CONFIG:
        return None
    lines = [line for line in _run_output(node).splitlines() if line.strip()]
    taken = port_in_use(lines[-1]) if lines else None
    if taken is None or not lines[-1].startswith("miyaq: error: ") or taken[0] not in node.ports:
        return None
    return TakenPort(*taken)


def _run_output(node: DevNode) -> str:
    """What the node's last run wrote to its log (its end, at most ``TAIL_BYTES``)."""
    try:
        with open(node.proc.log_path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(node.log_start, size - TAIL_BYTES))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""
