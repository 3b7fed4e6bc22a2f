"""The ports a page names, mapped to free loopback ports for one run.

A page is written with the ports a reader would use (``7450`` for a node,
``8088`` for its HTTP gateway, ...). Before a block runs, every port number
in it that falls in one of :data:`DOC_PORT_RANGES` is replaced by the port at
the same offset in a block of free ports chosen for this page, so offsets
survive (a node's peer port ``7451`` maps next to its service port, a dev
cluster's second node ``7460`` ten above the first). The Markdown itself is
never edited. The environment of every command gets the mapped defaults
(:meth:`PortMap.environment`), so a command that names no port (``miyaq
node``, ``miyaq status``) uses the mapped one too.
"""
from __future__ import annotations

import re

from miyaq.testing.ports import free_port

DOC_PORT_RANGES: tuple[tuple[int, int], ...] = (
    (7450, 50),    # nodes: service, peer (+1), pub (+2); dev-cluster nodes step by 10, HTTP at +8
    (8080, 20),    # HTTP gateways (8088 is a node's default)
    (9000, 100),   # anything else a page listens on (a webhook receiver, ...)
)
"""(first port, count) of every range a page may use; see docs/writing-docs.md."""

_PORT_TOKEN = re.compile(r"(?<![\w.])(\d{4})(?![\w])")


def _free_block(count: int) -> int:
    """The first of ``count`` consecutive free ports in this pytest worker's
    own slice of the ports below the ephemeral range, remembered so no other
    test of the worker is handed them (:func:`miyaq.testing.ports.free_port`).
    Before 2026-12-07 a page drew its blocks anywhere in 20000-32000, the
    slices of the other workers included: with three workers a page's dev
    cluster found its node's HTTP port taken between its check and its bind
    (CI, README.md's ``miyaq dev-cluster --nodes 3``)."""
    return free_port(span=count)


class PortMap:
    """One page's mapping from the ports it names to free ones."""

    def __init__(self) -> None:
        self.bases: dict[int, int] = {first: _free_block(count) for first, count in DOC_PORT_RANGES}

    def port(self, documented: int) -> int:
        """The free port standing in for ``documented`` (unchanged outside the ranges)."""
        for first, count in DOC_PORT_RANGES:
            if first <= documented < first + count:
                return self.bases[first] + documented - first
        return documented

    def map_text(self, text: str) -> str:
        """``text`` with every documented port replaced by its stand-in."""
        return _PORT_TOKEN.sub(lambda m: str(self.port(int(m.group(1)))), text)

    def environment(self) -> dict[str, str]:
        """The defaults a command that names no port falls back to, mapped."""
        port, http = self.port(7450), self.port(8088)
        return {
            "MIYAQ_PORT": str(port),
            "MIYAQ_HTTP_PORT": str(http),
            "MIYAQ_CONNECT": f"tcp://127.0.0.1:{port}",
            "MIYAQ_HTTP": f"http://127.0.0.1:{http}",
        }
