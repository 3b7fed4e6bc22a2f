"""Ask ZooKeeper servers how they are, to explain why the ensemble does not answer.

A client only learns that it cannot connect. The servers' four-letter word
``srvr`` (in ZooKeeper's default whitelist) says more: a server in a quorum
answers with its ``Mode:`` (leader, follower, standalone); one that runs but
has lost its quorum answers "This ZooKeeper instance is not currently
serving requests". :func:`diagnose` turns that into a reason and one sentence for an
operator.

Constraints: plain blocking sockets, each bounded by ``timeout``; for the
CLI and harnesses, never from a node's event loop (it would stall it).
"""
from __future__ import annotations

import socket
from typing import NamedTuple

from kazoo.hosts import collect_hosts

from miyaq.runtime.endpoints import url_host

NOT_SERVING = "not serving"
UNREACHABLE = "unreachable"


def four_letter_word(host: str, port: int, word: str, timeout: float = 1.0) -> str | None:
    """Send a ZooKeeper four-letter command; the answer, or ``None`` if unreachable."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(word.encode("ascii"))
            chunks = []
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode("utf-8", "replace")


def server_states(hosts: str, timeout: float = 1.0) -> dict[str, str]:
    """``host:port`` -> ``leader``/``follower``/``standalone``, ``not serving`` or ``unreachable``.
    An unparsable connection string gives ``{}``."""
    try:
        servers, _ = collect_hosts(hosts)
    except ValueError:
        return {}
    states: dict[str, str] = {}
    for host, port in servers:
        answer = four_letter_word(host, port, "srvr", timeout)
        if answer is None:
            state = UNREACHABLE
        else:
            modes = [line.split(":", 1)[1].strip() for line in answer.splitlines() if line.startswith("Mode:")]
            state = modes[0] if modes else NOT_SERVING
        states[f"{url_host(host)}:{port}"] = state
    return states


class Diagnosis(NamedTuple):
    """Why ZooKeeper does not serve us: ``reason`` is ``unreachable``, ``no_quorum``
    or ``serving`` (some server serves: the trouble is elsewhere); ``text`` says it."""

    reason: str
    text: str


def diagnose(hosts: str, timeout: float = 1.0) -> Diagnosis:
    """Ask every server of ``hosts`` how it is, and say why the ensemble does not serve us."""
    states = server_states(hosts, timeout)
    if not states:
        return Diagnosis("unreachable", f"no ZooKeeper server answers at {hosts}")
    detail = ", ".join(f"{server} {state}" for server, state in states.items())
    if any(s not in (NOT_SERVING, UNREACHABLE) for s in states.values()):
        return Diagnosis("serving", f"some ZooKeeper server serves ({detail}); the connection failed or timed out")
    if all(s == UNREACHABLE for s in states.values()):
        return Diagnosis("unreachable", f"no ZooKeeper server answers ({detail})")
    return Diagnosis("no_quorum", f"the ZooKeeper ensemble has lost its quorum ({detail}): nothing can be read "
                                  f"or written there until a majority of its servers is back")
