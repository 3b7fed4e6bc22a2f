"""Packet filter rules inside a chaos run's network namespaces (iptables).

The faults that routes alone cannot make: a one-way partition (a node's
packets from some peers dropped, not those to them), a node cut off from
ZooKeeper but not from its peers, a lossy link (each packet dropped
with a probability, the ``statistic`` match), a delaying one (packets to
a user-space queue, ``NFQUEUE``) and a duplicating one (``TEE`` in the
``mangle`` table). Every rule goes into the
namespace of the node it concerns (``ip netns exec NS iptables -w ...``),
never into the run's own namespace or the host's, and is remembered so
:meth:`Firewall.remove` and :meth:`Firewall.clear` take away exactly what
was added. Every call has a timeout; failures raise ``MiyaqError`` with
iptables' own message.
"""
from __future__ import annotations

import logging
import shutil
import subprocess

from ..errors import ConfigError, MiyaqError

logger = logging.getLogger(__name__)

TIMEOUT = 10.0
Rule = tuple[str, str, tuple[str, ...]]     # (namespace, chain, match and target)


def check_iptables() -> None:
    if shutil.which("iptables") is None:
        raise ConfigError("--partitions needs the iptables command (apt-get install iptables)")


def _iptables(ns: str, *args: str) -> None:
    argv = ["ip", "netns", "exec", ns, "iptables", "-w", "5", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MiyaqError(f"{' '.join(argv)} failed: {exc}") from None
    if done.returncode != 0:
        raise MiyaqError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


class Firewall:
    """The rules one run added, per namespace (see the module docstring)."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []

    def add(self, ns: str, chain: str, *spec: str) -> Rule:
        rule = (ns, chain, tuple(spec))
        _iptables(ns, "-I", chain, *spec)
        self.rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        if rule in self.rules:
            ns, chain, spec = rule
            _iptables(ns, "-D", chain, *spec)
            self.rules.remove(rule)

    def clear(self) -> None:
        """Remove every rule still in place; never raises."""
        for rule in list(reversed(self.rules)):
            try:
                self.remove(rule)
            except MiyaqError as exc:
                logger.warning("removing a firewall rule: %s", exc)
                self.rules.remove(rule)


def drop_from(addr: str) -> tuple[str, tuple[str, ...]]:
    """INPUT: packets from ``addr`` are dropped (this node cannot hear it)."""
    return "INPUT", ("-s", f"{addr}/32", "-j", "DROP")


def drop_to(addr: str) -> tuple[str, tuple[str, ...]]:
    """OUTPUT: packets to ``addr`` are dropped (it cannot hear this node)."""
    return "OUTPUT", ("-d", f"{addr}/32", "-j", "DROP")


def to_queue(queue: int) -> tuple[str, tuple[str, ...]]:
    """INPUT: every packet this node receives but loopback's to netfilter
    queue ``queue`` (let through when no process is bound to it). Where
    packets arrive, not where they leave: one held at OUTPUT stays charged
    to its TCP socket, which then has about two packets on the way at once
    (:mod:`.netdelay`)."""
    return "INPUT", ("!", "-i", "lo", "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass")


def duplicate_to(addr: str, probability: float) -> tuple[str, tuple[str, ...]]:
    """mangle POSTROUTING: a packet to ``addr`` also sent a second time with ``probability``."""
    _check_probability(probability)
    return "POSTROUTING", ("-t", "mangle", "-d", f"{addr}/32", "-m", "statistic", "--mode", "random",
                           "--probability", f"{probability:.4f}", "-j", "TEE", "--gateway", addr)


def _check_probability(probability: float) -> None:
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"a probability is between 0 and 1, not {probability}")


def drop_random(probability: float) -> list[tuple[str, tuple[str, ...]]]:
    """Each packet in and out dropped with ``probability`` (0..1)."""
    _check_probability(probability)
    match = ("-m", "statistic", "--mode", "random", "--probability", f"{probability:.4f}", "-j", "DROP")
    return [("INPUT", ("!", "-i", "lo", *match)), ("OUTPUT", ("!", "-o", "lo", *match))]
