"""What a client says when it cannot reach a node: the first-contact error
(no node was ever reached) and the error for one node it cannot send to.

Part of the client's sans-I/O core (:mod:`miyaq.client.core`): it reads what
:class:`~miyaq.client.nodes.Nodes` keeps -- the endpoints and where they
came from, whether keys are in use, why a handshake failed, whether any node
was reached -- and changes none of it. Called only where a call fails for
want of a node, never per submit: :attr:`Nodes.explain
<miyaq.client.nodes.Nodes.explain>` may wait for a probe there. It imports
the runtime only inside :func:`unreachable`, when a handshake failed (the
client's I/O has loaded it by then): importing the client must not import
gevent before a worker had a chance to monkey-patch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import Unavailable

if TYPE_CHECKING:
    from .nodes import Nodes

#: :func:`miyaq.protocol.reach.explain`'s phrase for a refused connection:
#: the first-contact message says it in its own words.
NOTHING_LISTENING = "nothing is listening there"


def unreachable(nodes: Nodes) -> Unavailable:
    """The first-contact error: no node was ever reached. Names the
    endpoints and where they came from; a handshake that failed, why
    (a key refused, keys on one side only, a wrong node key); else,
    with keys, the likely causes; else, for the first of the three
    endpoints shown that :attr:`Nodes.explain` finds taking connections
    without answering, unresolved or unreachable, what it found; else
    that nothing is listening. Called where a call fails (it may wait
    for a probe: :attr:`Nodes.explain`)."""
    endpoints = nodes.endpoints
    shown = ", ".join(endpoints[:3]) + (" ..." if len(endpoints) > 3 else "")
    source = "" if nodes.source == "given" else f" ({nodes.source})"
    failures = nodes.failures
    if failures:
        from ..runtime.connections import explain_handshake    # loaded with the client's I/O
        node = min(failures)
        return Unavailable(f"cannot reach any node{source}: "
                           f"{explain_handshake(failures[node], endpoints[node], nodes.secure)}")
    if nodes.secure:
        return Unavailable(f"cannot reach any node: no answer from {shown}{source}: is the node's public "
                           f"key right (--server-key), and is this key authorized? (Or is no node "
                           f"running there?)")
    for endpoint in endpoints[:3]:
        why = nodes.explain(endpoint)
        if why is not None and why != NOTHING_LISTENING:
            # A port that takes connections and never answers: not a node's, or a
            # node that cannot take them (at its limit of open files, stalled).
            return Unavailable(f"cannot reach any node{source}: {endpoint}: {why} -- if a node runs there, "
                               f"its log says why it does not answer (at its limit of open files?); check "
                               f"with `miyaq status --connect {endpoint}`")
    return Unavailable(f"cannot reach any node: nothing is listening on {shown}{source} -- is a node "
                       f"running? Start one with `miyaq node`, or check with "
                       f"`miyaq status --connect {endpoints[0]}`")


def no_connection(nodes: Nodes, node: int) -> Unavailable:
    """A node we cannot send to: the first-contact message until any node answered."""
    if not nodes.reached:
        return unreachable(nodes)
    return Unavailable(f"no connection to {nodes.endpoints[node]}")
